package openpgp

import (
	"crypto"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	pgp "github.com/ProtonMail/go-crypto/openpgp"
)

// sigV3 is a version 3 signature packet (RFC 4880 5.2.2), which OBS
// publishes by default and the OpenPGP library no longer reads.
type sigV3 struct {
	sigType byte
	created uint32
	keyID   uint64
	pubAlgo byte
	hash    crypto.Hash
	left16  [2]byte
	mpi     []byte
}

// isV3 reports whether sig (binary) is a signature packet of version 3.
func isV3(sig []byte) bool {
	body, _, err := readPacket(sig)
	return err == nil && len(body) > 0 && body[0] == 3
}

// readPacket returns the body of the first packet of b, which must be a
// signature packet (tag 2), and what follows it.
func readPacket(b []byte) (body, rest []byte, err error) {
	if len(b) < 2 || b[0]&0x80 == 0 {
		return nil, nil, errors.New("not an OpenPGP packet")
	}
	var tag byte
	var n, hdr int
	if b[0]&0x40 != 0 { // new format
		tag = b[0] & 0x3f
		switch l := b[1]; {
		case l < 192:
			n, hdr = int(l), 2
		case l < 224:
			if len(b) < 3 {
				return nil, nil, errors.New("truncated packet header")
			}
			n, hdr = (int(l)-192)<<8+int(b[2])+192, 3
		case l == 255:
			if len(b) < 6 {
				return nil, nil, errors.New("truncated packet header")
			}
			n, hdr = int(binary.BigEndian.Uint32(b[2:6])), 6
		default:
			return nil, nil, errors.New("partial body lengths in a signature packet")
		}
	} else { // old format
		tag = (b[0] >> 2) & 0x0f
		switch b[0] & 3 {
		case 0:
			n, hdr = int(b[1]), 2
		case 1:
			if len(b) < 3 {
				return nil, nil, errors.New("truncated packet header")
			}
			n, hdr = int(binary.BigEndian.Uint16(b[1:3])), 3
		case 2:
			if len(b) < 5 {
				return nil, nil, errors.New("truncated packet header")
			}
			n, hdr = int(binary.BigEndian.Uint32(b[1:5])), 5
		default:
			return nil, nil, errors.New("indeterminate packet length")
		}
	}
	if tag != 2 {
		return nil, nil, fmt.Errorf("packet tag %d, want a signature (2)", tag)
	}
	if n < 0 || n > len(b)-hdr {
		return nil, nil, errors.New("truncated signature packet")
	}
	return b[hdr : hdr+n], b[hdr+n:], nil
}

var v3Hashes = map[byte]crypto.Hash{2: crypto.SHA1, 8: crypto.SHA256, 9: crypto.SHA384, 10: crypto.SHA512, 11: crypto.SHA224}

// parseV3 parses one version 3 signature packet, nothing after it.
func parseV3(b []byte) (*sigV3, error) {
	body, rest, err := readPacket(b)
	if err != nil {
		return nil, fmt.Errorf("openpgp: v3 signature: %w", err)
	}
	if len(rest) != 0 {
		return nil, errors.New("openpgp: v3 signature: data after the signature packet")
	}
	// version, hashed length 5, type, time, key ID, algorithms, left 16
	if len(body) < 19 || body[0] != 3 || body[1] != 5 {
		return nil, errors.New("openpgp: v3 signature: malformed header")
	}
	s := &sigV3{sigType: body[2], created: binary.BigEndian.Uint32(body[3:7]), keyID: binary.BigEndian.Uint64(body[7:15]),
		pubAlgo: body[15]}
	h, ok := v3Hashes[body[16]]
	if !ok {
		return nil, fmt.Errorf("openpgp: v3 signature: unknown hash algorithm %d", body[16])
	}
	s.hash = h
	copy(s.left16[:], body[17:19])
	mpi := body[19:]
	if len(mpi) < 2 {
		return nil, errors.New("openpgp: v3 signature: no signature value")
	}
	bits := int(binary.BigEndian.Uint16(mpi[:2]))
	if (bits+7)/8 != len(mpi)-2 {
		return nil, errors.New("openpgp: v3 signature: signature value length does not match its MPI header")
	}
	s.mpi = mpi[2:]
	return s, nil
}

// verifyV3 checks a v3 binary-document signature by an RSA key of ring.
// SHA-1 is refused: a collision makes a second document with the same
// signature.
func verifyV3(ring pgp.EntityList, data, sig []byte) (*Verified, error) {
	s, err := parseV3(sig)
	if err != nil {
		return nil, err
	}
	if s.sigType != 0x00 {
		return nil, fmt.Errorf("openpgp: v3 signature of type %#x, want a binary document signature (0x00)", s.sigType)
	}
	if s.pubAlgo != 1 && s.pubAlgo != 3 {
		return nil, fmt.Errorf("openpgp: v3 signature with public key algorithm %d, want RSA", s.pubAlgo)
	}
	if s.hash == crypto.SHA1 {
		return nil, errors.New("openpgp: v3 signature over a SHA-1 digest: refused (SHA-1 collisions); sign with SHA-256 (obs-sign -h sha256)")
	}
	if !s.hash.Available() {
		return nil, fmt.Errorf("openpgp: v3 signature: hash %v not available", s.hash)
	}
	keys := ring.KeysById(s.keyID)
	if len(keys) == 0 {
		return nil, ErrUnknownSigner
	}
	h := s.hash.New()
	h.Write(data)
	h.Write([]byte{s.sigType})
	binary.Write(h, binary.BigEndian, s.created)
	digest := h.Sum(nil)
	if digest[0] != s.left16[0] || digest[1] != s.left16[1] {
		return nil, errors.New("openpgp: bad signature: v3 signature's digest prefix does not match the data")
	}
	created := time.Unix(int64(s.created), 0).UTC()
	for _, k := range keys {
		pub, ok := k.PublicKey.PublicKey.(*rsa.PublicKey)
		if !ok {
			continue
		}
		if created.Before(k.PublicKey.CreationTime) {
			continue
		}
		// An MPI drops leading zero octets; PKCS #1 wants the modulus' size.
		val := s.mpi
		if len(val) < pub.Size() {
			val = append(make([]byte, pub.Size()-len(val)), val...)
		}
		if rsa.VerifyPKCS1v15(pub, s.hash, digest, val) != nil {
			continue
		}
		v := &Verified{Fingerprint: fmt.Sprintf("%X", k.Entity.PrimaryKey.Fingerprint), Created: created}
		for name := range k.Entity.Identities {
			v.UserIDs = append(v.UserIDs, name)
		}
		return v, nil
	}
	return nil, errors.New("openpgp: bad signature: the v3 signature does not verify with the key it names")
}
