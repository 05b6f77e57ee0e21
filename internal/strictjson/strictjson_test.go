package strictjson

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

type inner struct {
	Name string `json:"name"`
	N    int    `json:"n,omitempty"`
}

type Base struct {
	Origin string `json:"origin"`
}

type doc struct {
	Base
	Format string            `json:"format"`
	Items  []inner           `json:"items"`
	Ptr    *inner            `json:"ptr,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	Any    any               `json:"any,omitempty"`
	When   time.Time         `json:"when,omitzero"`
	Bytes  []byte            `json:"bytes,omitempty"`
	Quoted int               `json:"quoted,string,omitempty"`
	Skip   string            `json:"-"`
	Plain  string
}

func TestRefuses(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"format":"a","format":"b"}`, `key "format" appears twice`},
		{`{"Format":"a"}`, `differs from field "format" only by case`},
		{`{"FORMAT":"a"}`, `only by case`},
		{`{"items":[{"name":"x","NAME":"y"}]}`, `$.items[0]: key "NAME" differs`},
		{`{"items":[{"name":"x","name":"y"}]}`, `$.items[0]: key "name" appears twice`},
		{`{"ptr":{"name":"x","name":"y"}}`, `appears twice`},
		{`{"labels":{"a":"1","a":"2"}}`, `$.labels: key "a" appears twice`},
		{`{"any":{"x":{"y":1,"y":2}}}`, `$.any.x: key "y" appears twice`},
		{`{"any":[{"y":1,"\u0079":2}]}`, `appears twice`},
		{`{"unknown":1}`, `unknown field "unknown"`},
		{`{"Skip":"x"}`, `unknown field "Skip"`},
		{`{"plain":"x"}`, `differs from field "Plain" only by case`},
		{`{"origin":"o","Origin":"p"}`, `only by case`},
		{`{"format":"a"} {}`, `data after the document`},
		{`{"format":"a"} x`, `data after the document`},
		{`{"format":"a"`, `unexpected EOF`},
		{`{"format":1}`, `cannot unmarshal`},
	} {
		var d doc
		err := Unmarshal([]byte(tc.in), &d)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want %q", tc.in, err, tc.want)
		}
	}
}

func TestAccepts(t *testing.T) {
	in := `{"origin":"o","format":"f","items":[{"name":"a","n":2},{"name":"b"}],"ptr":{"name":"p"},
	"labels":{"k":"v","K":"w"},"any":{"a":[1,{"b":null}],"A":2},"when":"2026-01-02T03:04:05Z","bytes":"AQI=","quoted":"7","Plain":"x"}`
	var got, want doc
	if err := Unmarshal([]byte(in), &got); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(in), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if got.Origin != "o" || got.Quoted != 7 || len(got.Items) != 2 {
		t.Fatalf("decoded %+v", got)
	}
}

func TestStrictErr(t *testing.T) {
	var d doc
	if err := Unmarshal([]byte(`{"format":"a","format":"a"}`), &d); !errors.Is(err, ErrStrict) {
		t.Fatalf("err %v is not ErrStrict", err)
	}
	if err := Unmarshal([]byte(`{}`), d); err == nil {
		t.Fatal("non-pointer accepted")
	}
}

func TestDeep(t *testing.T) {
	var v any
	in := strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1)
	if err := Unmarshal([]byte(in), &v); err == nil {
		t.Fatal("nesting past the bound accepted")
	}
}

// FuzzUnmarshal: whatever Unmarshal accepts, encoding/json accepts too and
// decodes to the same value; and a document with a key repeated is never
// accepted.
func FuzzUnmarshal(f *testing.F) {
	for _, s := range []string{
		`{"format":"f","items":[{"name":"a"}]}`, `{"labels":{"a":"b"}}`, `{"any":[1,"x",{"y":true}]}`,
		`{"format":"a","format":"b"}`, `{"Format":"a"}`, `{"ptr":null,"when":"2026-01-02T03:04:05Z"}`, `[]`, `null`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got doc
		if err := Unmarshal(data, &got); err != nil {
			return
		}
		var want doc
		if err := json.Unmarshal(data, &want); err != nil {
			t.Fatalf("accepted %q, which encoding/json refuses: %v", data, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q: strict %+v, encoding/json %+v", data, got, want)
		}
		var m any
		if err := Unmarshal(data, &m); err != nil {
			t.Fatalf("%q accepted as doc but not as any: %v", data, err)
		}
	})
}
