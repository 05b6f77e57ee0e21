package uki_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"debug/pe"
	"encoding/asn1"
	"io"
	"math/big"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"signet.dev/internal/testkeys"
	"signet.dev/measure"
	"signet.dev/tpm2policy"
	"signet.dev/tpm2policy/swtpmtest"
	"signet.dev/uki"
)

// boot extends PCR 11 (sha256 bank) of a fresh TPM with exactly the events
// the v252 stub and systemd-pcrphase produce for the UKI at path up to
// phase: for each section the stub knows, in its order, H(name || NUL) then
// H(contents); then H(word) per phase word. The UKI is read with Go's
// debug/pe, not signet's reader.
func boot(t *testing.T, tp transport.TPM, path string, phase []string) {
	t.Helper()
	f, err := pe.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	extend := func(data []byte) {
		d := sha256.Sum256(data)
		if _, err := (tpm2.PCRExtend{PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(11), Auth: tpm2.PasswordAuth(nil)},
			Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}}}).Execute(tp); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey"} {
		s := f.Section(name)
		if s == nil {
			continue
		}
		data, err := io.ReadAll(io.NewSectionReader(s, 0, int64(s.VirtualSize)))
		if err != nil {
			t.Fatal(err)
		}
		extend([]byte(name + "\x00"))
		extend(data)
	}
	for _, w := range phase {
		extend([]byte(w))
	}
}

// seal creates a sealed secret whose policy is PolicyAuthorize(key, empty
// ref), as systemd-cryptenroll --tpm2-public-key does.
func seal(t *testing.T, tp transport.TPM, pub crypto.PublicKey, secret []byte) (tpm2.AuthHandle, tpm2.TPM2BName) {
	t.Helper()
	return sealRef(t, tp, pub, secret, nil)
}

// sealRef seals to PolicyAuthorize(key, policyRef).
func sealRef(t *testing.T, tp transport.TPM, pub crypto.PublicKey, secret, policyRef []byte) (tpm2.AuthHandle, tpm2.TPM2BName) {
	t.Helper()
	name, err := tpm2policy.KeyName(pub)
	if err != nil {
		t.Fatal(err)
	}
	policy, err := tpm2policy.PolicyAuthorize(crypto.SHA256, name, policyRef)
	if err != nil {
		t.Fatal(err)
	}
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	parent := tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)}
	obj, err := tpm2.Create{
		ParentHandle: parent,
		InSensitive:  tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: secret})}},
		InPublic: tpm2.New2B(tpm2.TPMTPublic{
			Type: tpm2.TPMAlgKeyedHash, NameAlg: tpm2.TPMAlgSHA256,
			ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, NoDA: true}, // userWithAuth clear: policy only
			AuthPolicy:       tpm2.TPM2BDigest{Buffer: policy},
			Parameters:       tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull}}),
		}),
	}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tpm2.Load{ParentHandle: parent, InPrivate: obj.OutPrivate, InPublic: obj.OutPublic}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	return tpm2.AuthHandle{Handle: l.ObjectHandle, Name: l.Name}, l.Name
}

// unseal runs systemd's unlock: verify the .pcrsig signature over
// SHA256(pol) with the loaded public key, then PolicyPCR(11) and
// PolicyAuthorize(pol) with the ticket, then Unseal.
func unseal(tp transport.TPM, obj tpm2.AuthHandle, pub crypto.PublicKey, pol, sig []byte) ([]byte, error) {
	return unsealRef(tp, obj, pub, pol, sig, nil)
}

