package openpgp

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"signet.dev/keys"
)

// Signature types (RFC 4880 §5.2.1).
const (
	SigTypeBinary           = 0x00
	SigTypePositiveCertUser = 0x13
)

// Subpacket types (RFC 4880 §5.2.3.1, RFC 9580 §5.2.3.35).
const (
	subCreationTime      = 2
	subPreferredHash     = 21
	subKeyFlags          = 27
	subIssuer            = 16
	subIssuerFingerprint = 33
)

// ErrBadSignature is returned by Join when the raw signature does not
// verify against the key and the to-be-signed bytes.
var ErrBadSignature = errors.New("openpgp: signature does not verify against the key over the prepared data")

// Prepared is a signature waiting for its raw signature value: the bytes to
// sign and everything needed to encode the result once it is back.
type Prepared struct {
	Key *Key
	// Hash is the OpenPGP hash algorithm of the signature.
	Hash crypto.Hash
	// TBS is what keys.Sign(signer, Hash, TBS) signs: the hashed data and
	// the v4 trailer for RSA and ECDSA, the digest of those for Ed25519.
	TBS []byte
	// SigType and Created describe the signature being made.
	SigType byte
	Created time.Time

	header   []byte // version..hashed subpackets: the start of the packet body
	unhashed []byte // unhashed subpacket area
	digest   []byte
	lead     []byte // packets written before the signature (certification)
}

// PrepareDetached prepares a detached signature over data (a binary
// document signature, type 0x00) made by key at time created.
func PrepareDetached(key *Key, data []byte, created time.Time) (*Prepared, error) {
	hashed, err := issuerSubpackets(key, created)
	if err != nil {
		return nil, err
	}
	return prepare(key, SigTypeBinary, created, hashed, data, nil)
}

// PrepareCertification prepares the self-signature that binds userID to
// key (a positive certification, type 0x13), dated at the key's creation
// so the exported key is the same bytes every time. Join then returns the
// whole public key block: key packet, user ID packet, signature.
func PrepareCertification(key *Key, userID string) (*Prepared, error) {
	if userID == "" || !utf8.ValidString(userID) || strings.ContainsAny(userID, "\x00\r\n") {
		return nil, fmt.Errorf("openpgp: user ID %q: must be non-empty UTF-8 on one line", userID)
	}
	hashed, err := issuerSubpackets(key, key.Created)
	if err != nil {
		return nil, err
	}
	// May certify and sign; prefers the hashes signet uses.
	hashed = append(hashed, subpacket(subKeyFlags, []byte{0x03})...)
	hashed = append(hashed, subpacket(subPreferredHash, []byte{HashSHA256, HashSHA384, HashSHA512})...)
	uid := []byte(userID)
	var msg []byte
	msg = append(msg, key.hashPrefix()...)
	msg = append(msg, 0xb4)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(uid)))
	msg = append(msg, uid...)
	lead := append(key.Packet(), packet(13, uid)...)
	return prepare(key, SigTypePositiveCertUser, key.Created, hashed, msg, lead)
}

func issuerSubpackets(key *Key, created time.Time) ([]byte, error) {
	ts, err := timestamp(created)
	if err != nil {
		return nil, fmt.Errorf("openpgp: signature creation time: %w", err)
	}
	if created.Unix() < key.Created.Unix() {
		// gpg rejects such a signature ("key is newer than the signature").
		return nil, fmt.Errorf("openpgp: signature time %s is before the key's creation time %s",
			created.UTC().Format(time.RFC3339), key.Created.Format(time.RFC3339))
	}
	fp := key.Fingerprint()
	var b []byte
	b = append(b, subpacket(subCreationTime, binary.BigEndian.AppendUint32(nil, ts))...)
	b = append(b, subpacket(subIssuerFingerprint, append([]byte{4}, fp[:]...))...)
	return b, nil
}

func prepare(key *Key, sigType byte, created time.Time, hashed, msg, lead []byte) (*Prepared, error) {
	h := key.Hash()
	hid, err := hashID(h)
	if err != nil {
		return nil, err
	}
	header := []byte{4, sigType, key.algo, hid, byte(len(hashed) >> 8), byte(len(hashed))}
	header = append(header, hashed...)
	// The v4 hashed trailer (RFC 4880 §5.2.4): the header, then 0x04 0xff
	// and its length.
	tbs := make([]byte, 0, len(msg)+len(header)+6)
	tbs = append(tbs, msg...)
	tbs = append(tbs, header...)
	tbs = append(tbs, 4, 0xff)
	tbs = binary.BigEndian.AppendUint32(tbs, uint32(len(header)))
	d := h.New()
	d.Write(tbs)
	digest := d.Sum(nil)
	if key.algo == PubKeyAlgoEdDSA {
		// EdDSA in OpenPGP signs the digest.
		tbs = digest
	}
	var issuer [8]byte
	binary.BigEndian.PutUint64(issuer[:], key.KeyID())
	return &Prepared{
		Key: key, Hash: h, TBS: tbs, SigType: sigType, Created: created.UTC().Truncate(time.Second),
		header: header, unhashed: subpacket(subIssuer, issuer[:]), digest: digest, lead: lead,
	}, nil
}

