package authenticode

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"signet.dev/cms"
	"signet.dev/internal/filecopy"
	"signet.dev/keys"
	"signet.dev/pe"
)

// Object identifiers of Authenticode (Microsoft's "Windows Authenticode
// Portable Executable Signature Format").
var (
	OIDSpcIndirectData = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 4}
	OIDSpcPEImageData  = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 311, 2, 1, 15}
)

// Hash is the digest algorithm signet signs with, for the image digest and
// the signed attributes alike (as systemd-sbsign and sbsign do).
const Hash = crypto.SHA256

// Errors of the offline join a caller can test for.
var (
	// ErrSignedAttributes: the signed data is not a set of Authenticode
	// signed attributes.
	ErrSignedAttributes = errors.New("not Authenticode signed attributes")
	// ErrImageChanged: the signed attributes commit to another image digest
	// than the image being joined has now.
	ErrImageChanged = errors.New("signed attributes are for a different image (messageDigest does not match the image's Authenticode digest)")
	// ErrBadSignature: the signature does not verify against the
	// certificate over the signed attributes.
	ErrBadSignature = errors.New("signature does not verify")
)

// obsolete is the SpcString every signer puts in SpcPeImageData.file:
// "<<<Obsolete>>>" as a BMPString.
var obsolete = func() []byte {
	var b []byte
	for _, c := range "<<<Obsolete>>>" {
		b = append(b, 0, byte(c))
	}
	return b
}()

// SpcIndirectDataContent returns the DER of the SpcIndirectDataContent that
// commits to an image digest made with h:
//
//	SpcIndirectDataContent ::= SEQUENCE {
//	    data          SEQUENCE { type OID spcPEImageData,
//	                             value SpcPeImageData { flags BIT STRING {},
//	                                   file [0] { [2] { [0] "<<<Obsolete>>>" } } } }
//	    messageDigest DigestInfo { algorithm, digest } }
func SpcIndirectDataContent(h crypto.Hash, digest []byte) ([]byte, error) {
	if _, err := cms.HashOID(h); err != nil {
		return nil, err // before h.Size, which panics for an unknown hash
	}
	if len(digest) != h.Size() {
		return nil, fmt.Errorf("authenticode: %d-byte digest for %v", len(digest), h)
	}
	// flags: an empty BIT STRING with its unused-bits octet.
	return spcTemplate(OIDSpcPEImageData, []byte{0x03, 0x01, 0x00}, obsolete, h, digest)
}

// contentOctets strips the outer tag and length of a DER element: the
// messageDigest attribute of Authenticode covers only the content octets of
// the SpcIndirectDataContent SEQUENCE.
func contentOctets(der []byte) ([]byte, error) {
	s := cryptobyte.String(der)
	var inner cryptobyte.String
	if !s.ReadASN1(&inner, cbasn1.SEQUENCE) || !s.Empty() {
		return nil, errors.New("authenticode: SpcIndirectDataContent is not a DER SEQUENCE")
	}
	return inner, nil
}

// Prepared is what a signer signs for one image, and the context to check
// it by.
type Prepared struct {
	// SignedAttributes is the DER SET OF Attribute to be signed (the TBS):
	// SMIMECapabilities (empty), contentType SpcIndirectDataContent,
	// signingTime and messageDigest, DER-sorted. This is byte for byte what
	// `systemd-sbsign --prepare-offline-signing` writes.
	SignedAttributes []byte
	// Hash is the hash the signature is made with over SignedAttributes
	// (`openssl dgst -sha256 -sign`).
	Hash crypto.Hash
	// Digest is the Authenticode digest of the image (Hash) the attributes
	// commit to.
	Digest []byte
	// SigningTime is the signingTime attribute.
	SigningTime time.Time
}

// Prepare computes the signed attributes for f with the given signing time
// (see internal/buildtime for SOURCE_DATE_EPOCH). No key is involved.
func Prepare(f *File, signingTime time.Time) (*Prepared, error) {
	d, err := f.Digest(Hash)
	if err != nil {
		return nil, err
	}
	return PrepareDigest(d, signingTime)
}

// PrepareDigest is Prepare for an image whose SHA-256 Authenticode digest is
// already known.
func PrepareDigest(digest []byte, signingTime time.Time) (*Prepared, error) {
	spc, err := SpcIndirectDataContent(Hash, digest)
	if err != nil {
		return nil, err
	}
	octets, _ := contentOctets(spc)
	md := Hash.New()
	md.Write(octets)
	attrs, err := signedAttributes(signingTime, md.Sum(nil))
	if err != nil {
		return nil, err
	}
	return &Prepared{SignedAttributes: attrs, Hash: Hash, Digest: append([]byte(nil), digest...), SigningTime: signingTime.UTC()}, nil
}

