package image

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// ErrDefinition reports a partition definition signet cannot honour.
var ErrDefinition = errors.New("bad partition definition")

// Definition is one repart.d partition definition (a *.conf file with a
// [Partition] section). Only the keys listed in docs/verity.md are
// supported; any other key is an error, never silently ignored.
type Definition struct {
	File string // base name, e.g. "10-usr.conf"
	Path string

	Type     PartType
	Label    string // "" = the type's name (made unique)
	UUID     GUID
	HasUUID  bool
	ReadOnly *bool // nil = repart's default (read-only for verity partitions)

	// CopyBlocks is the file whose bytes fill the partition, resolved
	// against the definitions directory when relative.
	CopyBlocks string
	SizeMin    int64 // 0 = unset
	SizeMax    int64 // 0 = unset

	Verity              string // "", "data", "hash", "signature"
	VerityMatchKey      string
	VerityDataBlockSize int // 0 = 4096
	VerityHashBlockSize int // 0 = 4096

	// Minimize is Minimize= ("" for off): accepted on a Verity=hash
	// partition (mkosi writes Minimize=best there), whose size signet
	// always computes minimal from its data partition, as repart does.
	Minimize string
}

// ReadDefinitions reads every *.conf file of dir in file-name order, as
// systemd-repart does, and checks the set (verity groups complete and
// unambiguous, types consistent).
func ReadDefinitions(dir string) ([]*Definition, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("definitions: %w", err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".conf") && !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		return nil, fmt.Errorf("%w: no *.conf files in %s", ErrDefinition, dir)
	}
	var defs []*Definition
	for _, n := range names {
		p := filepath.Join(dir, n)
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		d, err := ParseDefinition(f, p)
		f.Close()
		if err != nil {
			return nil, err
		}
		if d.CopyBlocks != "" && !filepath.IsAbs(d.CopyBlocks) {
			d.CopyBlocks = filepath.Join(dir, d.CopyBlocks)
		}
		defs = append(defs, d)
	}
	if err := CheckDefinitions(defs); err != nil {
		return nil, err
	}
	return defs, nil
}

