package build

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"signet.dev/internal/atomicfile"
)

const (
	stateFile   = "state.json"
	workDir     = ".work"
	stateFormat = "signet.build-state/v1"
)

// State is what a build directory remembers between rounds: enough to
// resume on another machine from the directory alone. Paths are relative
// to the build directory.
type State struct {
	Format string `json:"format"`
	// Config is the hex SHA-256 of the configuration file the build
	// started with; a changed configuration is refused on resume.
	Config string `json:"config"`
	// Time is the build's time (Unix seconds): SOURCE_DATE_EPOCH or the
	// time of the first round. Every round signs with it, so a later
	// round reproduces the earlier rounds' to-be-signed bytes.
	Time int64 `json:"time"`
	// Pending is the request the build waits for, if any.
	Pending *PendingRequest `json:"pending,omitempty"`
	// Answered lists the digests of the requests already joined, in
	// order: round N's is Answered[N-1].
	Answered []string `json:"answered"`
	// Signatures are every signature obtained so far, by item id.
	Signatures map[string]*StoredSignature `json:"signatures"`
	// Done is set when every output is written.
	Done bool `json:"done"`
	// Outputs are the files the build wrote, with how to verify them.
	Outputs []Output `json:"outputs,omitempty"`
	// Certificates are the DER certificates of the key names used, so
	// signet verify needs only the build directory.
	Certificates map[string][]byte `json:"certificates,omitempty"`
	// OpenPGPKeys are the configured OpenPGP public keys by key name.
	OpenPGPKeys map[string][]byte `json:"openpgpKeys,omitempty"`
}

// PendingRequest is a request written and not yet answered.
type PendingRequest struct {
	Round  int    `json:"round"`
	File   string `json:"file"`
	Digest string `json:"digest"`
}

// StoredSignature is one signature and what it was made over.
type StoredSignature struct {
	Key         string `json:"key"`
	TBSSHA256   string `json:"tbsSha256"`
	Signature   []byte `json:"signature"`
	Certificate []byte `json:"certificate"`
}

// Output is a file the build made.
type Output struct {
	File string `json:"file"`
	// Kind is "uki", "bootloader", "pcrlock-uki", "pcrlock-pe", "image",
	// "manifest", "manifest-openpgp", "manifest-pkcs7", "ipe", "transfer"
	// or one of the [[verity]] kinds.
	Kind string `json:"kind"`
	// Keys name the keys whose signatures the file carries, by role:
	// "secure-boot", "pcr", "verity", "signer".
	Keys map[string]string `json:"keys,omitempty"`
	// Of is the output a .pcrlock file locks.
	Of string `json:"of,omitempty"`
	// Banks and Phases are a UKI's signed PCR banks and phase paths.
	Banks  []string `json:"banks,omitempty"`
	Phases []string `json:"phases,omitempty"`
}

// ErrNoState is returned when a directory holds no build state.
var ErrNoState = errors.New("no build state (state.json)")

// LoadState reads a build directory's state.
func LoadState(dir string) (*State, error) {
	data, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", dir, ErrNoState)
	}
	if err != nil {
		return nil, err
	}
	var s State
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, stateFile), err)
	}
	if s.Format != stateFormat {
		return nil, fmt.Errorf("%s: format %q is not %s", filepath.Join(dir, stateFile), s.Format, stateFormat)
	}
	if s.Signatures == nil {
		s.Signatures = map[string]*StoredSignature{}
	}
	return &s, nil
}

func (s *State) save(dir string) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, stateFile), append(data, '\n'), 0o644)
}
