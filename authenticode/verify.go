package authenticode

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"signet.dev/cms"
)

// Errors of verification a caller can test for.
var (
	ErrNotSigned      = errors.New("image has no Authenticode signature")
	ErrNotSignedBy    = errors.New("no signature by the given certificate")
	ErrDigestMismatch = errors.New("image was modified after signing: its Authenticode digest is not the one the signature commits to")
)

// maxCertificate bounds one WIN_CERTIFICATE so that a hostile table cannot
// make us allocate gigabytes.
const maxCertificate = 16 << 20

// Signature is one WIN_CERTIFICATE of the certificate table.
type Signature struct {
	// Offset is the file offset of the WIN_CERTIFICATE header.
	Offset int64
	// Revision and Type are wRevision and wCertificateType.
	Revision, Type uint16
	// SignedData is the PKCS#7, nil if Type is not PKCS_SIGNED_DATA.
	SignedData *cms.SignedData
	// Hash and Digest are the image digest the signature commits to
	// (SpcIndirectDataContent.messageDigest).
	Hash   crypto.Hash
	Digest []byte
	// SigningTime is the first signer's signingTime attribute, or zero.
	SigningTime time.Time
	// Signer is the first signer's certificate, if embedded.
	Signer *x509.Certificate
	// Err says why a PKCS_SIGNED_DATA entry could not be read (its
	// SignedData is then nil).
	Err error
}

// Signatures parses the certificate table. Entries follow each other at
// 8-byte aligned offsets; dwLength may be padded (osslsigncode) or not
// (sbsign, systemd-sbsign), and both are accepted. A table whose entries do
// not fit is an error; an entry whose PKCS#7 cannot be read is returned
// with Err set.
func (f *File) Signatures() ([]Signature, error) {
	ct := f.CertificateTable()
	var out []Signature
	if ct.Size == 0 {
		return nil, nil
	}
	start, end := int64(ct.VirtualAddress), int64(ct.VirtualAddress)+int64(ct.Size)
	for off := start; off < end; {
		if end-off < 8 {
			return nil, fmt.Errorf("%w: %d stray bytes at %#x", ErrCertTable, end-off, off)
		}
		var h [8]byte
		if err := readFull(f.r, h[:], off); err != nil {
			return nil, err
		}
		length := int64(binary.LittleEndian.Uint32(h[0:]))
		if length < 8 || length > end-off {
			return nil, fmt.Errorf("%w: WIN_CERTIFICATE at %#x has dwLength %d (table ends at %#x)", ErrCertTable, off, length, end)
		}
		if length > maxCertificate {
			return nil, fmt.Errorf("%w: WIN_CERTIFICATE at %#x is %d bytes", ErrCertTable, off, length)
		}
		s := Signature{Offset: off, Revision: binary.LittleEndian.Uint16(h[4:]), Type: binary.LittleEndian.Uint16(h[6:])}
		if s.Type == WinCertTypePKCSSignedData {
			body := make([]byte, length-8)
			if err := readFull(f.r, body, off+8); err != nil {
				return nil, err
			}
			if err := s.parse(body); err != nil {
				// One unreadable signature does not hide the others.
				s.SignedData, s.Err = nil, fmt.Errorf("%w: WIN_CERTIFICATE at %#x: %v", ErrCertTable, off, err)
			}
		}
		out = append(out, s)
		off += (length + 7) &^ 7
	}
	return out, nil
}

func (s *Signature) parse(body []byte) error {
	// The DER may be followed by the padding of a padded dwLength.
	in := cryptobyte.String(body)
	var der cryptobyte.String
	if !in.ReadASN1Element(&der, cbasn1.SEQUENCE) {
		return errors.New("PKCS#7 is not a DER SEQUENCE")
	}
	if len(in) >= 8 || !bytes.Equal(in, make([]byte, len(in))) {
		return fmt.Errorf("%d bytes after the PKCS#7 are not padding", len(in))
	}
	sd, err := cms.Parse(der)
	if err != nil {
		return err
	}
	if !sd.ContentType.Equal(OIDSpcIndirectData) {
		return fmt.Errorf("content type %v is not SpcIndirectDataContent", sd.ContentType)
	}
	if len(sd.Signers) == 0 {
		return errors.New("PKCS#7 has no signer")
	}
	s.SignedData = sd
	s.Hash, s.Digest, err = parseSpcIndirectData(sd.Content)
	if err != nil {
		return err
	}
	si := &sd.Signers[0]
	s.Signer = sd.Certificate(si)
	if si.SignedAttributes != nil {
		if p, err := ParseSignedAttributes(si.SignedAttributes); err == nil {
			s.SigningTime = p.SigningTime
		}
	}
	return nil
}