// ParseDefinition parses one definition file; path names it in errors.
func ParseDefinition(r io.Reader, path string) (*Definition, error) {
	d := &Definition{File: filepath.Base(path), Path: path}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	section := ""
	hasType := false
	bad := func(line int, format string, args ...any) error {
		return fmt.Errorf("%w: %s:%d: %s", ErrDefinition, path, line, fmt.Sprintf(format, args...))
	}
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || s[0] == '#' || s[0] == ';' {
			continue
		}
		if strings.HasSuffix(s, "\\") {
			return nil, bad(line, "line continuations are not supported")
		}
		if s[0] == '[' {
			if !strings.HasSuffix(s, "]") {
				return nil, bad(line, "malformed section header %q", s)
			}
			section = s[1 : len(s)-1]
			if section != "Partition" {
				return nil, bad(line, "section [%s] is not supported (only [Partition])", section)
			}
			continue
		}
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return nil, bad(line, "%q is not a Key=value assignment", s)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if section == "" {
			return nil, bad(line, "%s= outside a [Partition] section", k)
		}
		var err error
		switch k {
		case "Type":
			d.Type, err = LookupType(v)
			hasType = err == nil
		case "Label":
			if len([]rune(v)) > maxNameRune || strings.ContainsRune(v, '%') {
				err = fmt.Errorf("label %q is longer than 36 characters or uses specifiers (not supported)", v)
			}
			d.Label = v
		case "UUID":
			d.UUID, err = ParseGUID(v)
			d.HasUUID = err == nil
		case "ReadOnly":
			var b bool
			b, err = parseBool(v)
			d.ReadOnly = &b
		case "CopyBlocks":
			if v == "" || v == "auto" || strings.ContainsRune(v, '%') {
				err = fmt.Errorf("CopyBlocks=%s is not supported (give a file)", v)
			}
			d.CopyBlocks = v
		case "SizeMinBytes":
			d.SizeMin, err = parseSize(v)
		case "SizeMaxBytes":
			d.SizeMax, err = parseSize(v)
		case "Verity":
			switch v {
			case "off":
				d.Verity = ""
			case "data", "hash", "signature":
				d.Verity = v
			default:
				err = fmt.Errorf("Verity=%s (want off, data, hash or signature)", v)
			}
		case "Minimize":
			switch v {
			case "best", "guess":
				d.Minimize = v
			default:
				var on bool
				if on, err = parseBool(v); err != nil {
					err = fmt.Errorf("Minimize=%s (want off, best or guess)", v)
				} else if on {
					d.Minimize = "best" // repart: yes means best
				} else {
					d.Minimize = ""
				}
			}
		case "VerityMatchKey":
			if v == "" || strings.ContainsRune(v, '%') {
				err = fmt.Errorf("VerityMatchKey=%q is empty or uses specifiers", v)
			}
			d.VerityMatchKey = v
		case "VerityDataBlockSizeBytes", "VerityHashBlockSizeBytes":
			var n int64
			n, err = parseSize(v)
			if err == nil && (n < 512 || n > 65536 || n&(n-1) != 0) {
				err = fmt.Errorf("%s=%s is not a power of two between 512 and 64K", k, v)
			}
			if k == "VerityDataBlockSizeBytes" {
				d.VerityDataBlockSize = int(n)
			} else {
				d.VerityHashBlockSize = int(n)
			}
		default:
			return nil, bad(line, "key %s= is not supported by signet repart", k)
		}
		if err != nil {
			return nil, bad(line, "%s=: %v", k, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrDefinition, path, err)
	}
	if !hasType {
		return nil, fmt.Errorf("%w: %s: Type= is not set", ErrDefinition, path)
	}
	if err := d.check(); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrDefinition, path, err)
	}
	return d, nil
}

func (d *Definition) check() error {
	if d.Minimize != "" && d.Verity != "hash" {
		return fmt.Errorf("Minimize=%s is supported only on a Verity=hash partition (signet repart does not make file systems)", d.Minimize)
	}
	if d.SizeMin > 0 && d.SizeMax > 0 && d.SizeMin > d.SizeMax {
		return fmt.Errorf("SizeMinBytes=%d is larger than SizeMaxBytes=%d", d.SizeMin, d.SizeMax)
	}
	if d.ReadOnly != nil && !d.Type.knowsReadOnly() {
		return fmt.Errorf("ReadOnly= has no meaning for partition type %s", d.Type.Name)
	}
	if d.Verity != "" && d.VerityMatchKey == "" {
		return fmt.Errorf("VerityMatchKey= must be set if Verity=%s", d.Verity)
	}
	if d.Verity == "" && d.VerityMatchKey != "" {
		return fmt.Errorf("VerityMatchKey= needs Verity=")
	}
	if (d.Verity == "hash" || d.Verity == "signature") && d.CopyBlocks != "" {
		return fmt.Errorf("CopyBlocks= cannot be used with Verity=%s", d.Verity)
	}
	if d.Verity == "signature" && (d.SizeMin > 0 || d.SizeMax > 0) {
		return fmt.Errorf("SizeMinBytes=/SizeMaxBytes= cannot be used with Verity=signature")
	}
	if (d.Verity == "hash" || d.Verity == "signature") && d.Type.Verity() != d.Verity {
		return fmt.Errorf("Verity=%s needs a *-verity%s partition type, not %s", d.Verity,
			map[string]string{"hash": "", "signature": "-sig"}[d.Verity], d.Type.Name)
	}
	if d.Verity != "data" && (d.VerityDataBlockSize != 0 || d.VerityHashBlockSize != 0) && d.Verity != "hash" {
		return fmt.Errorf("VerityDataBlockSizeBytes=/VerityHashBlockSizeBytes= need Verity=data or hash")
	}
	if d.Verity == "" && d.CopyBlocks == "" && d.SizeMin == 0 {
		return fmt.Errorf("neither CopyBlocks= nor SizeMinBytes= gives the partition a size")
	}
	if d.Verity == "data" && d.CopyBlocks == "" {
		return fmt.Errorf("Verity=data needs CopyBlocks= (signet does not make file systems)")
	}
	return nil
}

