package server

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/BurntSushi/toml"
)

// exactKeys refuses a setting whose name matches a field of the
// configuration only case-insensitively (the TOML decoder accepts
// "LISTEN" for listen): a configuration reads one way for everyone.
func exactKeys(md toml.MetaData) error {
	root := reflect.TypeFor[Config]()
	for _, k := range md.Keys() {
		t := root
		for i, seg := range k {
			for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
				t = t.Elem()
			}
			if t.Kind() != reflect.Struct {
				break
			}
			f, ok := tomlField(t, seg)
			if !ok {
				if name := foldField(t, seg); name != "" {
					return fmt.Errorf("setting %q: write it %q (setting names are case-sensitive)", strings.Join(k[:i+1], "."), name)
				}
				break // unknown: Undecoded reports it
			}
			t = f.Type
		}
	}
	return nil
}

func tomlField(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if tag, _, _ := strings.Cut(f.Tag.Get("toml"), ","); tag == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func foldField(t reflect.Type, name string) string {
	for i := range t.NumField() {
		if tag, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ","); tag != "" && strings.EqualFold(tag, name) {
			return tag
		}
	}
	return ""
}