func signedAttributes(t time.Time, md []byte) ([]byte, error) {
	der := func(f func(b *cryptobyte.Builder)) []byte {
		var b cryptobyte.Builder
		f(&b)
		return b.BytesOrPanic()
	}
	return cms.MarshalAttributes([]cms.Attribute{
		{Type: cms.OIDSMIMECaps, Values: []byte{0x30, 0x00}},
		{Type: cms.OIDContentType, Values: der(func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(OIDSpcIndirectData) })},
		{Type: cms.OIDSigningTime, Values: marshalTime(t)},
		{Type: cms.OIDMessageDigest, Values: der(func(b *cryptobyte.Builder) { b.AddASN1OctetString(md) })},
	})
}

// marshalTime encodes t as OpenSSL's ASN1_TIME_set does: UTCTime for
// 1950-2049, GeneralizedTime otherwise.
func marshalTime(t time.Time) []byte {
	t = t.UTC()
	tag, s := byte(0x17), t.Format("060102150405Z")
	if t.Year() < 1950 || t.Year() >= 2050 {
		tag, s = 0x18, t.Format("20060102150405Z")
	}
	return append([]byte{tag, byte(len(s))}, s...)
}

// ParseSignedAttributes reads a set of signed attributes made by Prepare or
// by `systemd-sbsign --prepare-offline-signing`. It checks that the content
// type is SpcIndirectDataContent and that a messageDigest is present.
// Digest is nil in the result: attributes carry only the hash of the
// SpcIndirectDataContent, not the image digest.
func ParseSignedAttributes(der []byte) (*Prepared, error) {
	attrs, err := cms.ParseAttributes(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSignedAttributes, err)
	}
	p := &Prepared{SignedAttributes: der, Hash: Hash}
	var haveCT, haveMD bool
	for _, a := range attrs {
		v := cryptobyte.String(a.Values)
		switch {
		case a.Type.Equal(cms.OIDContentType):
			var oid asn1.ObjectIdentifier
			if !v.ReadASN1ObjectIdentifier(&oid) || !v.Empty() || !oid.Equal(OIDSpcIndirectData) {
				return nil, fmt.Errorf("%w: contentType is not SpcIndirectDataContent", ErrSignedAttributes)
			}
			haveCT = true
		case a.Type.Equal(cms.OIDMessageDigest):
			var md cryptobyte.String
			if !v.ReadASN1(&md, cbasn1.OCTET_STRING) || !v.Empty() || len(md) != Hash.Size() {
				return nil, fmt.Errorf("%w: malformed messageDigest", ErrSignedAttributes)
			}
			haveMD = true
		case a.Type.Equal(cms.OIDSigningTime):
			t, ok := readTime(&v)
			if !ok || !v.Empty() {
				return nil, fmt.Errorf("%w: malformed signingTime", ErrSignedAttributes)
			}
			p.SigningTime = t
		}
	}
	if !haveCT || !haveMD {
		return nil, fmt.Errorf("%w: contentType or messageDigest missing", ErrSignedAttributes)
	}
	return p, nil
}

func readTime(s *cryptobyte.String) (time.Time, bool) {
	var t time.Time
	switch {
	case s.PeekASN1Tag(cbasn1.UTCTime):
		return t, s.ReadASN1UTCTime(&t)
	case s.PeekASN1Tag(cbasn1.GeneralizedTime):
		return t, s.ReadASN1GeneralizedTime(&t)
	}
	return t, false
}

// CheckSignedAttributes checks that signedAttrs are Authenticode signed
// attributes committing to an image whose SHA-256 Authenticode digest is
// digest: what a signing service can check of a request before signing it.
// It returns ErrSignedAttributes or ErrImageChanged.
func CheckSignedAttributes(signedAttrs, digest []byte) error {
	if _, err := ParseSignedAttributes(signedAttrs); err != nil {
		return err
	}
	spc, err := SpcIndirectDataContent(Hash, digest)
	if err != nil {
		return err
	}
	octets, _ := contentOctets(spc)
	want := Hash.New()
	want.Write(octets)
	md, err := cms.MessageDigest(signedAttrs)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSignedAttributes, err)
	}
	if !bytes.Equal(md, want.Sum(nil)) {
		return ErrImageChanged
	}
	return nil
}

