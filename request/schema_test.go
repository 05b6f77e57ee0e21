package request

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"signet.dev/internal/testkeys"
)

// A JSON Schema subset checker: enough of draft 2020-12 for the two schemas
// in docs/, and it fails on any keyword it does not implement, so a schema
// cannot silently say more than the test checks.
type schemaChecker struct{ root map[string]any }

var annotations = map[string]bool{"$schema": true, "$id": true, "title": true, "description": true, "$defs": true, "contentEncoding": true}

func (c *schemaChecker) check(s map[string]any, v any, at string) error {
	for k, kv := range s {
		if annotations[k] {
			continue
		}
		var err error
		switch k {
		case "$ref":
			name := strings.TrimPrefix(kv.(string), "#/$defs/")
			def, ok := c.root["$defs"].(map[string]any)[name].(map[string]any)
			if !ok {
				return fmt.Errorf("%s: $ref %s not found", at, kv)
			}
			err = c.check(def, v, at)
		case "type":
			ok := false
			switch kv {
			case "object":
				_, ok = v.(map[string]any)
			case "array":
				_, ok = v.([]any)
			case "string":
				_, ok = v.(string)
			case "integer":
				f, isNum := v.(float64)
				ok = isNum && f == float64(int64(f))
			default:
				return fmt.Errorf("%s: type %v not implemented", at, kv)
			}
			if !ok {
				err = fmt.Errorf("%s: %v is not of type %v", at, v, kv)
			}
		case "const":
			if v != kv {
				err = fmt.Errorf("%s: %v is not %v", at, v, kv)
			}
		case "enum":
			found := false
			for _, e := range kv.([]any) {
				found = found || e == v
			}
			if !found {
				err = fmt.Errorf("%s: %v not in %v", at, v, kv)
			}
		case "pattern":
			if str, ok := v.(string); ok && !regexp.MustCompile(kv.(string)).MatchString(str) {
				err = fmt.Errorf("%s: %q does not match %s", at, str, kv)
			}
		case "minLength":
			if str, ok := v.(string); ok && len(str) < int(kv.(float64)) {
				err = fmt.Errorf("%s: too short", at)
			}
		case "minItems":
			if a, ok := v.([]any); ok && len(a) < int(kv.(float64)) {
				err = fmt.Errorf("%s: too few items", at)
			}
		case "minimum":
			if f, ok := v.(float64); ok && f < kv.(float64) {
				err = fmt.Errorf("%s: below minimum", at)
			}
		case "required":
			if o, ok := v.(map[string]any); ok {
				for _, r := range kv.([]any) {
					if _, has := o[r.(string)]; !has {
						err = fmt.Errorf("%s: lacks required %s", at, r)
					}
				}
			}
		case "properties":
			if o, ok := v.(map[string]any); ok {
				for name, sub := range kv.(map[string]any) {
					if pv, has := o[name]; has && err == nil {
						err = c.check(sub.(map[string]any), pv, at+"."+name)
					}
				}
			}
		case "additionalProperties":
			if kv != false {
				return fmt.Errorf("%s: additionalProperties other than false not implemented", at)
			}
			props, _ := s["properties"].(map[string]any)
			if o, ok := v.(map[string]any); ok {
				for name := range o {
					if _, known := props[name]; !known {
						err = fmt.Errorf("%s: property %q is not in the schema", at, name)
					}
				}
			}
		case "items":
			if a, ok := v.([]any); ok {
				for i, e := range a {
					if err == nil {
						err = c.check(kv.(map[string]any), e, fmt.Sprintf("%s[%d]", at, i))
					}
				}
			}
		case "oneOf":
			n := 0
			for _, sub := range kv.([]any) {
				if c.check(sub.(map[string]any), v, at) == nil {
					n++
				}
			}
			if n != 1 {
				err = fmt.Errorf("%s: matches %d of oneOf, not 1", at, n)
			}
		default:
			return fmt.Errorf("%s: schema keyword %q not implemented by the test", at, k)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func loadSchema(t *testing.T, name string) *schemaChecker {
	t.Helper()
	data, err := os.ReadFile("../docs/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var root map[string]any
	if err := json.Unmarshal(data, &root); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &schemaChecker{root}
}

func (c *schemaChecker) validate(t *testing.T, doc []byte) error {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatal(err)
	}
	return c.check(c.root, v, "$")
}

// TestSchemas validates what the encoder writes against the schemas, and
// shows the schemas refuse what Parse refuses.
func TestSchemas(t *testing.T) {
	reqSchema := loadSchema(t, "request.schema.json")
	respSchema := loadSchema(t, "response.schema.json")
	r := sample()
	data, _ := r.Marshal()
	if err := reqSchema.validate(t, data); err != nil {
		t.Fatalf("request: %v", err)
	}
	k := testkeys.Generate(t, testkeys.P256)
	resp := signAll(t, r, k)
	resp.Items[0].Chain = [][]byte{k.Cert.Raw}
	rdata, _ := resp.Marshal()
	if err := respSchema.validate(t, rdata); err != nil {
		t.Fatalf("response: %v", err)
	}
	for name, edit := range map[string]func(string) string{
		"unknown field": func(s string) string { return strings.Replace(s, `"build"`, `"bulid"`, 1) },
		"format":        func(s string) string { return strings.Replace(s, "request/v1", "request/v2", 1) },
		"kind":          func(s string) string { return strings.Replace(s, `"ipe-policy"`, `"ipe"`, 1) },
		"wrong context": func(s string) string {
			return strings.Replace(s, `"kind": "ipe-policy"`, `"kind": "verity-roothash"`, 1)
		},
		"hash":      func(s string) string { return strings.Replace(s, `"sha512"`, `"sha1"`, 1) },
		"bank":      func(s string) string { return strings.Replace(s, `"bank": "sha256"`, `"bank": "sm3"`, 1) },
		"upper hex": func(s string) string { return strings.Replace(s, hexOf(5, 32), strings.ToUpper(hexOf(10, 32)), 1) },
	} {
		bad := edit(string(data))
		if err := reqSchema.validate(t, []byte(bad)); err == nil {
			t.Errorf("schema accepts a request with a bad %s", name)
		}
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse accepts a request with a bad %s", name)
		}
	}
	if err := respSchema.validate(t, []byte(strings.Replace(string(rdata), `"certificate"`, `"cert"`, 1))); err == nil {
		t.Error("schema accepts a response with an unknown field")
	}
}

// TestSchemaFields checks that every field the Go types encode is in the
// schema, and every schema property is a Go field.
func TestSchemaFields(t *testing.T) {
	for _, c := range []struct {
		schema string
		typ    reflect.Type
	}{
		{"request.schema.json", reflect.TypeOf(Request{})},
		{"response.schema.json", reflect.TypeOf(Response{})},
	} {
		s := loadSchema(t, c.schema)
		compareFields(t, s, s.root, c.typ, c.schema)
	}
}

func compareFields(t *testing.T, c *schemaChecker, node map[string]any, typ reflect.Type, at string) {
	t.Helper()
	if ref, ok := node["$ref"].(string); ok {
		node = c.root["$defs"].(map[string]any)[strings.TrimPrefix(ref, "#/$defs/")].(map[string]any)
	}
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	switch typ.Kind() {
	case reflect.Struct:
		props, _ := node["properties"].(map[string]any)
		var goNames, schemaNames []string
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			goNames = append(goNames, name)
			sub, ok := props[name].(map[string]any)
			if !ok {
				t.Errorf("%s.%s: encoded by %s but not in the schema", at, name, typ)
				continue
			}
			compareFields(t, c, sub, f.Type, at+"."+name)
		}
		for name := range props {
			schemaNames = append(schemaNames, name)
		}
		sort.Strings(goNames)
		sort.Strings(schemaNames)
		if !reflect.DeepEqual(goNames, schemaNames) {
			t.Errorf("%s: Go fields %v, schema properties %v", at, goNames, schemaNames)
		}
	case reflect.Slice:
		if typ.Elem().Kind() == reflect.Uint8 {
			return // base64 string
		}
		items, ok := node["items"].(map[string]any)
		if !ok {
			t.Errorf("%s: array without items in the schema", at)
			return
		}
		compareFields(t, c, items, typ.Elem(), at+"[]")
	}
}
