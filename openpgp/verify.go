package openpgp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	pgp "github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	pgperrors "github.com/ProtonMail/go-crypto/openpgp/errors"
	pgppacket "github.com/ProtonMail/go-crypto/openpgp/packet"
)

// Verified describes a good signature.
type Verified struct {
	Fingerprint string // signer's primary key fingerprint, upper-case hex
	UserIDs     []string
	Created     time.Time
}

// ErrUnknownSigner is returned when no key in the keyring made the
// signature.
var ErrUnknownSigner = errors.New("openpgp: the signature was made by a key that is not in the keyring")

// VerifyDetached checks a detached signature (binary or ASCII-armored) over
// data against a keyring of public keys (binary or armored, as gpg exports
// them). Version 3 signatures (RSA, not over SHA-1) are accepted as OBS
// publishes them. It uses an independent OpenPGP implementation
// (github.com/ProtonMail/go-crypto), not the code that wrote the signature.
func VerifyDetached(keyring, data, signature []byte) (*Verified, error) {
	var ring pgp.EntityList
	var err error
	if isArmored(keyring) {
		ring, err = pgp.ReadArmoredKeyRing(bytes.NewReader(keyring))
	} else {
		ring, err = pgp.ReadKeyRing(bytes.NewReader(keyring))
	}
	if err != nil {
		return nil, fmt.Errorf("openpgp: keyring: %w", err)
	}
	var sig *pgppacket.Signature
	var signer *pgp.Entity
	sigBytes := signature
	if isArmored(signature) {
		blk, err := armor.Decode(bytes.NewReader(signature))
		if err != nil {
			return nil, fmt.Errorf("openpgp: signature armor: %w", err)
		}
		if blk.Type != ArmorSignature {
			return nil, fmt.Errorf("openpgp: armored %q block, want %q", blk.Type, ArmorSignature)
		}
		if sigBytes, err = io.ReadAll(blk.Body); err != nil {
			return nil, fmt.Errorf("openpgp: signature armor: %w", err)
		}
	}
	if isV3(sigBytes) {
		v, err := verifyV3(ring, data, sigBytes)
		if err == nil {
			sort.Strings(v.UserIDs)
		}
		return v, err
	}
	verify := func(now time.Time) {
		cfg := &pgppacket.Config{Time: func() time.Time { return now }}
		sig, signer, err = pgp.VerifyDetachedSignature(ring, bytes.NewReader(data), bytes.NewReader(sigBytes), cfg)
	}
	verify(time.Now())
	// An expired key (or a signature dated after the clock) is judged at
	// the signature's own creation time, as gpg does: it reports a good
	// signature from an expired key, and a manifest signed while the key
	// was valid stays valid.
	if err != nil && sig != nil && (errors.Is(err, pgperrors.ErrSignatureExpired) || errors.Is(err, pgperrors.ErrKeyExpired)) {
		verify(sig.CreationTime)
	}
	if err != nil {
		if errors.Is(err, pgperrors.ErrUnknownIssuer) {
			return nil, ErrUnknownSigner
		}
		return nil, fmt.Errorf("openpgp: bad signature: %w", err)
	}
	v := &Verified{Fingerprint: strings.ToUpper(fmt.Sprintf("%x", signer.PrimaryKey.Fingerprint)), Created: sig.CreationTime.UTC()}
	for name := range signer.Identities {
		v.UserIDs = append(v.UserIDs, name)
	}
	sort.Strings(v.UserIDs)
	return v, nil
}

func isArmored(b []byte) bool {
	return bytes.HasPrefix(bytes.TrimLeft(b, " \t\r\n"), []byte("-----BEGIN PGP"))
}
