// Package authvar writes and reads UEFI time-based authenticated variables:
// the .auth files (EFI_VARIABLE_AUTHENTICATION_2 followed by the variable's
// data) that firmware in setup mode, or under an enrolled PK or KEK, accepts
// as updates of PK, KEK, db and dbx, and that systemd-boot enrolls from
// /loader/keys/auto/.
//
// The layout, after the UEFI specification (SetVariable, 8.2.2):
//
//	EFI_TIME            TimeStamp  (16 bytes)
//	WIN_CERTIFICATE     dwLength (u32, from here to the end of CertData),
//	                    wRevision 0x0200, wCertificateType 0x0EF1
//	EFI_GUID            CertType   EFI_CERT_TYPE_PKCS7_GUID
//	UINT8[]             CertData   DER PKCS#7 SignedData
//	UINT8[]             the data: EFI_SIGNATURE_LISTs
//
// The signature covers the variable name in UTF-16LE without its NUL, the
// vendor GUID, the attributes (u32), the TimeStamp and the data. CertData
// is what efitools' sign-efi-sig-list writes: a SignedData (without the
// ContentInfo around it) with detached content, no signed attributes,
// SHA-256, and the signer's certificate.
//
// Signing is split the signet way: Prepare gives the bytes to sign, any
// crypto.Signer (or an offline signer) signs them, Join verifies the
// signature and writes the .auth bytes.
package authvar

import (
	"crypto"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf16"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"signet.dev/cms"
	"signet.dev/keys"
)

// Variable attributes (EFI_VARIABLE_*).
const (
	NonVolatile                       uint32 = 0x01
	BootServiceAccess                 uint32 = 0x02
	RuntimeAccess                     uint32 = 0x04
	TimeBasedAuthenticatedWriteAccess uint32 = 0x20
	AppendWrite                       uint32 = 0x40

	// DefaultAttributes are those of the Secure Boot variables, as
	// sign-efi-sig-list sets them.
	DefaultAttributes = NonVolatile | BootServiceAccess | RuntimeAccess | TimeBasedAuthenticatedWriteAccess
)

// WIN_CERTIFICATE constants.
const (
	certRevision = 0x0200
	certTypeGUID = 0x0EF1
	// winCertSize is WIN_CERTIFICATE_UEFI_GUID up to CertData.
	winCertSize = 4 + 2 + 2 + 16
)

// Hash is the digest of every authenticated variable signature: firmware
// verifies SHA-256 PKCS#7 signatures.
const Hash = crypto.SHA256

// Variable is one authenticated variable update.
type Variable struct {
	// Name is the variable name (PK, KEK, db, dbx or another).
	Name string
	// Vendor is the vendor GUID (VendorGUID gives the fixed ones).
	Vendor GUID
	// Attributes must include TimeBasedAuthenticatedWriteAccess.
	Attributes uint32
	// Time is the timestamp; later than the stored one, or zero to append.
	Time Time
	// Data is the new content: signature lists for the Secure Boot
	// variables.
	Data []byte
}

// NewSecureBootVariable returns the update of PK, KEK, db or dbx to the
// X.509 lists of certs owned by owner, with the standard vendor GUID and
// attributes.
func NewSecureBootVariable(name string, owner GUID, certs []*x509.Certificate, t Time) (*Variable, error) {
	vendor, ok := VendorGUID(name)
	if !ok {
		return nil, fmt.Errorf("variable %q: not one of PK, KEK, db, dbx", name)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("variable %s: no certificates", name)
	}
	if name == "PK" && len(certs) != 1 {
		return nil, fmt.Errorf("variable PK: holds exactly one certificate, %d given", len(certs))
	}
	data, err := MarshalLists(CertificateLists(owner, certs))
	if err != nil {
		return nil, err
	}
	return &Variable{Name: name, Vendor: vendor, Attributes: DefaultAttributes, Time: t, Data: data}, nil
}

// name16 is the variable name as UTF-16LE without a NUL.
func name16(name string) ([]byte, error) {
	if name == "" {
		return nil, errors.New("variable name is empty")
	}
	if !utf8.ValidString(name) {
		return nil, fmt.Errorf("variable name %q: not UTF-8", name)
	}
	var b []byte
	for _, r := range name {
		// UEFI variable names are UCS-2 strings ended by NUL.
		if r == 0 || r > 0xFFFF || utf16.IsSurrogate(r) {
			return nil, fmt.Errorf("variable name %q: %U is not a UCS-2 character a variable name may hold", name, r)
		}
		b = binary.LittleEndian.AppendUint16(b, uint16(r))
	}
	return b, nil
}

