package pcrlock

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"signet.dev/measure"
)

// Banks are the banks every record carries, in systemd's order
// (tpm2_hash_algorithms[]).
var Banks = []measure.Bank{measure.SHA1, measure.SHA256, measure.SHA384, measure.SHA512}

// Digest is one bank's digest of a record.
type Digest struct {
	HashAlg string `json:"hashAlg"`
	Digest  string `json:"digest"` // lower-case hex
}

// Record is one extend operation: on PCR (0…23), or on the NvPCR at
// NVIndex when that is non-zero.
type Record struct {
	PCR     int
	NVIndex uint32
	Digests []Digest
}

// File is the contents of one .pcrlock file: one variant of a component.
type File struct {
	Records []Record
}

// ErrFormat is wrapped by every error about a malformed .pcrlock file.
var ErrFormat = errors.New("not a valid .pcrlock file")

// NewRecord returns the record extending pcr with the digests ds, given in
// the order of Banks.
func NewRecord(pcr int, ds [][]byte) Record {
	r := Record{PCR: pcr}
	for i, d := range ds {
		r.Digests = append(r.Digests, Digest{Banks[i].Name, hex.EncodeToString(d)})
	}
	return r
}

// DataRecord returns the record extending pcr with the hash of data in
// every bank.
func DataRecord(pcr int, data []byte) Record {
	ds := make([][]byte, len(Banks))
	for i, b := range Banks {
		h := b.Hash.New()
		h.Write(data)
		ds[i] = h.Sum(nil)
	}
	return NewRecord(pcr, ds)
}

// Digest returns the record's digest for the named bank, or nil.
func (r Record) Digest(bank string) []byte {
	for _, d := range r.Digests {
		if strings.EqualFold(d.HashAlg, bank) {
			b, _ := hex.DecodeString(d.Digest)
			return b
		}
	}
	return nil
}

type jsonRecord struct {
	PCR     *int     `json:"pcr,omitempty"`
	NVIndex *uint32  `json:"nv_index,omitempty"`
	Digests []Digest `json:"digests"`
}

type jsonFile struct {
	Records []jsonRecord `json:"records"`
}

// Marshal returns the file as systemd-pcrlock writes it: compact JSON and
// a newline.
func (f *File) Marshal() []byte {
	jf := jsonFile{Records: []jsonRecord{}}
	for _, r := range f.Records {
		jr := jsonRecord{Digests: r.Digests}
		if r.NVIndex != 0 {
			nv := r.NVIndex
			jr.NVIndex = &nv
		} else {
			pcr := r.PCR
			jr.PCR = &pcr
		}
		if jr.Digests == nil {
			jr.Digests = []Digest{}
		}
		jf.Records = append(jf.Records, jr)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(jf); err != nil {
		panic(err) // only strings and numbers: cannot fail
	}
	return buf.Bytes()
}

// Parse reads a .pcrlock file. Every record needs a PCR (0…23) or an NV
// index and at least one digest of a known bank with the right length;
// unknown keys are ignored as systemd ignores them.
func Parse(b []byte) (*File, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	var jf struct {
		Records *[]json.RawMessage `json:"records"`
	}
	if err := dec.Decode(&jf); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrFormat, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the JSON object", ErrFormat)
	}
	if jf.Records == nil {
		return nil, fmt.Errorf("%w: no \"records\" array", ErrFormat)
	}
	f := &File{}
	for i, raw := range *jf.Records {
		var jr jsonRecord
		if err := json.Unmarshal(raw, &jr); err != nil {
			return nil, fmt.Errorf("%w: record %d: %v", ErrFormat, i, err)
		}
		var r Record
		switch {
		case jr.PCR != nil && jr.NVIndex != nil:
			return nil, fmt.Errorf("%w: record %d has both \"pcr\" and \"nv_index\"", ErrFormat, i)
		case jr.PCR != nil:
			if *jr.PCR < 0 || *jr.PCR > 23 {
				return nil, fmt.Errorf("%w: record %d: PCR %d out of range 0…23", ErrFormat, i, *jr.PCR)
			}
			r.PCR = *jr.PCR
		case jr.NVIndex != nil && *jr.NVIndex != 0:
			r.NVIndex = *jr.NVIndex
		default:
			return nil, fmt.Errorf("%w: record %d has no \"pcr\"", ErrFormat, i)
		}
		if len(jr.Digests) == 0 {
			return nil, fmt.Errorf("%w: record %d has no digests", ErrFormat, i)
		}
		for _, d := range jr.Digests {
			bk, err := measure.ParseBank(d.HashAlg)
			if err != nil {
				return nil, fmt.Errorf("%w: record %d: %v", ErrFormat, i, err)
			}
			v, err := hex.DecodeString(d.Digest)
			if err != nil || len(v) != bk.Hash.Size() {
				return nil, fmt.Errorf("%w: record %d: %s digest is not %d bytes of hex", ErrFormat, i, bk.Name, bk.Hash.Size())
			}
			r.Digests = append(r.Digests, Digest{bk.Name, hex.EncodeToString(v)})
		}
		f.Records = append(f.Records, r)
	}
	return f, nil
}