// unsealRef is unseal with a policy reference: the ticket is for
// H(pol ‖ policyRef) and PolicyAuthorize names policyRef.
func unsealRef(tp transport.TPM, obj tpm2.AuthHandle, pub crypto.PublicKey, pol, sig, policyRef []byte) ([]byte, error) {
	ext, err := tpm2policy.ExternalPublic(pub)
	if err != nil {
		return nil, err
	}
	le, err := tpm2.LoadExternal{InPublic: tpm2.New2B(*ext), Hierarchy: tpm2.TPMRHOwner}.Execute(tp)
	if err != nil {
		return nil, err
	}
	defer tpm2.FlushContext{FlushHandle: le.ObjectHandle}.Execute(tp)
	var ts tpm2.TPMTSignature
	switch pub.(type) {
	case *rsa.PublicKey:
		ts = tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgRSASSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA,
			&tpm2.TPMSSignatureRSA{Hash: tpm2.TPMAlgSHA256, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: sig}})}
	case *ecdsa.PublicKey:
		var rs struct{ R, S *big.Int }
		if _, err := asn1.Unmarshal(sig, &rs); err != nil {
			return nil, err
		}
		ts = tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA,
			&tpm2.TPMSSignatureECC{Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: rs.R.Bytes()}, SignatureS: tpm2.TPM2BECCParameter{Buffer: rs.S.Bytes()}})}
	}
	vs, err := tpm2.VerifySignature{KeyHandle: le.ObjectHandle, Digest: tpm2.TPM2BDigest{Buffer: tpm2policy.AHash(crypto.SHA256, pol, policyRef)}, Signature: ts}.Execute(tp)
	if err != nil {
		return nil, err
	}
	sess, closeSess, err := tpm2.PolicySession(tp, tpm2.TPMAlgSHA256, 16)
	if err != nil {
		return nil, err
	}
	defer closeSess()
	sel, _ := tpm2policy.PCRSelection(crypto.SHA256, 11)
	if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: sel}).Execute(tp); err != nil {
		return nil, err
	}
	if _, err := (tpm2.PolicyAuthorize{PolicySession: sess.Handle(), ApprovedPolicy: tpm2.TPM2BDigest{Buffer: pol},
		PolicyRef: tpm2.TPM2BDigest{Buffer: policyRef}, KeySign: le.Name, CheckTicket: vs.Validation}).Execute(tp); err != nil {
		return nil, err
	}
	obj.Auth = sess
	r, err := tpm2.Unseal{ItemHandle: obj}.Execute(tp)
	if err != nil {
		return nil, err
	}
	return r.OutData.Buffer, nil
}

// pcrsigEntry returns the sha256 entry for phase of the UKI's .pcrsig.
func pcrsigEntry(t *testing.T, path, phase string) (pol, sig []byte) {
	t.Helper()
	f, err := pe.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := f.Section(".pcrsig")
	data, err := io.ReadAll(io.NewSectionReader(s, 0, int64(s.VirtualSize)))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := measure.ParsePCRSig(data)
	if err != nil {
		t.Fatal(err)
	}
	// Entries follow the phase order of the build: find by recomputing.
	u := openUKI(t, path)
	ins, _, err := uki.MeasuredInputs(namedOf(u), 252)
	if err != nil {
		t.Fatal(err)
	}
	res, err := measure.Calculate(ins, []string{phase}, []measure.Bank{measure.SHA256})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := measure.Pol(measure.SHA256, res.Banks[0].Phases[0].PCR)
	for _, b := range doc.Banks {
		for _, e := range b.Entries {
			if b.Bank == "sha256" && bytes.Equal(e.Pol, want) {
				return e.Pol, e.Sig
			}
		}
	}
	t.Fatalf("%s: no sha256 entry for phase %q", path, phase)
	return nil, nil
}

