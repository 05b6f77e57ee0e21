// Package openpgp makes OpenPGP (RFC 4880, version 4) public keys and
// detached signatures from any crypto.Signer: a key file, a PKCS#11 token,
// or a signature made elsewhere and joined later.
//
// It writes only what signet needs and gpg reads: a v4 public key packet
// with one user ID and its self-signature (a "transferable public key"),
// and v4 binary-document signatures. Both are built the signet way:
//
//	key, _ := openpgp.NewKey(signer.Public(), cert.NotBefore)
//	p, _ := openpgp.PrepareDetached(key, manifest, sigTime) // p.TBS, p.Hash
//	raw, _ := keys.Sign(signer, p.Hash, p.TBS)           // anywhere, any time
//	sig, _ := p.Join(raw)                                 // verified, then encoded
//
// For RSA and ECDSA keys the to-be-signed bytes (TBS) are the signed data
// followed by the v4 hashed trailer, so `openssl dgst -sha256 -sign key.pem
// TBS` is the raw signature. OpenPGP's EdDSA signs the digest, not the
// data, so for Ed25519 keys TBS is the 32-byte SHA-256 digest of those bytes
// and the raw signature is Ed25519 over it.
//
// # Fixed times
//
// A v4 fingerprint covers the key's creation time, so the same key must
// always be given the same creation time (signet uses the certificate's
// NotBefore) or export and signature disagree about who signed. Signature
// creation times are part of the signed bytes; prepare and join must use
// the same one (SOURCE_DATE_EPOCH). Nothing random goes into a signature:
// no salt notation, so online and offline RSA signatures are byte-identical.
//
// # Hashes
//
// SHA-256 for RSA, ECDSA P-256 and Ed25519; SHA-384 for ECDSA P-384 (an
// ECDSA hash should be at least as long as the curve order: gpg refuses to
// make, and RFC 9580 §5.2.3 forbids, a shorter one).
package openpgp

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// Public-key algorithm IDs (RFC 4880 §9.1, RFC 6637, RFC 9580 EdDSALegacy).
const (
	PubKeyAlgoRSA   = 1
	PubKeyAlgoECDSA = 19
	PubKeyAlgoEdDSA = 22
)

// Hash algorithm IDs (RFC 4880 §9.4).
const (
	HashSHA256 = 8
	HashSHA384 = 9
	HashSHA512 = 10
)

