package openpgp

import (
	"bytes"
	"crypto"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Trailer is what a detached binary-document signature made by signet
// hashes after the document (RFC 4880 §5.2.4): a version 4 signature
// header with exactly two hashed subpackets, the creation time and the
// issuer fingerprint, then 0x04 0xff and the header's length. Every byte
// of it follows from these fields, so a signer can rebuild it rather than
// sign a trailer someone else composed.
type Trailer struct {
	PubKeyAlgo  byte // PubKeyAlgoRSA or PubKeyAlgoECDSA
	Hash        crypto.Hash
	Created     time.Time
	Fingerprint [20]byte
}

// ErrTrailer is returned by ParseTrailer for bytes that are not exactly a
// trailer signet writes.
var ErrTrailer = errors.New("openpgp: not a signet binary-document signature trailer")

// Marshal encodes t byte for byte as PrepareDetached appends it to the
// document.
func (t *Trailer) Marshal() ([]byte, error) {
	hid, err := hashID(t.Hash)
	if err != nil {
		return nil, err
	}
	if t.PubKeyAlgo != PubKeyAlgoRSA && t.PubKeyAlgo != PubKeyAlgoECDSA {
		return nil, fmt.Errorf("openpgp: public-key algorithm %d: want RSA (1) or ECDSA (19)", t.PubKeyAlgo)
	}
	ts, err := timestamp(t.Created)
	if err != nil {
		return nil, fmt.Errorf("openpgp: signature creation time: %w", err)
	}
	var hashed []byte
	hashed = append(hashed, subpacket(subCreationTime, binary.BigEndian.AppendUint32(nil, ts))...)
	hashed = append(hashed, subpacket(subIssuerFingerprint, append([]byte{4}, t.Fingerprint[:]...))...)
	header := []byte{4, SigTypeBinary, t.PubKeyAlgo, hid, byte(len(hashed) >> 8), byte(len(hashed))}
	header = append(header, hashed...)
	out := append(header, 4, 0xff)
	return binary.BigEndian.AppendUint32(out, uint32(len(header))), nil
}

// trailerLen is the length of every trailer Marshal writes: a 6-byte
// header, 6 bytes of creation time, 23 of issuer fingerprint, 6 of final
// trailer.
const trailerLen = 6 + 6 + 23 + 6

// ParseTrailer reads the fields of a trailer at the end of tbs (the
// document followed by the trailer) and returns them with the document.
// It accepts only the exact encoding Marshal writes for those fields.
func ParseTrailer(tbs []byte) (doc []byte, t *Trailer, err error) {
	if len(tbs) < trailerLen {
		return nil, nil, fmt.Errorf("%w: %d bytes are too few", ErrTrailer, len(tbs))
	}
	b := tbs[len(tbs)-trailerLen:]
	t = &Trailer{PubKeyAlgo: b[2], Created: time.Unix(int64(binary.BigEndian.Uint32(b[8:12])), 0).UTC()}
	switch b[3] {
	case HashSHA256:
		t.Hash = crypto.SHA256
	case HashSHA384:
		t.Hash = crypto.SHA384
	case HashSHA512:
		t.Hash = crypto.SHA512
	default:
		return nil, nil, fmt.Errorf("%w: hash algorithm %d", ErrTrailer, b[3])
	}
	copy(t.Fingerprint[:], b[15:35])
	want, err := t.Marshal()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrTrailer, err)
	}
	if !bytes.Equal(b, want) {
		for i := range b {
			if b[i] != want[i] {
				return nil, nil, fmt.Errorf("%w: trailer byte %d is %#02x, signet writes %#02x", ErrTrailer, i, b[i], want[i])
			}
		}
	}
	return tbs[:len(tbs)-trailerLen], t, nil
}
