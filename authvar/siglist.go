package authvar

import (
	"crypto/x509"
	"encoding/binary"
	"fmt"
)

// SignatureList is an EFI_SIGNATURE_LIST: signatures of one type and size.
type SignatureList struct {
	Type GUID
	// Header is the SignatureHeader (empty for X.509 and SHA-256 lists).
	Header     []byte
	Signatures []Signature
}

// Signature is an EFI_SIGNATURE_DATA: the owner GUID and the data (a DER
// certificate in an X.509 list, a digest in a hash list).
type Signature struct {
	Owner GUID
	Data  []byte
}

// listHeaderSize is SignatureType, SignatureListSize, SignatureHeaderSize and
// SignatureSize.
const listHeaderSize = 16 + 4 + 4 + 4

// CertificateLists returns the signature lists for certs, one X.509 list
// per certificate owned by owner: what cert-to-efi-sig-list writes for
// each, concatenated.
func CertificateLists(owner GUID, certs []*x509.Certificate) []SignatureList {
	var out []SignatureList
	for _, c := range certs {
		out = append(out, SignatureList{Type: CertX509, Signatures: []Signature{{Owner: owner, Data: c.Raw}}})
	}
	return out
}

// MarshalLists encodes lists back to back, as a signature database
// variable holds them. Every signature of a list must have the size of the
// first one.
func MarshalLists(lists []SignatureList) ([]byte, error) {
	var out []byte
	for i, l := range lists {
		if len(l.Signatures) == 0 {
			return nil, fmt.Errorf("signature list %d: no signatures", i)
		}
		size := 16 + len(l.Signatures[0].Data)
		total := listHeaderSize + len(l.Header) + size*len(l.Signatures)
		if uint64(total) > 1<<31 {
			return nil, fmt.Errorf("signature list %d: too large", i)
		}
		b := make([]byte, listHeaderSize, total)
		copy(b, l.Type[:])
		binary.LittleEndian.PutUint32(b[16:], uint32(total))
		binary.LittleEndian.PutUint32(b[20:], uint32(len(l.Header)))
		binary.LittleEndian.PutUint32(b[24:], uint32(size))
		b = append(b, l.Header...)
		for j, s := range l.Signatures {
			if 16+len(s.Data) != size {
				return nil, fmt.Errorf("signature list %d: signature %d has %d bytes, the list's size is %d", i, j, len(s.Data), size-16)
			}
			b = append(b, s.Owner[:]...)
			b = append(b, s.Data...)
		}
		out = append(out, b...)
	}
	return out, nil
}

// ParseLists decodes a sequence of signature lists. It is strict: every
// size must add up, X.509 lists must hold certificates that parse and
// SHA-256 lists 32-byte digests.
func ParseLists(b []byte) ([]SignatureList, error) {
	var out []SignatureList
	off := 0
	for len(b) > 0 {
		if len(b) < listHeaderSize {
			return nil, fmt.Errorf("signature list at offset %d: truncated header", off)
		}
		var l SignatureList
		copy(l.Type[:], b)
		total := uint64(binary.LittleEndian.Uint32(b[16:]))
		hdr := uint64(binary.LittleEndian.Uint32(b[20:]))
		size := uint64(binary.LittleEndian.Uint32(b[24:]))
		switch {
		case total > uint64(len(b)) || total < listHeaderSize:
			return nil, fmt.Errorf("signature list at offset %d: SignatureListSize %d does not fit the %d bytes left", off, total, len(b))
		case size < 16:
			return nil, fmt.Errorf("signature list at offset %d: SignatureSize %d is smaller than the owner GUID", off, size)
		case hdr > total-listHeaderSize || (total-listHeaderSize-hdr)%size != 0 || total-listHeaderSize-hdr == 0:
			return nil, fmt.Errorf("signature list at offset %d: SignatureListSize %d is not the header plus a whole number of %d-byte signatures", off, total, size)
		}
		l.Header = append([]byte(nil), b[listHeaderSize:listHeaderSize+hdr]...)
		for p := listHeaderSize + hdr; p < total; p += size {
			var s Signature
			copy(s.Owner[:], b[p:])
			s.Data = append([]byte(nil), b[p+16:p+size]...)
			switch l.Type {
			case CertX509:
				if _, err := x509.ParseCertificate(s.Data); err != nil {
					return nil, fmt.Errorf("signature list at offset %d: X.509 signature at offset %d: %v", off, off+int(p), err)
				}
			case CertSHA256:
				if len(s.Data) != 32 {
					return nil, fmt.Errorf("signature list at offset %d: SHA-256 signature of %d bytes", off, len(s.Data))
				}
			}
			l.Signatures = append(l.Signatures, s)
		}
		out = append(out, l)
		b = b[total:]
		off += int(total)
	}
	return out, nil
}

// Certificates returns the certificates of the X.509 lists, in order.
func Certificates(lists []SignatureList) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for _, l := range lists {
		if l.Type != CertX509 {
			continue
		}
		for _, s := range l.Signatures {
			c, err := x509.ParseCertificate(s.Data)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
	}
	return out, nil
}