// parseSpcIndirectData returns the digest algorithm and digest an
// SpcIndirectDataContent carries. The data member is not interpreted
// (pesign writes another OID there than the other signers).
func parseSpcIndirectData(der []byte) (crypto.Hash, []byte, error) {
	s := cryptobyte.String(der)
	var spc, data, di, alg cryptobyte.String
	var oid asn1.ObjectIdentifier
	var digest []byte
	if !s.ReadASN1(&spc, cbasn1.SEQUENCE) || !s.Empty() ||
		!spc.ReadASN1(&data, cbasn1.SEQUENCE) || !spc.ReadASN1(&di, cbasn1.SEQUENCE) || !spc.Empty() ||
		!di.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1ObjectIdentifier(&oid) ||
		!di.ReadASN1Bytes(&digest, cbasn1.OCTET_STRING) || !di.Empty() {
		return 0, nil, errors.New("malformed SpcIndirectDataContent")
	}
	var h crypto.Hash
	for _, c := range []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		if o, _ := cms.HashOID(c); o.Equal(oid) {
			h = c
		}
	}
	if h == 0 || len(digest) != h.Size() {
		return 0, nil, fmt.Errorf("SpcIndirectDataContent digest: unsupported algorithm %v or bad length %d", oid, len(digest))
	}
	return h, digest, nil
}

// Verify returns the first signature in f made by one of the trusted
// certificates (the signer's certificate is one of them, or was issued by
// one) whose PKCS#7 verifies and which commits to f's current Authenticode
// digest. Certificate validity periods and key usages are not checked,
// like sbverify and the firmware.
func Verify(f *File, trusted []*x509.Certificate) (*Signature, error) {
	sigs, err := f.Signatures()
	if err != nil {
		return nil, err
	}
	if len(sigs) == 0 {
		return nil, ErrNotSigned
	}
	digests := map[crypto.Hash][]byte{}
	errNotBy := ErrNotSignedBy
	for i := range sigs {
		s := &sigs[i]
		if s.SignedData == nil {
			if s.Err != nil && errNotBy == ErrNotSignedBy {
				errNotBy = s.Err
			}
			continue
		}
		for j := range s.SignedData.Signers {
			si := &s.SignedData.Signers[j]
			cert := signerCert(s.SignedData, si, trusted)
			if cert == nil {
				continue
			}
			d, ok := digests[s.Hash]
			if !ok {
				if d, err = f.Digest(s.Hash); err != nil {
					return nil, err
				}
				digests[s.Hash] = d
			}
			if !bytes.Equal(d, s.Digest) {
				errNotBy = ErrDigestMismatch
				continue
			}
			octets, err := contentOctets(s.SignedData.Content)
			if err != nil {
				return nil, err
			}
			if err := si.VerifyWith(cert, octets); err != nil {
				errNotBy = fmt.Errorf("signature by %q: %w", cert.Subject.String(), err)
				continue
			}
			return s, nil
		}
	}
	return nil, errNotBy
}

// signerCert returns the certificate whose key made si if it is trusted or
// issued by a trusted certificate.
func signerCert(sd *cms.SignedData, si *cms.SignerInfo, trusted []*x509.Certificate) *x509.Certificate {
	emb := sd.Certificate(si)
	for _, t := range trusted {
		if emb == nil {
			if bytes.Equal(t.RawIssuer, si.IssuerRaw) && t.SerialNumber.Cmp(si.Serial) == 0 {
				return t
			}
			continue
		}
		if bytes.Equal(emb.Raw, t.Raw) || emb.CheckSignatureFrom(t) == nil {
			return emb
		}
	}
	return nil
}
