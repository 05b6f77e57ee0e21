package tpm2policy_test

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"signet.dev/internal/testkeys"
	"signet.dev/tpm2policy"
	"signet.dev/tpm2policy/swtpmtest"
)

// A TPM trial session computes the same digests as the offline calculator,
// and LoadExternal of the key as systemd builds it gives the same Name.
func TestAgainstSWTPM(t *testing.T) {
	tp := swtpmtest.Unix(t).Open(t)

	trial := func(t *testing.T, cmds func(h tpm2.TPMHandle)) []byte {
		t.Helper()
		s, closer, err := tpm2.PolicySession(tp, tpm2.TPMAlgSHA256, 16, tpm2.Trial())
		if err != nil {
			t.Fatal(err)
		}
		defer closer()
		cmds(s.Handle())
		d, err := tpm2.PolicyGetDigest{PolicySession: s.Handle()}.Execute(tp)
		if err != nil {
			t.Fatal(err)
		}
		return d.PolicyDigest.Buffer
	}

	for _, bank := range []crypto.Hash{crypto.SHA1, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		value := bytes.Repeat([]byte{0x5a}, bank.Size())
		want, err := tpm2policy.PolicyPCR(crypto.SHA256, nil, bank, []int{11}, [][]byte{value})
		if err != nil {
			t.Fatal(err)
		}
		sel, _ := tpm2policy.PCRSelection(bank, 11)
		got := trial(t, func(h tpm2.TPMHandle) {
			if _, err := (tpm2.PolicyPCR{PolicySession: h, PcrDigest: tpm2.TPM2BDigest{Buffer: tpm2policy.PCRDigest(crypto.SHA256, value)}, Pcrs: sel}).Execute(tp); err != nil {
				t.Fatal(err)
			}
		})
		if !bytes.Equal(got, want) {
			t.Errorf("%v bank: TPM %x, offline %x", bank, got, want)
		}
		// Chained: PolicyPCR twice starts from the first digest.
		twice, err := tpm2policy.PolicyPCR(crypto.SHA256, want, bank, []int{11}, [][]byte{value})
		if err != nil {
			t.Fatal(err)
		}
		got = trial(t, func(h tpm2.TPMHandle) {
			for range 2 {
				if _, err := (tpm2.PolicyPCR{PolicySession: h, PcrDigest: tpm2.TPM2BDigest{Buffer: tpm2policy.PCRDigest(crypto.SHA256, value)}, Pcrs: sel}).Execute(tp); err != nil {
					t.Fatal(err)
				}
			}
		})
		if !bytes.Equal(got, twice) {
			t.Errorf("%v bank chained: TPM %x, offline %x", bank, got, twice)
		}
	}

	for _, kind := range []testkeys.Kind{testkeys.RSA2048, testkeys.P256} {
		k := testkeys.Generate(t, kind)
		pub, err := tpm2policy.ExternalPublic(k.Signer.Public())
		if err != nil {
			t.Fatal(err)
		}
		le, err := tpm2.LoadExternal{InPublic: tpm2.New2B(*pub), Hierarchy: tpm2.TPMRHOwner}.Execute(tp)
		if err != nil {
			t.Fatalf("%s: LoadExternal: %v", kind, err)
		}
		tpm2.FlushContext{FlushHandle: le.ObjectHandle}.Execute(tp)
		name, err := tpm2policy.KeyName(k.Signer.Public())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(le.Name.Buffer, name) {
			t.Fatalf("%s: TPM name %x, offline %x", kind, le.Name.Buffer, name)
		}
		// PolicyAuthorize in a trial session needs no ticket.
		want, err := tpm2policy.PolicyAuthorize(crypto.SHA256, name, nil)
		if err != nil {
			t.Fatal(err)
		}
		approved := sha256.Sum256([]byte("x"))
		got := trial(t, func(h tpm2.TPMHandle) {
			if _, err := (tpm2.PolicyAuthorize{PolicySession: h, ApprovedPolicy: tpm2.TPM2BDigest{Buffer: approved[:]},
				KeySign: tpm2.TPM2BName{Buffer: name}, CheckTicket: tpm2.TPMTTKVerified{Tag: tpm2.TPMSTVerified, Hierarchy: tpm2.TPMRHNull}}).Execute(tp); err != nil {
				t.Fatal(err)
			}
		})
		if !bytes.Equal(got, want) {
			t.Errorf("%s: PolicyAuthorize TPM %x, offline %x", kind, got, want)
		}
	}

	a := sha256.Sum256([]byte("a"))
	b := sha256.Sum256([]byte("b"))
	want, err := tpm2policy.PolicyOR(crypto.SHA256, a[:], b[:])
	if err != nil {
		t.Fatal(err)
	}
	got := trial(t, func(h tpm2.TPMHandle) {
		if _, err := (tpm2.PolicyOr{PolicySession: h, PHashList: tpm2.TPMLDigest{Digests: []tpm2.TPM2BDigest{{Buffer: a[:]}, {Buffer: b[:]}}}}).Execute(tp); err != nil {
			t.Fatal(err)
		}
	})
	if !bytes.Equal(got, want) {
		t.Errorf("PolicyOR: TPM %x, offline %x", got, want)
	}
}

func TestBadInput(t *testing.T) {
	if _, err := tpm2policy.PolicyPCR(crypto.SHA256, nil, crypto.SHA256, []int{11}, [][]byte{{1, 2}}); err == nil {
		t.Error("short PCR value accepted")
	}
	if _, err := tpm2policy.PCRSelection(crypto.SHA256, 24); err == nil {
		t.Error("PCR 24 accepted")
	}
	if _, err := tpm2policy.PolicyOR(crypto.SHA256, make([]byte, 32)); err == nil {
		t.Error("PolicyOR with one branch accepted")
	}
	if _, err := tpm2policy.AlgID(crypto.MD5); err == nil {
		t.Error("MD5 accepted")
	}
}
