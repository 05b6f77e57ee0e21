package build

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"signet.dev/internal/atomicfile"
	"signet.dev/sysupdate"
)

// Where the target system keeps the .pcrlock variants of the UKIs and of
// the boot loader (docs/pcrlock.md: one component each, every release a
// variant of it).
const (
	UKIPCRLockDir        = "/var/lib/pcrlock.d/650-uki.pcrlock.d"
	BootLoaderPCRLockDir = "/var/lib/pcrlock.d/630-boot-loader.pcrlock.d"
)

func kv(key, value string) sysupdate.Setting { return sysupdate.Setting{Key: key, Value: value} }

// TransferFile is one sysupdate transfer definition a build writes.
type TransferFile struct {
	Name string // file name in sysupdate.d
	Data []byte
}

func (c *Config) checkSysupdate() error {
	s := c.Sysupdate
	if s == nil {
		return nil
	}
	if err := sysupdate.ValidVersion(s.Version); err != nil {
		return fmt.Errorf("[sysupdate] version: %w", err)
	}
	if s.URL == "" {
		return errors.New("[sysupdate]: url is required (the directory the release is published in)")
	}
	if !strings.HasPrefix(s.URL, "https://") && !strings.HasPrefix(s.URL, "http://") {
		return fmt.Errorf("[sysupdate] url %q: not an http:// or https:// URL", s.URL)
	}
	if s.InstancesMax == 0 {
		s.InstancesMax = 2
	}
	if s.InstancesMax < 2 {
		// With 1, sysupdate would remove the booted release before
		// installing the next.
		return fmt.Errorf("[sysupdate] instances-max %d: at least 2 (the booted release and the new one)", s.InstancesMax)
	}
	if s.Partitions && len(c.Verity) == 0 {
		return errors.New("[sysupdate] partitions: no [[verity]] output to make partition transfers of")
	}
	if c.Manifest == nil || c.Manifest.OpenPGPKey == "" {
		// Verify=yes needs SHA256SUMS.gpg.
		return errors.New("[sysupdate]: needs [manifest] with openpgp-key (sysupdate verifies SHA256SUMS.gpg)")
	}
	_, err := Transfers(c)
	return err
}