// assemble checks sig over the signed attributes with cert's key, checks
// that the attributes commit to digest, and returns the DER PKCS#7
// SignedData to embed.
func assemble(signedAttrs, digest []byte, cert *x509.Certificate, sig []byte) ([]byte, error) {
	if err := CheckSignedAttributes(signedAttrs, digest); err != nil {
		return nil, err
	}
	spc, err := SpcIndirectDataContent(Hash, digest)
	if err != nil {
		return nil, err
	}
	if err := keys.Verify(cert.PublicKey, Hash, signedAttrs, sig); err != nil {
		return nil, fmt.Errorf("%w with certificate %q over the signed attributes", ErrBadSignature, cert.Subject.String())
	}
	si, err := cms.NewSignerInfo(cert, Hash)
	if err != nil {
		return nil, err
	}
	si.SignedAttributes = signedAttrs
	si.Signature = sig
	sd := &cms.SignedData{
		ContentType:  OIDSpcIndirectData,
		Content:      spc,
		Certificates: []*x509.Certificate{cert},
		Signers:      []cms.SignerInfo{si},
	}
	return sd.Marshal()
}

// Join embeds a signature made elsewhere over signedAttrs (as Prepare or
// systemd-sbsign --prepare-offline-signing made them; the signature as
// `openssl dgst -sha256 -sign` makes it) into f, and writes the signed image
// to w. It refuses, before writing anything past the copy of the input,
// when the signature does not verify against cert or when the attributes do
// not commit to f's current Authenticode digest. A PE that is already
// signed gets an additional WIN_CERTIFICATE, as with systemd-sbsign.
//
// w should be a fresh file: when it is an io.WriterAt (an *os.File),
// the image is copied and hashed at the same time and the headers are
// patched afterwards. The caller discards w on error (internal/atomicfile).
func Join(f *File, signedAttrs []byte, cert *x509.Certificate, sig []byte, w io.Writer) error {
	if _, err := ParseSignedAttributes(signedAttrs); err != nil {
		return err
	}
	// Check the signature before any I/O: a wrong signature is the common
	// offline mistake.
	if err := keys.Verify(cert.PublicKey, Hash, signedAttrs, sig); err != nil {
		return fmt.Errorf("%w with certificate %q over the signed attributes", ErrBadSignature, cert.Subject.String())
	}
	return f.emit(w, func(digest []byte) ([]byte, error) {
		return assemble(signedAttrs, digest, cert, sig)
	})
}

// Sign signs f online with signer (whose public key must be cert's) and
// writes the signed image to w. It is Prepare, keys.Sign and Join in one
// pass over the file, so its output is byte-identical to the offline flow
// with the same signing time and a deterministic (RSA) key.
func Sign(f *File, signer crypto.Signer, cert *x509.Certificate, signingTime time.Time, w io.Writer) error {
	if err := keys.CheckPair(signer, cert); err != nil {
		return fmt.Errorf("private key and certificate %q: %w", cert.Subject.String(), err)
	}
	if _, err := cms.SignatureAlgorithmFor(cert.PublicKey, Hash); err != nil {
		return err
	}
	return f.emit(w, func(digest []byte) ([]byte, error) {
		p, err := PrepareDigest(digest, signingTime)
		if err != nil {
			return nil, err
		}
		sig, err := keys.Sign(signer, p.Hash, p.SignedAttributes)
		if err != nil {
			return nil, fmt.Errorf("signing: %w", err)
		}
		return assemble(p.SignedAttributes, digest, cert, sig)
	})
}

// Win32 WIN_CERTIFICATE constants.
const (
	WinCertRevision2_0        = 0x0200
	WinCertTypePKCSSignedData = 0x0002
)

// emit writes f with one more WIN_CERTIFICATE holding the PKCS#7 that build
// makes from f's SHA-256 Authenticode digest. The input is read once for
// the digest and the CheckSum; when w is an io.WriterAt the copy runs at the
// same time (in the kernel, copy_file_range, when both are files) and the
// header fields are patched afterwards, else the copy follows with the
// patched fields in place.
func (f *File) emit(w io.Writer, build func(digest []byte) ([]byte, error)) error {
	wa, canPatch := w.(io.WriterAt)
	copied := make(chan error, 1)
	if canPatch {
		go func() { copied <- f.copyRaw(w) }()
	}
	d := Hash.New()
	sum, err := f.scan(d, true)
	var p7 []byte
	if err == nil {
		p7, err = build(f.finish(d, true))
	}
	if canPatch {
		if cerr := <-copied; err == nil {
			err = cerr
		}
	}
	if err != nil {
		return err
	}
	// The certificate table's offset and size are 32-bit fields.
	if f.size+int64(len(p7))+16 > math.MaxUint32 {
		return fmt.Errorf("%w: a %d-byte image is too large for a PE certificate table", ErrCertTable, f.size)
	}
	tail, entry, checksum := f.layout(sum, p7)
	if !canPatch {
		if err := f.copyTo(w, []patch{{f.certEntryOffset, entry}, {f.checksumOffset, checksum}}); err != nil {
			return err
		}
		_, err = w.Write(tail)
		return err
	}
	if _, err := w.Write(tail); err != nil {
		return err
	}
	if _, err := wa.WriteAt(entry, f.certEntryOffset); err != nil {
		return err
	}
	_, err = wa.WriteAt(checksum, f.checksumOffset)
	return err
}

