package request

import (
	"strings"
	"testing"
)

func TestFamily(t *testing.T) {
	for _, k := range Kinds {
		if Family(k) == "" {
			t.Errorf("kind %s has no family", k)
		}
	}
	if Family("bogus") != "" {
		t.Error("unknown kind has a family")
	}
	if Family(KindVerityRootHash) != Family(KindIPEPolicy) || Family(KindIPEPolicy) != Family(KindManifestPKCS7) || Family(KindManifestPKCS7) != Family(KindManifestOpenPGP) {
		t.Error("content kinds are not one family")
	}
	if Family(KindAuthenticode) == Family(KindPCRPolicy) || Family(KindAuthenticode) == Family(KindIPEPolicy) || Family(KindPCRPolicy) == Family(KindVerityRootHash) {
		t.Error("distinct families merged")
	}
}

func TestCheckKeyKinds(t *testing.T) {
	for _, c := range []struct {
		kinds, shared []Kind
		ok            bool
	}{
		{nil, nil, true},
		{[]Kind{KindAuthenticode, KindAuthenticode}, nil, true},
		{[]Kind{KindVerityRootHash, KindIPEPolicy, KindManifestPKCS7}, nil, true},
		{[]Kind{KindAuthenticode, KindPCRPolicy}, nil, false},
		{[]Kind{KindManifestOpenPGP, KindManifestPKCS7}, nil, true},
		{[]Kind{KindAuthenticode, KindIPEPolicy}, nil, false},
		{[]Kind{KindAuthenticode, KindIPEPolicy}, []Kind{KindIPEPolicy, KindAuthenticode}, true},
		{[]Kind{KindAuthenticode, KindIPEPolicy, KindIPEPolicy}, []Kind{KindIPEPolicy, KindAuthenticode}, true},
		// A declaration must list exactly the kinds, not more, not fewer.
		{[]Kind{KindAuthenticode, KindIPEPolicy}, []Kind{KindIPEPolicy}, false},
		{[]Kind{KindAuthenticode, KindIPEPolicy}, []Kind{KindIPEPolicy, KindAuthenticode, KindPCRPolicy}, false},
		{[]Kind{"bogus"}, nil, false},
		{[]Kind{"bogus"}, []Kind{"bogus"}, false},
	} {
		err := CheckKeyKinds(c.kinds, c.shared)
		if (err == nil) != c.ok {
			t.Errorf("CheckKeyKinds(%v, %v) = %v", c.kinds, c.shared, err)
		}
		if err != nil && len(c.kinds) > 0 && !strings.Contains(err.Error(), string(c.kinds[0])) {
			t.Errorf("error %q does not name kind %s", err, c.kinds[0])
		}
	}
}

func FuzzParseKinds(f *testing.F) {
	f.Add("manifest-openpgp,manifest-pkcs7")
	f.Add("authenticode, bogus")
	f.Fuzz(func(t *testing.T, s string) {
		kinds, err := ParseKinds(s)
		if err != nil {
			return
		}
		for _, k := range kinds {
			if Family(k) == "" {
				t.Fatalf("ParseKinds(%q) returned unknown kind %q", s, k)
			}
		}
		// A set of kinds declared for itself is always accepted.
		if err := CheckKeyKinds(kinds, kinds); err != nil {
			t.Fatalf("CheckKeyKinds(%v, itself): %v", kinds, err)
		}
	})
}