// Join checks that sig is a valid raw signature (PKCS#1 v1.5, DER ECDSA, or
// 64-byte Ed25519) of p.TBS by p.Key and returns the encoded result: the
// signature packet, preceded for a certification by the key and user ID
// packets. A signature that does not verify is ErrBadSignature.
func (p *Prepared) Join(sig []byte) ([]byte, error) {
	if err := keys.Verify(p.Key.Public, p.Hash, p.TBS, sig); err != nil {
		return nil, ErrBadSignature
	}
	body := append([]byte{}, p.header...)
	body = append(body, byte(len(p.unhashed)>>8), byte(len(p.unhashed)))
	body = append(body, p.unhashed...)
	body = append(body, p.digest[:2]...)
	switch p.Key.algo {
	case PubKeyAlgoRSA:
		body = appendMPI(body, sig)
	case PubKeyAlgoECDSA:
		r, s, err := parseECDSA(sig)
		if err != nil {
			return nil, err
		}
		body = appendMPI(body, r.Bytes())
		body = appendMPI(body, s.Bytes())
	case PubKeyAlgoEdDSA:
		if len(sig) != ed25519.SignatureSize {
			return nil, ErrBadSignature
		}
		body = appendMPI(body, sig[:32])
		body = appendMPI(body, sig[32:])
	}
	out := append([]byte{}, p.lead...)
	return append(out, packet(2, body)...), nil
}

func parseECDSA(sig []byte) (r, s *big.Int, err error) {
	r, s = new(big.Int), new(big.Int)
	in := cryptobyte.String(sig)
	var inner cryptobyte.String
	if !in.ReadASN1(&inner, cbasn1.SEQUENCE) || !in.Empty() ||
		!inner.ReadASN1Integer(r) || !inner.ReadASN1Integer(s) || !inner.Empty() {
		return nil, nil, errors.New("openpgp: ECDSA signature is not a DER ECDSA-Sig-Value")
	}
	return r, s, nil
}

// Sign prepares, signs with signer and joins in one step: the online path,
// which is the offline path with the signer in this process.
func (p *Prepared) Sign(signer crypto.Signer) ([]byte, error) {
	if !keys.SamePublicKey(signer.Public(), p.Key.Public) {
		return nil, errors.New("openpgp: the private key is not the OpenPGP key's")
	}
	raw, err := keys.Sign(signer, p.Hash, p.TBS)
	if err != nil {
		return nil, fmt.Errorf("openpgp: signing: %w", err)
	}
	return p.Join(raw)
}

// SignDetached makes a detached signature over data with signer, whose
// OpenPGP identity is key.
func SignDetached(signer crypto.Signer, key *Key, data []byte, created time.Time) ([]byte, error) {
	p, err := PrepareDetached(key, data, created)
	if err != nil {
		return nil, err
	}
	return p.Sign(signer)
}

// ExportPublicKey returns key as a transferable public key (binary; see
// Armor) with userID self-certified by signer: what a verifier imports,
// e.g. into systemd's import-pubring.pgp.
func ExportPublicKey(signer crypto.Signer, key *Key, userID string) ([]byte, error) {
	p, err := PrepareCertification(key, userID)
	if err != nil {
		return nil, err
	}
	return p.Sign(signer)
}

func subpacket(typ byte, data []byte) []byte {
	// Every subpacket here is shorter than 192 bytes: one length octet,
	// which counts the type octet too.
	b := []byte{byte(len(data) + 1), typ}
	return append(b, data...)
}

// Armor block types.
const (
	ArmorSignature = "PGP SIGNATURE"
	ArmorPublicKey = "PGP PUBLIC KEY BLOCK"
)

// Armor encodes data in ASCII armor (RFC 4880 §6.2) without headers: 64
// base64 characters a line and the CRC-24 checksum line, as gpg writes it.
func Armor(data []byte, blockType string) []byte {
	var b bytes.Buffer
	b.WriteString("-----BEGIN " + blockType + "-----\n\n")
	enc := make([]byte, (len(data)+2)/3*4)
	base64.StdEncoding.Encode(enc, data)
	for len(enc) > 64 {
		b.Write(enc[:64])
		b.WriteByte('\n')
		enc = enc[64:]
	}
	if len(enc) > 0 {
		b.Write(enc)
		b.WriteByte('\n')
	}
	c := crc24(data)
	sum := make([]byte, 4)
	base64.StdEncoding.Encode(sum, []byte{byte(c >> 16), byte(c >> 8), byte(c)})
	b.WriteString("=")
	b.Write(sum)
	b.WriteString("\n-----END " + blockType + "-----\n")
	return b.Bytes()
}

// crc24 is the armor checksum of RFC 4880 §6.1 (a checksum, not
// cryptography).
func crc24(data []byte) uint32 {
	crc := uint32(0xb704ce)
	for _, c := range data {
		crc ^= uint32(c) << 16
		for i := 0; i < 8; i++ {
			crc <<= 1
			if crc&0x1000000 != 0 {
				crc ^= 0x1864cfb
			}
		}
	}
	return crc & 0xffffff
}
