package measure

import (
	"bytes"
	"strconv"
	"strings"
)

// Style selects a JSON layout.
type Style int

const (
	// Short is systemd's compact JSON (--json=short), one line.
	Short Style = iota
	// Pretty is systemd's --json=pretty: tab-indented, "key" : value.
	Pretty
	// Python is what ukify embeds: Python json.dumps() separators
	// ", " and ": " on one line.
	Python
)

// ParseStyle maps systemd's --json= values short and pretty (and python)
// to a Style; "off" is reported as ok=false.
func ParseStyle(s string) (st Style, on bool, ok bool) {
	switch s {
	case "short":
		return Short, true, true
	case "pretty":
		return Pretty, true, true
	case "python":
		return Python, true, true
	case "off":
		return 0, false, true
	}
	return 0, false, false
}

// jvalue is a JSON value tree that keeps key order, so the output matches
// systemd's byte for byte.
type jvalue interface{}

type jkv struct {
	k string
	v jvalue
}

type jobject []jkv
type jarray []jvalue

func encode(v jvalue, st Style) []byte {
	var b bytes.Buffer
	writeJSON(&b, v, st, 0)
	return b.Bytes()
}

func writeJSON(b *bytes.Buffer, v jvalue, st Style, depth int) {
	nl := func(d int) {
		if st == Pretty {
			b.WriteByte('\n')
			b.WriteString(strings.Repeat("\t", d))
		}
	}
	sep, colon := ",", ":"
	switch st {
	case Pretty:
		colon = " : "
	case Python:
		sep, colon = ", ", ": "
	}
	switch x := v.(type) {
	case jobject:
		b.WriteByte('{')
		for i, kv := range x {
			if i > 0 {
				b.WriteString(sep)
			}
			nl(depth + 1)
			quote(b, kv.k, st)
			b.WriteString(colon)
			writeJSON(b, kv.v, st, depth+1)
		}
		if len(x) > 0 {
			nl(depth)
		}
		b.WriteByte('}')
	case jarray:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteString(sep)
			}
			nl(depth + 1)
			writeJSON(b, e, st, depth+1)
		}
		if len(x) > 0 {
			nl(depth)
		}
		b.WriteByte(']')
	case string:
		quote(b, x, st)
	case int:
		b.WriteString(strconv.Itoa(x))
	case jnumber:
		b.WriteString(string(x))
	case jliteral:
		b.WriteString(string(x))
	}
}