// copyRaw copies the input to w unchanged. From an *os.File to an
// *os.File, io.Copy lets the kernel copy (copy_file_range), which leaves
// this core free; it moves the input file's offset.
func (f *File) copyRaw(w io.Writer) error {
	if src, ok := f.r.(*os.File); ok {
		if _, err := src.Seek(0, io.SeekStart); err != nil {
			return err
		}
		// In pieces, each handed to write-back as soon as it is copied:
		// the output's sync then overlaps the hashing.
		dst, _ := w.(filecopy.File)
		for off := int64(0); off < f.size; {
			piece := min(filecopy.Piece, f.size-off)
			n, err := io.CopyN(w, src, piece)
			if err == io.EOF || (err == nil && n != piece) {
				return fmt.Errorf("%w: input shrank while being copied", ErrTruncated)
			}
			if err != nil {
				return err
			}
			if dst != nil {
				filecopy.StartWriteback(dst, off, n)
			}
			off += n
		}
		return nil
	}
	return f.copyTo(w, nil)
}

// layout returns what signing appends to the file (padding to 8 bytes, then
// the WIN_CERTIFICATE, then padding), the new certificate table entry and
// the new CheckSum, given the word sum of the input (see pe.WordSum).
//
// As systemd-sbsign: dwLength = 8 + the DER length (unpadded), the entry's
// Size grows by the padded length.
func (f *File) layout(inputSum uint64, p7 []byte) (tail, entry, checksum []byte) {
	ct := f.CertificateTable()
	pad := int((8 - f.size%8) % 8)
	va := uint32(f.size) + uint32(pad)
	if ct.Size != 0 {
		va, pad = ct.VirtualAddress, 0 // Parse checked it ends the file, aligned
	}
	certLen := 8 + len(p7)
	padded := (certLen + 7) &^ 7
	tail = make([]byte, pad+padded)
	wc := tail[pad:]
	binary.LittleEndian.PutUint32(wc[0:], uint32(certLen))
	binary.LittleEndian.PutUint16(wc[4:], WinCertRevision2_0)
	binary.LittleEndian.PutUint16(wc[6:], WinCertTypePKCSSignedData)
	copy(wc[8:], p7)

	entry = make([]byte, 8)
	binary.LittleEndian.PutUint32(entry[0:], va)
	binary.LittleEndian.PutUint32(entry[4:], ct.Size+uint32(padded))

	var oldEntry, oldSum [8]byte
	binary.LittleEndian.PutUint32(oldEntry[0:], ct.VirtualAddress)
	binary.LittleEndian.PutUint32(oldEntry[4:], ct.Size)
	binary.LittleEndian.PutUint32(oldSum[:], f.OptionalHeader.CheckSum)
	s := pe.SubWordSum(pe.SubWordSum(inputSum, pe.WordSum(oldSum[:4], f.checksumOffset)), pe.WordSum(oldEntry[:], f.certEntryOffset)) +
		pe.WordSum(entry, f.certEntryOffset) + pe.WordSum(tail, f.size)
	checksum = make([]byte, 4)
	binary.LittleEndian.PutUint32(checksum, pe.FinishCheckSum(s, f.size+int64(len(tail))))
	return tail, entry, checksum
}

type patch struct {
	off int64
	b   []byte
}

// copyTo copies the whole input to w, replacing the bytes at the patches.
func (f *File) copyTo(w io.Writer, patches []patch) error {
	buf := make([]byte, chunkSize)
	for off := int64(0); off < f.size; {
		n := min(int64(len(buf)), f.size-off)
		b := buf[:n]
		if err := readFull(f.r, b, off); err != nil {
			return err
		}
		for _, p := range patches {
			for i, c := range p.b {
				if o := p.off + int64(i) - off; o >= 0 && o < n {
					b[o] = c
				}
			}
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		off += n
	}
	return nil
}
