// Package strictjson decodes JSON documents that every reader reads the same
// way. encoding/json matches object keys to struct fields case-insensitively
// and lets the last of two equal keys win, so jq, Python or a browser may
// read another value than Go does from the same bytes. Unmarshal refuses
// what would be read differently:
//
//   - an object with the same key twice, at any depth;
//   - a key that is not exactly the json name of a field of the target
//     struct (unknown, or differing from a field name only by case);
//   - data after the document.
//
// A document Unmarshal accepts decodes exactly as encoding/json decodes it.
package strictjson

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
)

// ErrStrict marks a document refused by this package's rules (as opposed
// to malformed JSON or a type mismatch, which encoding/json reports).
var ErrStrict = errors.New("not a strict JSON document")

// Unmarshal decodes data into v (a non-nil pointer), refusing duplicate
// keys, keys that are not exactly a field's json name, and trailing data.
func Unmarshal(data []byte, v any) error {
	rv := reflect.ValueOf(v)
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return errors.New("strictjson: Unmarshal needs a non-nil pointer")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	w := walker{dec: dec}
	if err := w.value(rv.Type().Elem(), "$"); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: data after the document", ErrStrict)
	}
	// The structure is unambiguous: let encoding/json fill v.
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	return d.Decode(v)
}

type walker struct {
	dec   *json.Decoder
	depth int
}

// maxDepth bounds nesting, as encoding/json does (it stops at 10000).
const maxDepth = 10000

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// value reads one JSON value whose target type is t (nil: any value, only
// duplicate keys are checked).
func (w *walker) value(t reflect.Type, path string) error {
	tok, err := w.dec.Token()
	if err != nil {
		return syntaxErr(err)
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return nil
	}
	if w.depth++; w.depth > maxDepth {
		return fmt.Errorf("%w: nested deeper than %d", ErrStrict, maxDepth)
	}
	defer func() { w.depth-- }()
	t = target(t)
	switch d {
	case '[':
		var elem reflect.Type
		if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
			elem = t.Elem()
		}
		for i := 0; w.dec.More(); i++ {
			if err := w.value(elem, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	case '{':
		var fields map[string]reflect.Type
		var elem reflect.Type
		if t != nil {
			switch t.Kind() {
			case reflect.Struct:
				fields = structFields(t)
			case reflect.Map:
				elem = t.Elem()
			}
		}
		seen := map[string]bool{}
		for w.dec.More() {
			kt, err := w.dec.Token()
			if err != nil {
				return syntaxErr(err)
			}
			k, _ := kt.(string)
			if seen[k] {
				return fmt.Errorf("%w: %s: key %q appears twice", ErrStrict, path, k)
			}
			seen[k] = true
			sub := elem
			if fields != nil {
				ft, ok := fields[k]
				if !ok {
					if name := foldMatch(fields, k); name != "" {
						return fmt.Errorf("%w: %s: key %q differs from field %q only by case", ErrStrict, path, k, name)
					}
					return fmt.Errorf("%w: %s: unknown field %q", ErrStrict, path, k)
				}
				sub = ft
			}
			if err := w.value(sub, path+"."+k); err != nil {
				return err
			}
		}
	}
	if _, err := w.dec.Token(); err != nil { // the closing delimiter
		return syntaxErr(err)
	}
	return nil
}

// target is the type whose shape the JSON must follow: pointers removed;
// nil for a type that decodes itself (its own rules apply) or any value.
func target(t reflect.Type) reflect.Type {
	for t != nil {
		if t.Implements(jsonUnmarshaler) || reflect.PointerTo(t).Implements(jsonUnmarshaler) ||
			t.Implements(textUnmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler) {
			return nil
		}
		if t.Kind() != reflect.Pointer {
			break
		}
		t = t.Elem()
	}
	if t != nil && t.Kind() == reflect.Interface {
		return nil
	}
	return t
}

func syntaxErr(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func foldMatch(fields map[string]reflect.Type, k string) string {
	for name := range fields {
		if strings.EqualFold(name, k) {
			return name
		}
	}
	return ""
}

var fieldCache sync.Map // reflect.Type → map[string]reflect.Type

// structFields maps the json names of t's fields (embedded structs'
// fields promoted, shallower first) to their types.
func structFields(t reflect.Type) map[string]reflect.Type {
	if m, ok := fieldCache.Load(t); ok {
		return m.(map[string]reflect.Type)
	}
	m := map[string]reflect.Type{}
	collect(t, m, map[reflect.Type]bool{})
	fieldCache.Store(t, m)
	return m
}

func collect(t reflect.Type, m map[string]reflect.Type, visiting map[reflect.Type]bool) {
	if visiting[t] {
		return
	}
	visiting[t] = true
	var embedded []reflect.Type
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			et := f.Type
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				embedded = append(embedded, et)
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		ft := f.Type
		if strings.Contains(","+opts+",", ",string,") {
			ft = nil // a quoted scalar
		}
		if _, dup := m[name]; !dup {
			m[name] = ft
		}
	}
	for _, et := range embedded {
		sub := map[string]reflect.Type{}
		collect(et, sub, visiting)
		for k, v := range sub {
			if _, dup := m[k]; !dup {
				m[k] = v
			}
		}
	}
}