// TBS returns the bytes the signature covers: name (UTF-16LE, no NUL) ‖
// vendor GUID ‖ attributes ‖ EFI_TIME ‖ data.
func (v *Variable) TBS() ([]byte, error) {
	if err := v.check(); err != nil {
		return nil, err
	}
	n, err := name16(v.Name)
	if err != nil {
		return nil, err
	}
	b := append(n, v.Vendor[:]...)
	b = binary.LittleEndian.AppendUint32(b, v.Attributes)
	b = append(b, v.Time.Bytes()...)
	return append(b, v.Data...), nil
}

func (v *Variable) check() error {
	if v.Attributes&TimeBasedAuthenticatedWriteAccess == 0 {
		return fmt.Errorf("variable %s: attributes %#x lack TIME_BASED_AUTHENTICATED_WRITE_ACCESS", v.Name, v.Attributes)
	}
	if err := v.Time.Check(); err != nil {
		return fmt.Errorf("variable %s: %w", v.Name, err)
	}
	return nil
}

// Prepared is an update ready to be signed.
type Prepared struct {
	// TBS is what keys.Sign(signer, Hash, TBS) signs: byte-identical to
	// the file `sign-efi-sig-list -o` writes.
	TBS      []byte
	Hash     crypto.Hash
	Variable *Variable
	cert     *x509.Certificate
}

// Prepare prepares the signature of v by the key of cert. Firmware verifies
// RSA only, so cert must hold an RSA key.
func Prepare(v *Variable, cert *x509.Certificate) (*Prepared, error) {
	if _, ok := cert.PublicKey.(*rsa.PublicKey); !ok {
		return nil, fmt.Errorf("certificate %q: %T key; UEFI firmware verifies RSA signatures only", cert.Subject.String(), cert.PublicKey)
	}
	tbs, err := v.TBS()
	if err != nil {
		return nil, err
	}
	return &Prepared{TBS: tbs, Hash: Hash, Variable: v, cert: cert}, nil
}

// Join verifies sig, a raw RSASSA-PKCS1-v1_5 SHA-256 signature of p.TBS by
// the certificate's key, and returns the .auth file.
func (p *Prepared) Join(sig []byte) ([]byte, error) {
	ci, err := cms.AssembleNoAttr(p.cert, p.TBS, p.Hash, sig, true)
	if err != nil {
		return nil, err
	}
	sd, err := unwrap(ci)
	if err != nil {
		return nil, err
	}
	return p.JoinPKCS7(sd)
}

// JoinPKCS7 returns the .auth file with signedData as CertData as it is
// (bare SignedData or a ContentInfo around it, as `sign-efi-sig-list -i`
// takes it), after checking that it verifies over p.TBS by p's certificate.
func (p *Prepared) JoinPKCS7(signedData []byte) ([]byte, error) {
	if err := verifyCertData(signedData, p.TBS, []*x509.Certificate{p.cert}); err != nil {
		return nil, err
	}
	return Marshal(p.Variable.Time, signedData, p.Variable.Data), nil
}

// Sign signs p with signer in this process and joins the result.
func (p *Prepared) Sign(signer crypto.Signer) ([]byte, error) {
	if err := keys.CheckPair(signer, p.cert); err != nil {
		return nil, err
	}
	raw, err := keys.Sign(signer, p.Hash, p.TBS)
	if err != nil {
		return nil, fmt.Errorf("authvar: signing: %w", err)
	}
	return p.Join(raw)
}

// Marshal lays out a .auth file: t, the WIN_CERTIFICATE_UEFI_GUID with
// certData, then data.
func Marshal(t Time, certData, data []byte) []byte {
	b := t.Bytes()
	b = binary.LittleEndian.AppendUint32(b, uint32(winCertSize+len(certData)))
	b = binary.LittleEndian.AppendUint16(b, certRevision)
	b = binary.LittleEndian.AppendUint16(b, certTypeGUID)
	b = append(b, CertTypePKCS7[:]...)
	b = append(b, certData...)
	return append(b, data...)
}

// Auth is a parsed .auth file.
type Auth struct {
	Time Time
	// CertData is the PKCS#7 as stored (bare SignedData or ContentInfo).
	CertData []byte
	// Data is the variable's new content.
	Data []byte
}

