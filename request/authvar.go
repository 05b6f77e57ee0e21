package request

import (
	"regexp"
	"time"
)

// KindUEFIAuthVar is a UEFI time-based authenticated variable update: the
// TBS is the variable name (UTF-16LE, no NUL) ‖ vendor GUID ‖ attributes
// (u32 LE) ‖ EFI_TIME ‖ the EFI_SIGNATURE_LISTs, what `sign-efi-sig-list -o`
// writes.
const KindUEFIAuthVar Kind = "uefi-authvar"

// AuthVarContext describes an authenticated variable update of PK, KEK, db
// or dbx whose signature lists are one X.509 list per certificate, all
// owned by Owner (what cert-to-efi-sig-list writes for each, concatenated).
type AuthVarContext struct {
	// File is the .auth file the signature is joined into.
	File string `json:"file"`
	// Variable is PK, KEK, db or dbx.
	Variable string `json:"variable"`
	// VendorGUID is the variable's vendor GUID (EFI_GLOBAL_VARIABLE for PK
	// and KEK, EFI_IMAGE_SECURITY_DATABASE_GUID for db and dbx).
	VendorGUID string `json:"vendorGuid"`
	// Attributes are the EFI_VARIABLE_* bits (0x27, or 0x67 to append).
	Attributes uint32 `json:"attributes"`
	// Time is the EFI_TIME in UTC as "YYYY-MM-DD HH:MM:SS" (the form
	// sign-efi-sig-list -t takes); "0000-00-00 00:00:00" for an append.
	Time string `json:"time"`
	// Owner is the signature owner GUID of every list.
	Owner string `json:"owner"`
	// Certificates are the DER certificates the variable will hold, in
	// order.
	Certificates [][]byte `json:"certificates"`
}

var guidText = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

func (c *AuthVarContext) validate(it *Item) error {
	if err := checkName("authvar.file", c.File); err != nil {
		return err
	}
	switch c.Variable {
	case "PK", "KEK", "db", "dbx":
	default:
		return invalid("authvar.variable %q: not one of PK, KEK, db, dbx", c.Variable)
	}
	if !guidText.MatchString(c.VendorGUID) {
		return invalid("authvar.vendorGuid %q: not a lowercase GUID", c.VendorGUID)
	}
	if !guidText.MatchString(c.Owner) {
		return invalid("authvar.owner %q: not a lowercase GUID", c.Owner)
	}
	if c.Time != "0000-00-00 00:00:00" {
		if _, err := time.Parse(time.DateTime, c.Time); err != nil {
			return invalid("authvar.time %q: not YYYY-MM-DD HH:MM:SS", c.Time)
		}
	}
	if len(c.Certificates) == 0 {
		return invalid("authvar.certificates is empty")
	}
	if it.Hash != "sha256" {
		return invalid("hash %q: firmware verifies authenticated variables with sha256 only", it.Hash)
	}
	return nil
}
