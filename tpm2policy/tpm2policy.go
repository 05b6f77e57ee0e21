// Package tpm2policy computes TPM 2.0 policy digests offline, exactly as a
// TPM's trial session would: TPM2_PolicyPCR, TPM2_PolicyAuthorize and
// TPM2_PolicyOR, plus the TPM Name of an external signing key as systemd
// loads it (systemd-cryptenroll --tpm2-public-key).
//
// A policy digest starts as zero bytes of the policy hash's size and each
// command extends it: digest' = H(digest || commandCode || parameters) (TPM
// 2.0 Part 3, section 23). The structures are marshalled with go-tpm's tpm2
// package so the bytes are those a TPM hashes.
//
// The digest systemd signs for a UKI's PCR 11 policy (the `pol` field of a
// .pcrsig entry) is
//
//	pol = PolicyPCR(SHA-256, zero, bank, []int{11}, H_bank(PCR11 value))
//
// always a SHA-256 policy digest, whatever the PCR bank.
package tpm2policy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// ErrUnsupported is returned for a hash, bank, PCR or key the TPM policy
// structures cannot express.
var ErrUnsupported = errors.New("tpm2policy: unsupported")

// AlgID returns the TPM_ALG_ID of a hash: sha1 0x0004, sha256 0x000B, sha384
// 0x000C, sha512 0x000D.
func AlgID(h crypto.Hash) (tpm2.TPMAlgID, error) {
	switch h {
	case crypto.SHA1:
		return tpm2.TPMAlgSHA1, nil
	case crypto.SHA256:
		return tpm2.TPMAlgSHA256, nil
	case crypto.SHA384:
		return tpm2.TPMAlgSHA384, nil
	case crypto.SHA512:
		return tpm2.TPMAlgSHA512, nil
	}
	return 0, fmt.Errorf("%w: hash %v", ErrUnsupported, h)
}

// PCRSelection returns the TPML_PCR_SELECTION for one bank: count 1, the
// bank's algorithm, sizeofSelect 3 (PCRs 0-23) and the bitmap of pcrs.
func PCRSelection(bank crypto.Hash, pcrs ...int) (tpm2.TPMLPCRSelection, error) {
	alg, err := AlgID(bank)
	if err != nil {
		return tpm2.TPMLPCRSelection{}, err
	}
	bitmap := make([]byte, 3)
	for _, p := range pcrs {
		if p < 0 || p >= 24 {
			return tpm2.TPMLPCRSelection{}, fmt.Errorf("%w: PCR %d", ErrUnsupported, p)
		}
		bitmap[p/8] |= 1 << (p % 8)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: alg, PCRSelect: bitmap}}}, nil
}

// calc returns a fresh calculator for policyHash.
func calc(policyHash crypto.Hash) (*tpm2.PolicyCalculator, error) {
	alg, err := AlgID(policyHash)
	if err != nil {
		return nil, err
	}
	return tpm2.NewPolicyCalculator(alg)
}

// PCRDigest is the pcrDigest argument of TPM2_PolicyPCR: the policy hash
// over the concatenated values of the selected PCRs, in selection order.
func PCRDigest(policyHash crypto.Hash, values ...[]byte) []byte {
	h := policyHash.New()
	for _, v := range values {
		h.Write(v)
	}
	return h.Sum(nil)
}

// PolicyPCR extends prev (nil for a fresh session) with TPM2_PolicyPCR over
// pcrs of bank whose expected values are values (one per PCR, ascending PCR
// order, each of the bank's digest size).
func PolicyPCR(policyHash crypto.Hash, prev []byte, bank crypto.Hash, pcrs []int, values [][]byte) ([]byte, error) {
	if len(pcrs) != len(values) {
		return nil, fmt.Errorf("tpm2policy: %d PCRs but %d values", len(pcrs), len(values))
	}
	for i, v := range values {
		if len(v) != bank.Size() {
			return nil, fmt.Errorf("tpm2policy: PCR %d value is %d bytes, a %v bank holds %d", pcrs[i], len(v), bank, bank.Size())
		}
	}
	sel, err := PCRSelection(bank, pcrs...)
	if err != nil {
		return nil, err
	}
	if _, err := AlgID(policyHash); err != nil {
		return nil, err
	}
	if prev == nil {
		prev = make([]byte, policyHash.Size())
	} else if len(prev) != policyHash.Size() {
		return nil, fmt.Errorf("tpm2policy: previous policy digest is %d bytes, %v needs %d", len(prev), policyHash, policyHash.Size())
	}
	// go-tpm's PolicyCalculator cannot start from a given digest, so the
	// update is spelled out: H(prev || TPM_CC_PolicyPCR || pcrs || pcrDigest).
	h := policyHash.New()
	h.Write(prev)
	h.Write(binary.BigEndian.AppendUint32(nil, uint32(tpm2.TPMCCPolicyPCR)))
	h.Write(tpm2.Marshal(sel))
	h.Write(PCRDigest(policyHash, values...))
	return h.Sum(nil), nil
}