// Parse decodes a .auth file. It checks the layout, not the signature (see
// Verify).
func Parse(b []byte) (*Auth, error) {
	if len(b) < TimeSize+winCertSize {
		return nil, fmt.Errorf("authenticated variable: %d bytes is shorter than its header", len(b))
	}
	t, _ := ParseTime(b)
	length := uint64(binary.LittleEndian.Uint32(b[16:]))
	rev := binary.LittleEndian.Uint16(b[20:])
	typ := binary.LittleEndian.Uint16(b[22:])
	var ct GUID
	copy(ct[:], b[24:40])
	switch {
	case rev != certRevision:
		return nil, fmt.Errorf("authenticated variable: WIN_CERTIFICATE revision %#x, want 0x0200", rev)
	case typ != certTypeGUID:
		return nil, fmt.Errorf("authenticated variable: WIN_CERTIFICATE type %#x, want WIN_CERT_TYPE_EFI_GUID 0x0EF1", typ)
	case ct != CertTypePKCS7:
		return nil, fmt.Errorf("authenticated variable: CertType %s, want EFI_CERT_TYPE_PKCS7_GUID", ct)
	case length < winCertSize || length > uint64(len(b)-TimeSize):
		return nil, fmt.Errorf("authenticated variable: WIN_CERTIFICATE length %d does not fit the %d bytes", length, len(b))
	}
	end := TimeSize + int(length)
	return &Auth{Time: t, CertData: b[40:end], Data: b[end:]}, nil
}

// Verify checks a .auth file as firmware does for the variable name and
// vendor with attributes: it rebuilds the signed bytes from its timestamp
// and data and verifies its PKCS#7 against trusted (the signer, or a
// certificate that issued it). It returns the parsed file.
func Verify(b []byte, name string, vendor GUID, attributes uint32, trusted []*x509.Certificate) (*Auth, error) {
	a, err := Parse(b)
	if err != nil {
		return nil, err
	}
	v := &Variable{Name: name, Vendor: vendor, Attributes: attributes, Time: a.Time, Data: a.Data}
	tbs, err := v.TBS()
	if err != nil {
		return nil, err
	}
	if err := verifyCertData(a.CertData, tbs, trusted); err != nil {
		return nil, err
	}
	return a, nil
}

// verifyCertData verifies a CertData PKCS#7 (bare SignedData or a
// ContentInfo) over tbs: detached, SHA-256, no signed attributes, as
// firmware checks it.
func verifyCertData(certData, tbs []byte, trusted []*x509.Certificate) error {
	sd, err := cms.Parse(wrap(certData))
	if err != nil {
		return fmt.Errorf("authenticated variable: CertData: %w", err)
	}
	if sd.Content != nil {
		return errors.New("authenticated variable: CertData carries content; firmware wants a detached signature")
	}
	if len(sd.Signers) != 1 {
		return fmt.Errorf("authenticated variable: CertData has %d signers, want 1", len(sd.Signers))
	}
	if sd.Signers[0].Hash != Hash {
		return fmt.Errorf("authenticated variable: CertData digest %v, want SHA-256", sd.Signers[0].Hash)
	}
	if _, err := sd.Verify(tbs, trusted); err != nil {
		return fmt.Errorf("authenticated variable: %w", err)
	}
	return nil
}

// unwrap returns the SignedData inside a DER ContentInfo.
func unwrap(ci []byte) ([]byte, error) {
	s := cryptobyte.String(ci)
	var inner, explicit cryptobyte.String
	var oid asn1.ObjectIdentifier
	var sd []byte
	if !s.ReadASN1(&inner, cbasn1.SEQUENCE) || !inner.ReadASN1ObjectIdentifier(&oid) ||
		!inner.ReadASN1(&explicit, cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!explicit.ReadASN1Element((*cryptobyte.String)(&sd), cbasn1.SEQUENCE) {
		return nil, errors.New("pkcs7: not a ContentInfo")
	}
	return sd, nil
}

// ContentInfo returns a CertData PKCS#7 as a DER ContentInfo, the form
// other PKCS#7 verifiers (openssl cms) read: a bare SignedData, as
// efitools writes it, is wrapped; a ContentInfo is returned as it is.
func ContentInfo(certData []byte) []byte { return wrap(certData) }

// wrap puts a bare SignedData into a ContentInfo; a ContentInfo (the form
// firmware also accepts) is returned as it is.
func wrap(der []byte) []byte {
	s := cryptobyte.String(der)
	var inner cryptobyte.String
	if s.ReadASN1(&inner, cbasn1.SEQUENCE) {
		var oid asn1.ObjectIdentifier
		if inner.ReadASN1ObjectIdentifier(&oid) && oid.Equal(cms.OIDSignedData) {
			return der
		}
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(cms.OIDSignedData)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(der) })
	})
	out, err := b.Bytes()
	if err != nil {
		return der
	}
	return out
}
