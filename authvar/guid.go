package authvar

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// GUID is an EFI_GUID as it is stored: the first three fields little-endian,
// the last eight bytes as written.
type GUID [16]byte

// ParseGUID parses the text form "8be4df61-93ca-11d2-aa0d-00e098032b8c".
func ParseGUID(s string) (GUID, error) {
	var g GUID
	parts := strings.Split(s, "-")
	if len(parts) != 5 || len(parts[0]) != 8 || len(parts[1]) != 4 || len(parts[2]) != 4 || len(parts[3]) != 4 || len(parts[4]) != 12 {
		return g, fmt.Errorf("GUID %q: want the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	raw, err := hex.DecodeString(strings.Join(parts, ""))
	if err != nil {
		return g, fmt.Errorf("GUID %q: not hexadecimal", s)
	}
	binary.LittleEndian.PutUint32(g[0:], binary.BigEndian.Uint32(raw[0:]))
	binary.LittleEndian.PutUint16(g[4:], binary.BigEndian.Uint16(raw[4:]))
	binary.LittleEndian.PutUint16(g[6:], binary.BigEndian.Uint16(raw[6:]))
	copy(g[8:], raw[8:])
	return g, nil
}

// MustGUID is ParseGUID for constants; it panics on a malformed string.
func MustGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// String returns the lowercase text form.
func (g GUID) String() string {
	return fmt.Sprintf("%08x-%04x-%04x-%x-%x", binary.LittleEndian.Uint32(g[0:]),
		binary.LittleEndian.Uint16(g[4:]), binary.LittleEndian.Uint16(g[6:]), g[8:10], g[10:])
}

// GUIDs of the UEFI specification used here.
var (
	// GlobalVariable (EFI_GLOBAL_VARIABLE) is the vendor of PK and KEK.
	GlobalVariable = MustGUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
	// ImageSecurityDatabase (EFI_IMAGE_SECURITY_DATABASE_GUID) is the
	// vendor of db and dbx.
	ImageSecurityDatabase = MustGUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
	// CertX509 (EFI_CERT_X509_GUID): each signature is a DER certificate.
	CertX509 = MustGUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
	// CertSHA256 (EFI_CERT_SHA256_GUID): each signature is a SHA-256 digest.
	CertSHA256 = MustGUID("c1c41626-504c-4092-aca9-41f936934328")
	// CertTypePKCS7 (EFI_CERT_TYPE_PKCS7_GUID) marks a WIN_CERTIFICATE_UEFI_GUID
	// holding PKCS#7 SignedData.
	CertTypePKCS7 = MustGUID("4aafd29d-68df-49ee-8aa9-347d375665a7")
)

// VendorGUID returns the vendor GUID the specification fixes for the Secure
// Boot variables PK, KEK, db and dbx.
func VendorGUID(name string) (GUID, bool) {
	switch name {
	case "PK", "KEK":
		return GlobalVariable, true
	case "db", "dbx":
		return ImageSecurityDatabase, true
	}
	return GUID{}, false
}