// A real TPM proves the PCR signature: a secret sealed to
// PolicyAuthorize(our key) unseals after booting a signet-built UKI with
// that UKI's .pcrsig entry, and not after booting one with another kernel
// or command line.
func TestTPMUnsealsWithPCRSig(t *testing.T) {
	for _, kind := range []testkeys.Kind{testkeys.RSA2048, testkeys.P256} {
		t.Run(string(kind), func(t *testing.T) {
			k := testkeys.Generate(t, kind)
			dir := t.TempDir()
			good := buildUKI(t, dir, "good.efi", k, []byte("kernel A"), "quiet root=/dev/a")
			otherCmdline := buildUKI(t, dir, "cmdline.efi", k, []byte("kernel A"), "quiet root=/dev/b init=/bin/sh")
			otherKernel := buildUKI(t, dir, "kernel.efi", k, []byte("kernel B"), "quiet root=/dev/a")
			secret := []byte("disk key")
			pol, sig := pcrsigEntry(t, good, "enter-initrd")

			for _, c := range []struct {
				booted string
				ok     bool
			}{{good, true}, {otherCmdline, false}, {otherKernel, false}} {
				tp := swtpmtest.Unix(t).Open(t)
				obj, _ := seal(t, tp, k.Signer.Public(), secret)
				boot(t, tp, c.booted, []string{"enter-initrd"})
				got, err := unseal(tp, obj, k.Signer.Public(), pol, sig)
				if c.ok && (err != nil || !bytes.Equal(got, secret)) {
					t.Fatalf("booted %s: unseal failed: %v", filepath.Base(c.booted), err)
				}
				if !c.ok && err == nil {
					t.Fatalf("booted %s: the good UKI's .pcrsig unsealed the secret", filepath.Base(c.booted))
				}
			}
			// The phase is part of the policy: after leave-initrd the
			// enter-initrd entry no longer unseals.
			tp := swtpmtest.Unix(t).Open(t)
			obj, _ := seal(t, tp, k.Signer.Public(), secret)
			boot(t, tp, good, []string{"enter-initrd", "leave-initrd"})
			if _, err := unseal(tp, obj, k.Signer.Public(), pol, sig); err == nil {
				t.Fatal("enter-initrd policy unsealed after leave-initrd")
			}
			pol2, sig2 := pcrsigEntry(t, good, "enter-initrd:leave-initrd")
			if got, err := unseal(tp, obj, k.Signer.Public(), pol2, sig2); err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("leave-initrd entry: %v", err)
			}
		})
	}
}

// A signature bound to a policy reference (systemd 262 --policyref=, the
// "initrd" policies of --sign-initrd-pcrs) works with a TPM: a secret
// sealed to PolicyAuthorize(key, SHA256("initrd")), as systemd's NvPCR
// setup seals, unseals with signet's ref-bound signature, and neither a
// signature without the reference nor one for another reference does.
func TestTPMPolicyRef(t *testing.T) {
	for _, kind := range []testkeys.Kind{testkeys.RSA2048, testkeys.P256} {
		t.Run(string(kind), func(t *testing.T) {
			k := testkeys.Generate(t, kind)
			dir := t.TempDir()
			good := buildUKI(t, dir, "good.efi", k, []byte("kernel A"), "quiet")
			pol, plainSig := pcrsigEntry(t, good, "enter-initrd")
			sigFor := func(ref string) []byte {
				doc, err := measure.Sign([]measure.Entry{{Bank: measure.SHA256, Phase: "enter-initrd", Pol: pol, Ref: ref}}, k.Signer)
				if err != nil {
					t.Fatal(err)
				}
				e := doc.Banks[0].Entries[0]
				if e.Ref != ref {
					t.Fatalf("signed entry has ref %q, want %q", e.Ref, ref)
				}
				return e.Sig
			}
			ref := sha256.Sum256([]byte("initrd"))
			secret := []byte("nvpcr anchor")
			for _, c := range []struct {
				name string
				sig  []byte
				ok   bool
			}{{"ref initrd", sigFor("initrd"), true}, {"no ref", plainSig, false}, {"ref other", sigFor("other"), false}} {
				tp := swtpmtest.Unix(t).Open(t)
				obj, _ := sealRef(t, tp, k.Signer.Public(), secret, ref[:])
				boot(t, tp, good, []string{"enter-initrd"})
				got, err := unsealRef(tp, obj, k.Signer.Public(), pol, c.sig, ref[:])
				if c.ok && (err != nil || !bytes.Equal(got, secret)) {
					t.Fatalf("%s: unseal failed: %v", c.name, err)
				}
				if !c.ok && err == nil {
					t.Fatalf("%s: unsealed a secret bound to policy reference initrd", c.name)
				}
			}
		})
	}
}
