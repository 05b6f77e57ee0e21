package server

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
)

// decodeNoteKey decodes the base64 payload of a note signer key: the
// algorithm byte (1 = Ed25519) and the 32-byte seed.
func decodeNoteKey(b64 string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) != 1+ed25519.SeedSize || b[0] != 1 {
		return nil, errors.New("malformed Ed25519 note signer key")
	}
	return ed25519.NewKeyFromSeed(b[1:]).Public().(ed25519.PublicKey), nil
}