// PolicyAuthorize returns the digest after TPM2_PolicyAuthorize for the
// signing key named keyName with policy reference ref. The command resets
// the session digest first, so it does not depend on earlier commands.
func PolicyAuthorize(policyHash crypto.Hash, keyName, ref []byte) ([]byte, error) {
	c, err := calc(policyHash)
	if err != nil {
		return nil, err
	}
	cmd := tpm2.PolicyAuthorize{PolicyRef: tpm2.TPM2BDigest{Buffer: ref}, KeySign: tpm2.TPM2BName{Buffer: keyName}}
	if err := cmd.Update(c); err != nil {
		return nil, err
	}
	return c.Hash().Digest, nil
}

// PolicyOR returns the digest after TPM2_PolicyOR over 2 to 8 branch
// digests (the command, too, resets the session digest first).
func PolicyOR(policyHash crypto.Hash, branches ...[]byte) ([]byte, error) {
	if len(branches) < 2 || len(branches) > 8 {
		return nil, fmt.Errorf("%w: PolicyOR over %d branches (2 to 8)", ErrUnsupported, len(branches))
	}
	c, err := calc(policyHash)
	if err != nil {
		return nil, err
	}
	var l tpm2.TPMLDigest
	for _, b := range branches {
		if len(b) != policyHash.Size() {
			return nil, fmt.Errorf("tpm2policy: PolicyOR branch is %d bytes, %v needs %d", len(b), policyHash, policyHash.Size())
		}
		l.Digests = append(l.Digests, tpm2.TPM2BDigest{Buffer: b})
	}
	if err := (tpm2.PolicyOr{PHashList: l}).Update(c); err != nil {
		return nil, err
	}
	return c.Hash().Digest, nil
}

// AHash is the digest a policy signer signs for TPM2_PolicyAuthorize and
// TPM2_VerifySignature checks: H(approvedPolicy || policyRef). With the
// empty reference systemd uses, it is SHA-256(pol).
func AHash(h crypto.Hash, approvedPolicy, ref []byte) []byte {
	d := h.New()
	d.Write(approvedPolicy)
	d.Write(ref)
	return d.Sum(nil)
}

// ExternalPublic returns the TPMT_PUBLIC systemd builds for an external
// policy-signing key before TPM2_LoadExternal (tpm2_tpm2b_public_from_
// openssl_pkey): nameAlg SHA-256, attributes decrypt|sign|userWithAuth,
// null scheme and symmetric, exponent 0 for 65537.
func ExternalPublic(pub crypto.PublicKey) (*tpm2.TPMTPublic, error) {
	attrs := tpm2.TPMAObject{Decrypt: true, SignEncrypt: true, UserWithAuth: true}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		exp := uint32(k.E)
		if k.E == 65537 {
			exp = 0
		}
		return &tpm2.TPMTPublic{
			Type: tpm2.TPMAlgRSA, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
				KeyBits:   tpm2.TPMKeyBits(k.N.BitLen()),
				Exponent:  exp,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()}),
		}, nil
	case *ecdsa.PublicKey:
		var curve tpm2.TPMECCCurve
		switch k.Curve {
		case elliptic.P256():
			curve = tpm2.TPMECCNistP256
		case elliptic.P384():
			curve = tpm2.TPMECCNistP384
		case elliptic.P521():
			curve = tpm2.TPMECCNistP521
		default:
			return nil, fmt.Errorf("%w: curve %s", ErrUnsupported, k.Curve.Params().Name)
		}
		size := (k.Curve.Params().BitSize + 7) / 8
		return &tpm2.TPMTPublic{
			Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
				CurveID:   curve,
				KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: k.X.FillBytes(make([]byte, size))},
				Y: tpm2.TPM2BECCParameter{Buffer: k.Y.FillBytes(make([]byte, size))},
			}),
		}, nil
	}
	return nil, fmt.Errorf("%w: key type %T", ErrUnsupported, pub)
}

// KeyName returns the TPM Name of pub loaded as ExternalPublic: nameAlg
// (0x000B) followed by SHA-256 of the marshalled TPMT_PUBLIC. This is the
// keySign argument of TPM2_PolicyAuthorize.
func KeyName(pub crypto.PublicKey) ([]byte, error) {
	p, err := ExternalPublic(pub)
	if err != nil {
		return nil, err
	}
	n, err := tpm2.ObjectName(p)
	if err != nil {
		return nil, err
	}
	return n.Buffer, nil
}