// Transfers returns the sysupdate transfer definitions of the release c
// describes, sorted by name, which is the order sysupdate applies them in:
// partitions first, then the .pcrlock files, the UKIs (the boot entry
// point) last. Nil without [sysupdate]. They are a function of the
// configuration alone.
func Transfers(c *Config) ([]TransferFile, error) {
	s := c.Sysupdate
	if s == nil {
		return nil, nil
	}
	var out []TransferFile
	add := func(name string, t *sysupdate.Transfer) error {
		data, err := t.Marshal()
		if err != nil {
			return fmt.Errorf("[sysupdate] %s: %w", name, err)
		}
		out = append(out, TransferFile{Name: name, Data: data})
		return nil
	}
	pattern := func(what, file string) (string, error) {
		p, err := sysupdate.Pattern(file, s.Version)
		if err != nil {
			return "", fmt.Errorf("[sysupdate]: %s: %w", what, err)
		}
		return p, nil
	}
	max := strconv.Itoa(s.InstancesMax)
	source := func(p string) []sysupdate.Setting {
		return []sysupdate.Setting{kv("Type", "url-file"), kv("Path", sysupdate.Escape(s.URL)), kv("MatchPattern", p)}
	}
	head := func(what string) *sysupdate.Transfer {
		return &sysupdate.Transfer{
			Comment:  []string{fmt.Sprintf("%s of %s (written by signet build).", what, c.Name)},
			Transfer: []sysupdate.Setting{kv("Verify", "yes")},
		}
	}
	base := func(p string) string { return strings.TrimSuffix(p, filepath.Ext(p)) }
	if s.Partitions {
		for i, v := range c.Verity {
			what := fmt.Sprintf("[[verity]] %d", i+1)
			data, err := pattern(what, v.Output)
			if err != nil {
				return nil, err
			}
			class := "usr"
			if v.Cmdline == "roothash" {
				class = "root"
			}
			label := c.Name + "_@v"
			if len(c.Verity) > 1 {
				label = c.Name + "_" + base(data)
			}
			// The release's partition files are named with the
			// partition UUID after the version (partitionFiles).
			src := strings.Replace(data, "@v", "@v_@u", 1)
			stem := strings.Trim(strings.ReplaceAll(base(data), "@v", ""), "_-.")
			for _, part := range []struct{ file, typ, label, name string }{
				{src, class, label, "10-" + c.Name + "-" + stem},
				{src + ".verity", class + "-verity", label + "_verity", "20-" + c.Name + "-" + stem + "-verity"},
			} {
				t := head("The " + part.typ + " partition")
				t.Source = source(part.file)
				t.Target = []sysupdate.Setting{kv("Type", "partition"), kv("Path", "auto"), kv("MatchPattern", sysupdate.Escape(part.label)),
					kv("MatchPartitionType", part.typ), kv("PartitionFlags", "0")}
				// The DPS read-only flag exists for root (and is
				// ignored on usr and verity partitions, which are
				// read-only anyway).
				if part.typ == "root" {
					t.Target = append(t.Target, kv("ReadOnly", "1"))
				}
				t.Target = append(t.Target, kv("InstancesMax", max))
				if err := add(part.name+".transfer", t); err != nil {
					return nil, err
				}
			}
		}
	}
	for i, b := range c.BootLoaders {
		if !b.lockPE() {
			continue
		}
		// A boot loader keeps its file name on the ESP; only its
		// .pcrlock varies by release, and only when its name says so.
		lock := PCRLockName(b.Output)
		if !strings.Contains(lock, s.Version) {
			continue
		}
		p, err := pattern(fmt.Sprintf("[[bootloader]] %d", i+1), lock)
		if err != nil {
			return nil, err
		}
		t := head("The boot loader's systemd-pcrlock component variant")
		t.Source = source(p)
		t.Target = []sysupdate.Setting{kv("Type", "regular-file"), kv("Path", BootLoaderPCRLockDir), kv("MatchPattern", p), kv("Mode", "0644"), kv("InstancesMax", max)}
		if err := add("60-"+strings.Trim(strings.ReplaceAll(base(p), "@v", ""), "_-.")+"-pcrlock.transfer", t); err != nil {
			return nil, err
		}
	}
	for i, u := range c.UKIs {
		what := fmt.Sprintf("[[uki]] %d", i+1)
		p, err := pattern(what, u.Output)
		if err != nil {
			return nil, err
		}
		stem := strings.Trim(strings.ReplaceAll(base(p), "@v", ""), "_-.")
		if u.lockUKI() {
			lp, err := pattern(what+" pcrlock", PCRLockName(u.Output))
			if err != nil {
				return nil, err
			}
			t := head("The UKI's systemd-pcrlock component variant")
			t.Source = source(lp)
			// As many variants as UKIs: the old one goes with its UKI.
			t.Target = []sysupdate.Setting{kv("Type", "regular-file"), kv("Path", UKIPCRLockDir), kv("MatchPattern", lp), kv("Mode", "0644"), kv("InstancesMax", max)}
			if err := add("70-"+stem+"-pcrlock.transfer", t); err != nil {
				return nil, err
			}
		}
		t := head("The UKI")
		t.Source = source(p)
		t.Target = []sysupdate.Setting{kv("Type", "regular-file"), kv("Path", "/EFI/Linux"), kv("PathRelativeTo", "boot"), kv("MatchPattern", p), kv("Mode", "0644"), kv("InstancesMax", max)}
		if err := add("90-"+stem+".transfer", t); err != nil {
			return nil, err
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	for i := 1; i < len(out); i++ {
		if out[i].Name == out[i-1].Name {
			return nil, fmt.Errorf("[sysupdate]: two transfers would be named %s", out[i].Name)
		}
	}
	return out, nil
}

// WriteTransfers writes the transfer definitions of c into dir (created
// when missing) and returns their names. Files of dir not written here
// are left alone.
func WriteTransfers(c *Config, dir string) ([]string, error) {
	ts, err := Transfers(c)
	if err != nil {
		return nil, err
	}
	if len(ts) == 0 {
		return nil, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var names []string
	for _, t := range ts {
		if err := atomicfile.WriteFile(filepath.Join(dir, t.Name), t.Data, 0o644); err != nil {
			return nil, err
		}
		names = append(names, t.Name)
	}
	return names, nil
}
