package measure

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Members of a .pcrsig document signet does not know are kept as a value
// tree and written back as systemd's sd-json writes them, so that
// `measure sign --append` leaves them as systemd-measure does.

// jnumber is a JSON number already in sd-json's spelling.
type jnumber string

// jliteral is true, false or null.
type jliteral string

type member struct {
	name string
	raw  json.RawMessage
}

// objectMembers returns the members of the JSON object raw in document
// order, refusing a name given twice.
func objectMembers(raw []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var out []member
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		name := t.(string)
		if seen[name] {
			return nil, fmt.Errorf("member %q appears twice", name)
		}
		seen[name] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("member %q: %v", name, err)
		}
		out = append(out, member{name, v})
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	return out, nil
}

// rawValue turns one JSON value into a tree that keeps object member
// order.
func rawValue(raw []byte) (jvalue, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	v, err := readValue(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the value")
	}
	return v, nil
}

// maxDepth bounds the nesting of kept values (sd-json's limit is 2048).
const maxDepth = 2048

func readValue(dec *json.Decoder, depth int) (jvalue, error) {
	if depth > maxDepth {
		return nil, errors.New("nested too deeply")
	}
	t, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch x := t.(type) {
	case json.Delim:
		switch x {
		case '{':
			obj := jobject{}
			seen := map[string]bool{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return nil, err
				}
				name := k.(string)
				if seen[name] {
					return nil, fmt.Errorf("member %q appears twice", name)
				}
				seen[name] = true
				v, err := readValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				obj = append(obj, jkv{name, v})
			}
			_, err := dec.Token()
			return obj, err
		case '[':
			arr := jarray{}
			for dec.More() {
				v, err := readValue(dec, depth+1)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			_, err := dec.Token()
			return arr, err
		}
	case string:
		return x, nil
	case json.Number:
		return sdNumber(string(x))
	case bool:
		return jliteral(strconv.FormatBool(x)), nil
	case nil:
		return jliteral("null"), nil
	}
	return nil, fmt.Errorf("unexpected %v", t)
}

// sdNumber spells a JSON number as sd-json writes it back: an integer
// literal that fits int64 (negative) or uint64 stays an integer ("-0" is
// 0); anything else is a real, printed as C's "%.21e". sd-json's own
// parser accumulates digits in floating point, so for literals with more
// than 17 significant digits or a large exponent systemd may print a real
// one unit off in the last places; signet rounds correctly.
func sdNumber(lit string) (jvalue, error) {
	if !strings.ContainsAny(lit, ".eE") {
		if strings.HasPrefix(lit, "-") {
			if i, err := strconv.ParseInt(lit, 10, 64); err == nil {
				return jnumber(strconv.FormatInt(i, 10)), nil
			}
		} else if u, err := strconv.ParseUint(lit, 10, 64); err == nil {
			return jnumber(strconv.FormatUint(u, 10)), nil
		}
	}
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil {
		return nil, fmt.Errorf("number %s out of range", lit)
	}
	return jnumber(strconv.FormatFloat(f, 'e', 21, 64)), nil
}

// quote writes s as sd-json does: '"' and '\' escaped, \b \f \n \r \t,
// other bytes below 0x20 as \u00xx, everything else (UTF-8, DEL) as is.
// In the Python style (ukify's json.dumps) DEL and non-ASCII characters
// are escaped too, as \uxxxx (UTF-16).
func quote(b *bytes.Buffer, s string, st Style) {
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x7f && st == Python {
			r, n := utf8.DecodeRuneInString(s[i:])
			for _, u := range utf16.Encode([]rune{r}) {
				fmt.Fprintf(b, `\u%04x`, u)
			}
			i += n - 1
			continue
		}
		switch c {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if c < 0x20 {
				b.WriteString(`\u00`)
				b.WriteByte(hex[c>>4])
				b.WriteByte(hex[c&15])
			} else {
				b.WriteByte(c)
			}
		}
	}
	b.WriteByte('"')
}
