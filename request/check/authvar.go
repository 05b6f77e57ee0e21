package check

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"time"

	"signet.dev/authvar"
	"signet.dev/request"
)

// UEFIAuthVar checks an authenticated variable item by rebuilding its TBS
// from the context: the variable name, its vendor GUID (the one the
// specification fixes for PK, KEK, db and dbx), the attributes (those of a
// Secure Boot variable, with or without APPEND_WRITE), the EFI_TIME and one
// X.509 signature list per certificate. Any byte of difference is refused,
// naming the part it falls in.
func UEFIAuthVar(it *request.Item) error {
	c := it.AuthVar
	vendor, ok := authvar.VendorGUID(c.Variable)
	if !ok {
		return refuse("variable %q: not one of PK, KEK, db, dbx", c.Variable)
	}
	if c.VendorGUID != vendor.String() {
		return refuse("variable %s: vendor GUID %s, the specification's is %s", c.Variable, c.VendorGUID, vendor)
	}
	if a := c.Attributes &^ authvar.AppendWrite; a != authvar.DefaultAttributes {
		return refuse("variable %s: attributes %#x, want %#x (NV, BS, RT, time-based authenticated write) with or without APPEND_WRITE", c.Variable, c.Attributes, authvar.DefaultAttributes)
	}
	owner, err := authvar.ParseGUID(c.Owner)
	if err != nil {
		return refuse("owner: %v", err)
	}
	var et authvar.Time
	if c.Time != "0000-00-00 00:00:00" {
		t, err := time.Parse(time.DateTime, c.Time)
		if err != nil {
			return refuse("time %q: not YYYY-MM-DD HH:MM:SS", c.Time)
		}
		et = authvar.TimeOf(t)
	} else if c.Attributes&authvar.AppendWrite == 0 {
		return refuse("variable %s: the zero time is for APPEND_WRITE updates only", c.Variable)
	}
	var certs []*x509.Certificate
	for i, der := range c.Certificates {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return refuse("certificate %d: %v", i, err)
		}
		certs = append(certs, cert)
	}
	v, err := authvar.NewSecureBootVariable(c.Variable, owner, certs, et)
	if err != nil {
		return refuse("%v", err)
	}
	v.Attributes = c.Attributes
	want, err := v.TBS()
	if err != nil {
		return refuse("%v", err)
	}
	if bytes.Equal(it.TBS, want) {
		return nil
	}
	return refuse("tbs is not the %s update the context describes: %s differs (%s)", c.Variable, authVarPart(it.TBS, want, len(c.Variable)), firstDiff(it.TBS, want))
}

// authVarPart names the part of an authenticated variable TBS where got
// first differs from want (a name of n UTF-16 units).
func authVarPart(got, want []byte, n int) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	parts := []struct {
		name string
		end  int
	}{{"the variable name", 2 * n}, {"the vendor GUID", 2*n + 16}, {"the attributes", 2*n + 20}, {"the EFI_TIME", 2*n + 20 + authvar.TimeSize}}
	for _, p := range parts {
		if i < p.end {
			return p.name
		}
	}
	if i >= len(want) {
		return fmt.Sprintf("the length (%d bytes, want %d)", len(got), len(want))
	}
	return fmt.Sprintf("the signature lists (at list byte %d)", i-parts[len(parts)-1].end)
}
