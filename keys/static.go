package keys

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
)

var randReader io.Reader = rand.Reader

// Static is a crypto.Signer that holds a signature made elsewhere (offline,
// by a signing service, by OBS) and hands it out for exactly the digest it
// was made over. It lets a join step run the same code as online signing:
// the library builds the container, asks Static to sign, and gets the
// offline signature back, or an error if the bytes no longer match.
type Static struct {
	Key       crypto.PublicKey
	Hash      crypto.Hash
	Message   []byte // the to-be-signed bytes (Ed25519, or to derive Digest)
	Signature []byte
}

// Public returns the public key the signature was made with.
func (s *Static) Public() crypto.PublicKey { return s.Key }

// Sign returns the stored signature if digest is the digest of the stored
// message (or, for Ed25519, the message itself) and the signature verifies.
func (s *Static) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	h := opts.HashFunc()
	if h == 0 {
		if !bytes.Equal(digest, s.Message) {
			return nil, errors.New("offline signature was made over different data")
		}
	} else {
		if h != s.Hash {
			return nil, fmt.Errorf("offline signature was made with %v, %v requested", s.Hash, h)
		}
		d := h.New()
		d.Write(s.Message)
		if !bytes.Equal(d.Sum(nil), digest) {
			return nil, errors.New("offline signature was made over different data")
		}
	}
	if err := Verify(s.Key, s.Hash, s.Message, s.Signature); err != nil {
		return nil, fmt.Errorf("offline signature: %w", err)
	}
	return s.Signature, nil
}

// Close does nothing.
func (s *Static) Close() error { return nil }
