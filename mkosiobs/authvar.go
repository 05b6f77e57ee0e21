package mkosiobs

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"signet.dev/authvar"
	"signet.dev/keys"
	"signet.dev/request"
)

// AuthVarOwner is the signature owner GUID of every list mkosi-obs stages
// (cert-to-efi-sig-list -g, the GUID bootctl uses too).
var AuthVarOwner = authvar.MustGUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")

// authVarItem makes the item of authvars/{PK,KEK,db}.auth. Despite the
// name the member is `sign-efi-sig-list -o`'s TBS: the variable name
// (UTF-16LE), vendor GUID, attributes, EFI_TIME and the signature lists.
// The context is rebuilt from what mkosi.postoutput made it from, not read
// from the member: PK holds the project certificate alone; KEK and db
// hold it followed by the certificates of the sources' mkosi.uefi.KEK/ and
// mkosi.uefi.db/; the attributes are those of a Secure Boot variable and
// the time is SOURCE_DATE_EPOCH's (o.AuthVarTime; without it, the
// member's own, which must still be a valid time).
func authVarItem(m *Member, o Options, it *request.Item) error {
	file := path.Base(m.Path)
	name, ok := strings.CutSuffix(file, ".auth")
	if !ok || (name != "PK" && name != "KEK" && name != "db") {
		return refuse(m, "want authvars/PK.auth, authvars/KEK.auth or authvars/db.auth")
	}
	if o.Certificate == nil {
		return refuse(m, "the project certificate (_projectcert.crt) is needed to rebuild the variable; none given")
	}
	vendor, _ := authvar.VendorGUID(name)
	certs := []*x509.Certificate{o.Certificate}
	if name != "PK" && o.SourcesDir != "" {
		extra, err := extraCerts(o.SourcesDir, "mkosi.uefi."+name)
		if err != nil {
			return refuse(m, "%v", err)
		}
		certs = append(certs, extra...)
	}
	// The time: SOURCE_DATE_EPOCH's when known, else the member's.
	off := varHeaderLen(name)
	if len(m.Data) < off+authvar.TimeSize {
		return refuse(m, "%d bytes: shorter than a %s update's header", len(m.Data), name)
	}
	et, _ := authvar.ParseTime(m.Data[off:])
	if o.AuthVarTime != nil {
		want := authvar.TimeOf(*o.AuthVarTime)
		if et != want {
			return refuse(m, "EFI_TIME %s, but mkosi ran with SOURCE_DATE_EPOCH %d (%s)", et, o.AuthVarTime.Unix(), want)
		}
	} else if err := et.Check(); err != nil {
		return refuse(m, "%v", err)
	}
	// Name the certificate that differs: one signet did not expect is the
	// likeliest tampering. check.Item compares every other byte.
	lists, err := authvar.ParseLists(m.Data[off+authvar.TimeSize:])
	if err != nil {
		return refuse(m, "signature lists: %v", err)
	}
	got, err := authvar.Certificates(lists)
	if err != nil {
		return refuse(m, "signature lists: %v", err)
	}
	if len(got) != len(certs) {
		want := "the project certificate"
		if name != "PK" {
			want += " and the sources' mkosi.uefi." + name + "/*.crt"
		}
		return refuse(m, "%s holds %d certificates, want %d (%s)", name, len(got), len(certs), want)
	}
	for i := range got {
		if !bytes.Equal(got[i].Raw, certs[i].Raw) {
			return refuse(m, "certificate %d of %s is %q, want %q", i, name, got[i].Subject, certs[i].Subject)
		}
	}
	ders := make([][]byte, len(certs))
	for i, c := range certs {
		ders[i] = c.Raw
	}
	it.Kind = request.KindUEFIAuthVar
	it.AuthVar = &request.AuthVarContext{File: file, Variable: name, VendorGUID: vendor.String(),
		Attributes: authvar.DefaultAttributes, Time: et.String(), Owner: AuthVarOwner.String(), Certificates: ders}
	return nil
}

// varHeaderLen is the length of what precedes EFI_TIME in the signed data of
// an update of variable name (an ASCII Secure Boot variable name): the
// name in UTF-16LE without its NUL, the vendor GUID, the attributes.
func varHeaderLen(name string) int { return 2*len(name) + 16 + 4 }

// extraCerts reads the certificates mkosi.postoutput appends to KEK or db:
// SOURCES/*/<dir>/*.crt, in the glob's (sorted) order.
func extraCerts(sources, dir string) ([]*x509.Certificate, error) {
	paths, err := filepath.Glob(filepath.Join(sources, "*", dir, "*.crt"))
	if err != nil {
		return nil, err
	}
	var out []*x509.Certificate
	for _, p := range paths {
		c, err := keys.LoadCertificate(p)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// SourceDateEpoch parses a SOURCE_DATE_EPOCH value (seconds since 1970).
func SourceDateEpoch(s string) (time.Time, error) {
	n, err := strconv.ParseUint(s, 10, 40)
	if err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: not a number of seconds", s)
	}
	return time.Unix(int64(n), 0).UTC(), nil
}

// Companion says whether m is a member mkosi stages beside what it signs
// and never uses the signature of: authvars/<VAR>.esl, the signature
// lists mkosi.postoutput leaves in hashes/ and mkosi.build appends to the
// .auth it joins. It is checked (see checkESL) but not signed, and the
// answer has no .sig for it.
func Companion(m *Member) bool {
	dir, file := path.Split(m.Path)
	return dir == string(KindAuthVar)+"/" && strings.HasSuffix(file, ".esl")
}

// checkESL refuses an authvars/<VAR>.esl that is not the data of the
// archive's authvars/<VAR>.auth: mkosi.build would join it into an update
// whose signature does not cover it.
func checkESL(m *Member, r *request.Request) error {
	name := strings.TrimSuffix(path.Base(m.Path), ".esl")
	id := string(KindAuthVar) + "/" + name + ".auth"
	for _, it := range r.Items {
		if it.ID != id {
			continue
		}
		if off := varHeaderLen(name) + authvar.TimeSize; len(it.TBS) < off || !bytes.Equal(it.TBS[off:], m.Data) {
			return refuse(m, "is not the signature lists %s signs", id)
		}
		return nil
	}
	return refuse(m, "the archive has no %s for these signature lists", id)
}