// CheckDefinitions checks a set of definitions against each other: every
// verity match key has exactly one data and one hash partition and at most
// one signature partition, of the same partition class, with the same
// block sizes.
func CheckDefinitions(defs []*Definition) error {
	type group struct{ data, hash, sig *Definition }
	groups := map[string]*group{}
	labels := map[string]string{}
	uuids := map[GUID]string{}
	for _, d := range defs {
		if d.Label != "" {
			if o, ok := labels[d.Label]; ok {
				return fmt.Errorf("%w: %s and %s both set Label=%s", ErrDefinition, o, d.File, d.Label)
			}
			labels[d.Label] = d.File
		}
		if d.HasUUID {
			if o, ok := uuids[d.UUID]; ok {
				return fmt.Errorf("%w: %s and %s both set UUID=%s", ErrDefinition, o, d.File, d.UUID)
			}
			uuids[d.UUID] = d.File
		}
		if d.Verity == "" {
			continue
		}
		g := groups[d.VerityMatchKey]
		if g == nil {
			g = &group{}
			groups[d.VerityMatchKey] = g
		}
		slot := map[string]**Definition{"data": &g.data, "hash": &g.hash, "signature": &g.sig}[d.Verity]
		if *slot != nil {
			return fmt.Errorf("%w: %s and %s are both Verity=%s for VerityMatchKey=%s", ErrDefinition, (*slot).File, d.File, d.Verity, d.VerityMatchKey)
		}
		*slot = d
	}
	for key, g := range groups {
		if g.data == nil || g.hash == nil {
			var have *Definition
			for _, d := range []*Definition{g.data, g.hash, g.sig} {
				if d != nil {
					have = d
				}
			}
			return fmt.Errorf("%w: %s: VerityMatchKey=%s has no Verity=%s partition", ErrDefinition, have.File, key,
				map[bool]string{true: "data", false: "hash"}[g.data == nil])
		}
		if g.data.Type.Class != "" && g.hash.Type.Class != g.data.Type.Class+"-verity" {
			return fmt.Errorf("%w: %s (%s) does not protect %s (%s)", ErrDefinition, g.hash.File, g.hash.Type.Name, g.data.File, g.data.Type.Name)
		}
		if g.sig != nil && g.sig.Type.Class != g.hash.Type.Class+"-sig" {
			return fmt.Errorf("%w: %s (%s) does not sign %s (%s)", ErrDefinition, g.sig.File, g.sig.Type.Name, g.hash.File, g.hash.Type.Name)
		}
		for _, p := range [][2]int{{g.data.VerityDataBlockSize, g.hash.VerityDataBlockSize}, {g.data.VerityHashBlockSize, g.hash.VerityHashBlockSize}} {
			if p[0] != 0 && p[1] != 0 && p[0] != p[1] {
				return fmt.Errorf("%w: %s and %s set different verity block sizes", ErrDefinition, g.data.File, g.hash.File)
			}
		}
	}
	return nil
}

// parseSize parses systemd's size syntax: an integer with an optional
// 1024-based suffix B, K, M, G, T, P, E.
func parseSize(s string) (int64, error) {
	mult := int64(1)
	if n := len(s); n > 0 {
		if i := strings.IndexByte("BKMGTPE", s[n-1]); i >= 0 {
			mult = int64(1) << (10 * i)
			s = strings.TrimSpace(s[:n-1])
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	return v * mult, nil
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "1", "yes", "y", "true", "t", "on":
		return true, nil
	case "0", "no", "n", "false", "f", "off":
		return false, nil
	}
	return false, fmt.Errorf("%q is not a boolean", s)
}