// Curve OIDs in OpenPGP's encoding: the DER contents without tag and length.
var (
	oidP256    = []byte{0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	oidP384    = []byte{0x2b, 0x81, 0x04, 0x00, 0x22}
	oidEd25519 = []byte{0x2b, 0x06, 0x01, 0x04, 0x01, 0xda, 0x47, 0x0f, 0x01}
)

// ErrUnsupportedKey is returned for key types OpenPGP signing here does not
// cover (only RSA, ECDSA P-256/P-384 and Ed25519 are).
var ErrUnsupportedKey = errors.New("openpgp: unsupported key type (use RSA, ECDSA P-256/P-384 or Ed25519)")

// Key is an OpenPGP v4 primary key: a public key and its creation time.
type Key struct {
	Public  crypto.PublicKey
	Created time.Time // whole seconds; part of the fingerprint
	algo    byte
	body    []byte // public key packet body
}

// NewKey wraps a public key with a fixed creation time. created must lie
// between 1970 and 2106 (a 32-bit timestamp).
func NewKey(pub crypto.PublicKey, created time.Time) (*Key, error) {
	ts, err := timestamp(created)
	if err != nil {
		return nil, fmt.Errorf("openpgp: key creation time: %w", err)
	}
	k := &Key{Public: pub, Created: time.Unix(int64(ts), 0).UTC()}
	body := []byte{4, 0, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(body[1:], ts)
	switch p := pub.(type) {
	case *rsa.PublicKey:
		k.algo = PubKeyAlgoRSA
		body = appendMPI(body, p.N.Bytes())
		body = appendMPI(body, big.NewInt(int64(p.E)).Bytes())
	case *ecdsa.PublicKey:
		var oid []byte
		switch p.Curve {
		case elliptic.P256():
			oid = oidP256
		case elliptic.P384():
			oid = oidP384
		default:
			return nil, ErrUnsupportedKey
		}
		pt, err := p.Bytes() // uncompressed point 04||X||Y
		if err != nil {
			return nil, fmt.Errorf("openpgp: %w", err)
		}
		k.algo = PubKeyAlgoECDSA
		body = append(body, byte(len(oid)))
		body = append(body, oid...)
		body = appendMPI(body, pt)
	case ed25519.PublicKey:
		k.algo = PubKeyAlgoEdDSA
		body = append(body, byte(len(oidEd25519)))
		body = append(body, oidEd25519...)
		// 0x40 marks the native (compressed) point encoding.
		body = appendMPI(body, append([]byte{0x40}, p...))
	default:
		return nil, ErrUnsupportedKey
	}
	body[5] = k.algo
	k.body = body
	return k, nil
}

func timestamp(t time.Time) (uint32, error) {
	s := t.Unix()
	if s < 0 || s > 0xffffffff {
		return 0, fmt.Errorf("%s is outside the 32-bit OpenPGP time range", t.UTC().Format(time.RFC3339))
	}
	return uint32(s), nil
}

// Fingerprint returns the v4 fingerprint: SHA-1 of 0x99, the two-byte
// length and the public key packet body (RFC 4880 §12.2). SHA-1 is what the
// v4 format defines; it names a key and is not a signature hash.
func (k *Key) Fingerprint() [20]byte {
	h := sha1.New()
	h.Write(k.hashPrefix())
	var fp [20]byte
	h.Sum(fp[:0])
	return fp
}

// KeyID is the low 64 bits of the fingerprint.
func (k *Key) KeyID() uint64 {
	fp := k.Fingerprint()
	return binary.BigEndian.Uint64(fp[12:])
}

// FingerprintHex is the fingerprint as gpg prints it (upper-case hex).
func (k *Key) FingerprintHex() string {
	fp := k.Fingerprint()
	return strings.ToUpper(hex.EncodeToString(fp[:]))
}

// hashPrefix is how a key enters fingerprints and certification hashes.
func (k *Key) hashPrefix() []byte {
	b := []byte{0x99, byte(len(k.body) >> 8), byte(len(k.body))}
	return append(b, k.body...)
}

// Hash is the digest signet signs with for this key (see the package
// documentation).
func (k *Key) Hash() crypto.Hash {
	if p, ok := k.Public.(*ecdsa.PublicKey); ok && p.Curve == elliptic.P384() {
		return crypto.SHA384
	}
	return crypto.SHA256
}

// Algorithm is the OpenPGP public-key algorithm ID.
func (k *Key) Algorithm() byte { return k.algo }

// Packet returns the encoded public key packet (tag 6).
func (k *Key) Packet() []byte { return packet(6, k.body) }

func hashID(h crypto.Hash) (byte, error) {
	switch h {
	case crypto.SHA256:
		return HashSHA256, nil
	case crypto.SHA384:
		return HashSHA384, nil
	case crypto.SHA512:
		return HashSHA512, nil
	}
	return 0, fmt.Errorf("openpgp: hash %v not supported", h)
}

// appendMPI appends a multiprecision integer: a two-byte bit count and the
// big-endian bytes without leading zeros (RFC 4880 §3.2).
func appendMPI(b, v []byte) []byte {
	for len(v) > 0 && v[0] == 0 {
		v = v[1:]
	}
	bits := 0
	if len(v) > 0 {
		bits = (len(v)-1)*8 + bitLen8(v[0])
	}
	b = append(b, byte(bits>>8), byte(bits))
	return append(b, v...)
}

func bitLen8(x byte) int {
	n := 0
	for ; x != 0; x >>= 1 {
		n++
	}
	return n
}

// packet encodes a new-format packet header (RFC 4880 §4.2.2) and body.
func packet(tag byte, body []byte) []byte {
	b := []byte{0xc0 | tag}
	switch n := len(body); {
	case n < 192:
		b = append(b, byte(n))
	case n < 8384:
		n -= 192
		b = append(b, byte(n>>8)+192, byte(n))
	default:
		b = append(b, 0xff, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, body...)
}
