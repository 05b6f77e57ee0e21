package main

import (
	"crypto"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"signet.dev/internal/atomicfile"
)

// joiner is what an artifact package's prepare step returns: the join step
// for a raw signature made elsewhere, and the online step that signs with a
// key in this process. Both verify before they return bytes.
type joiner interface {
	Join(sig []byte) ([]byte, error)
	Sign(signer crypto.Signer) ([]byte, error)
}

// offlineFlags are the options every signing verb shares for the offline
// flow: write the bytes to be signed, or join a signature made elsewhere.
type offlineFlags struct {
	prepare   bool
	signature string
}

func (o *offlineFlags) register(fs *pflag.FlagSet, tbs string) {
	fs.BoolVar(&o.prepare, "prepare-offline-signing", false, "write the bytes to sign ("+tbs+") to --output= instead")
	fs.StringVar(&o.signature, "signature", "", "raw signature of the prepared bytes, made elsewhere (e.g. openssl dgst -sha256 -sign)")
}

// check refuses contradictory options.
func (o *offlineFlags) check() error {
	if o.prepare && o.signature != "" {
		return errors.New("--prepare-offline-signing and --signature= exclude each other")
	}
	return nil
}

// online reports whether a private key signs in this process.
func (o *offlineFlags) online() bool { return !o.prepare && o.signature == "" }

// finish runs the step the options ask for. With --prepare-offline-signing
// it writes tbs to output and returns nil; otherwise it returns the joined
// (--signature=) or signed (signer) artifact for the caller to write.
func (o *offlineFlags) finish(p joiner, tbs []byte, output string, signer crypto.Signer) ([]byte, error) {
	switch {
	case o.prepare:
		return nil, atomicfile.WriteFile(output, tbs, 0o644)
	case o.signature != "":
		raw, err := os.ReadFile(o.signature)
		if err != nil {
			return nil, err
		}
		out, err := p.Join(raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.signature, err)
		}
		return out, nil
	default:
		return p.Sign(signer)
	}
}
