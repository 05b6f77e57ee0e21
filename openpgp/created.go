package openpgp

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"time"

	pgp "github.com/ProtonMail/go-crypto/openpgp"
)

// KeyCreationTime finds pub among the primary keys of keyring (binary or
// armored, as gpg or signet openpgp export-key writes it) and returns its
// creation time: the time that, with the key material, makes its
// fingerprint. A key published once keeps its fingerprint even when the
// certificate it came from is reissued with a later notBefore (as OBS does
// when a key is extended), so signatures must use this time.
func KeyCreationTime(keyring []byte, pub crypto.PublicKey) (time.Time, error) {
	var ring pgp.EntityList
	var err error
	if isArmored(keyring) {
		ring, err = pgp.ReadArmoredKeyRing(bytes.NewReader(keyring))
	} else {
		ring, err = pgp.ReadKeyRing(bytes.NewReader(keyring))
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("openpgp: keyring: %w", err)
	}
	for _, e := range ring {
		pk := e.PrimaryKey
		if pk == nil || pk.Version != 4 {
			continue
		}
		k, err := NewKey(pub, pk.CreationTime)
		if err != nil {
			return time.Time{}, err
		}
		// Same material and time give the same fingerprint: the key is
		// this one, not merely one of the same type.
		fp := k.Fingerprint()
		if bytes.Equal(fp[:], pk.Fingerprint) {
			return k.Created, nil
		}
	}
	return time.Time{}, errors.New("openpgp: the keyring holds no primary key with this public key")
}
