package check

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"strings"
	"unicode/utf8"

	"signet.dev/request"
)

// ParseSHA256SUMS parses a manifest as systemd-sysupdate reads it: lines of
// 64 lowercase or uppercase hex digits, a space, ' ' or '*', a file name
// that is a single path component without control characters, and '\n'.
func ParseSHA256SUMS(data []byte) ([]request.ManifestEntry, error) {
	if len(data) == 0 {
		return nil, refuse("manifest is empty")
	}
	if !utf8.Valid(data) || bytes.IndexByte(data, 0) >= 0 {
		return nil, refuse("manifest is not NUL-free UTF-8")
	}
	if data[len(data)-1] != '\n' {
		return nil, refuse("manifest's last line does not end in a newline")
	}
	var out []request.ManifestEntry
	for n, line := range strings.Split(string(data[:len(data)-1]), "\n") {
		if len(line) < 67 || line[64] != ' ' || (line[65] != ' ' && line[65] != '*') {
			return nil, refuse("manifest line %d: not \"<sha256> *<name>\"", n+1)
		}
		sum, name := line[:64], line[66:]
		if _, err := hex.DecodeString(sum); err != nil {
			return nil, refuse("manifest line %d: %q is not a SHA-256 in hex", n+1, sum)
		}
		if name == "." || name == ".." || strings.ContainsAny(name, "/\\") {
			return nil, refuse("manifest line %d: %q is not a single file name", n+1, name)
		}
		for _, r := range name {
			if r < ' ' || r == 0x7f {
				return nil, refuse("manifest line %d: file name has a control character", n+1)
			}
		}
		out = append(out, request.ManifestEntry{Name: name, SHA256: strings.ToLower(sum)})
	}
	return out, nil
}

// OpenPGP v4 signature constants (RFC 4880 section 5.2).
const (
	pgpSigBinary = 0x00
	pgpHashSHA   = 8 // SHA-256; SHA-384 = 9, SHA-512 = 10
)

// SplitOpenPGPTrailer splits what an OpenPGP v4 signature over a binary
// document hashes (document ‖ version..hashed subpackets ‖ 0x04 0xFF ‖
// be32 length) into the document and the trailer. It checks the trailer's
// shape: version 4, binary-document type, a hash algorithm matching hash.
func SplitOpenPGPTrailer(tbs []byte, hash string) (doc, trailer []byte, err error) {
	if len(tbs) < 12 {
		return nil, nil, refuse("tbs is too short for an OpenPGP signature trailer")
	}
	tail := tbs[len(tbs)-6:]
	if tail[0] != 4 || tail[1] != 0xff {
		return nil, nil, refuse("tbs does not end in an OpenPGP v4 trailer (04 ff <length>)")
	}
	n := int(binary.BigEndian.Uint32(tail[2:]))
	if n < 6 || n > len(tbs)-6 {
		return nil, nil, refuse("OpenPGP trailer length %d does not fit", n)
	}
	start := len(tbs) - 6 - n
	t := tbs[start:]
	if t[0] != 4 {
		return nil, nil, refuse("OpenPGP signature version %d, not 4", t[0])
	}
	if t[1] != pgpSigBinary {
		return nil, nil, refuse("OpenPGP signature type %#x, not a binary document signature", t[1])
	}
	want := map[string]byte{"sha256": pgpHashSHA, "sha384": 9, "sha512": 10}[hash]
	if t[3] != want {
		return nil, nil, refuse("OpenPGP signature hash algorithm %d does not match the item's %s", t[3], hash)
	}
	if int(binary.BigEndian.Uint16(t[4:6])) != n-6 {
		return nil, nil, refuse("OpenPGP hashed subpacket length does not match the trailer length")
	}
	return tbs[:start], t, nil
}

// Manifest checks a manifest item: the TBS (for manifest-openpgp, the part
// before the OpenPGP trailer) parses as SHA256SUMS and lists exactly the
// context's entries, in order.
func Manifest(it *request.Item) error {
	doc := it.TBS
	if it.Kind == request.KindManifestOpenPGP {
		var err error
		if doc, _, err = SplitOpenPGPTrailer(it.TBS, it.Hash); err != nil {
			return err
		}
	}
	entries, err := ParseSHA256SUMS(doc)
	if err != nil {
		return err
	}
	want := it.Manifest.Entries
	if len(entries) != len(want) {
		return refuse("manifest lists %d files, the context %d", len(entries), len(want))
	}
	for i := range entries {
		if entries[i] != want[i] {
			return refuse("manifest line %d is %s %s, the context says %s %s", i+1, entries[i].SHA256, entries[i].Name, want[i].SHA256, want[i].Name)
		}
	}
	return nil
}
