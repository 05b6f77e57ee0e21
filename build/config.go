package build

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"signet.dev/keys"
	"signet.dev/manifest"
	"signet.dev/request"
)

// Config is a declarative image description (TOML). Paths are relative to
// the configuration file's directory; outputs are file names in the build
// directory.
type Config struct {
	// Name labels the build in requests.
	Name string `toml:"name"`
	// Directory is the build directory (default "build").
	Directory string `toml:"directory"`

	Keys     map[string]*KeyConfig `toml:"keys"`
	UKIs     []*UKIConfig          `toml:"uki"`
	Verity   []*VerityConfig       `toml:"verity"`
	Images   []*ImageConfig        `toml:"image"`
	Manifest *ManifestConfig       `toml:"manifest"`
	IPE      *IPEConfig            `toml:"ipe"`
	// BootLoaders are EFI boot loaders (systemd-boot) to sign for
	// Secure Boot.
	BootLoaders []*BootLoaderConfig `toml:"bootloader"`
	// Sysupdate, when set, makes the build write systemd-sysupdate
	// transfer definitions for the release (see docs/build.md).
	Sysupdate *SysupdateConfig `toml:"sysupdate"`
	// Enroll, when set, makes the Secure Boot auto-enroll set (PK, KEK
	// and db .auth files) for the ESP.
	Enroll *EnrollConfig `toml:"secure-boot-enroll"`

	dir    string   // directory of the configuration file
	digest [32]byte // SHA-256 of the configuration file
	// remote holds the certificates (chain after) of keys configured
	// without one: from the signing service's key list, or the build
	// state that recorded them (see server.go).
	remote map[string][]*x509.Certificate
}

// Offline is the key reference of a key that only signs through requests.
const Offline = "offline"

// KeyConfig names a signing key.
type KeyConfig struct {
	// Certificate is a PEM/DER file or a pkcs11: URI. An offline key may
	// leave it out: its certificate then comes from the signing service
	// (signet build --server) and is recorded in the build state.
	Certificate string `toml:"certificate"`
	// Key is a PEM private key file, a pkcs11: URI, or "offline".
	Key string `toml:"key"`
	// Source is the key's source for keys.Open ("file" or
	// "provider:pkcs11"); a pkcs11: Key selects PKCS#11 anyway.
	Source string `toml:"source"`
	// OpenPGPPublicKey is an exported OpenPGP public key of this key
	// (optional); signet verify gives it to gpg.
	OpenPGPPublicKey string `toml:"openpgp-public-key"`
	// Kinds, when set, are the request kinds this key may sign (see
	// request.Family); without it the key's roles must all be of one kind
	// family.
	Kinds []string `toml:"kinds"`
}

// UKIConfig describes one unified kernel image.
type UKIConfig struct {
	Output    string `toml:"output"`
	Stub      string `toml:"stub"`
	Linux     string `toml:"linux"`
	Initrd    string `toml:"initrd"`
	OSRelease string `toml:"os-release"`
	Cmdline   string `toml:"cmdline"`
	// VerityImage names an [[image]] or a [[verity]] (by output) whose
	// root or usr verity root hash is appended to the command line as
	// roothash= or usrhash=.
	VerityImage string `toml:"verity-image"`
	// SecureBootKey signs the UKI (Authenticode); empty leaves it unsigned.
	SecureBootKey string `toml:"secure-boot-key"`
	// PCRKey signs the PCR 11 policies into .pcrsig and is embedded as
	// .pcrpkey; empty means no PCR signing.
	PCRKey   string   `toml:"pcr-key"`
	PCRBanks []string `toml:"pcr-banks"` // default sha256
	Phases   []string `toml:"phases"`    // default systemd-measure's four
	// PCRLock writes the UKI's systemd-pcrlock component file (what
	// systemd-pcrlock lock-uki writes) as <output without .efi>.pcrlock;
	// default true when the UKI is Secure Boot signed.
	PCRLock *bool `toml:"pcrlock"`
}

// BootLoaderConfig describes an EFI boot loader (systemd-boot, or any PE
// the firmware starts) signed for Secure Boot through the same rounds as a
// UKI.
type BootLoaderConfig struct {
	Input string `toml:"input"`
	// Output defaults to the input's base name.
	Output        string `toml:"output"`
	SecureBootKey string `toml:"secure-boot-key"`
	// PCRLock writes its systemd-pcrlock lock-pe record (PCR 4) as
	// <output without .efi>.pcrlock; default true.
	PCRLock *bool `toml:"pcrlock"`
}

// SysupdateConfig describes the systemd-sysupdate transfer definitions a
// build writes into BUILD-DIR/sysupdate.d: one per UKI and one per
// .pcrlock file (and, with Partitions, per [[verity]] data and hash
// partition), with url-file sources in URL and Verify=yes.
type SysupdateConfig struct {
	// Version is this release's version (sysupdate's @v); every output a
	// transfer carries has it in its name, which the transfer's pattern
	// replaces with @v.
	Version string `toml:"version"`
	// URL is the directory the release is published in (Source Path=).
	URL string `toml:"url"`
	// InstancesMax is how many versions of each resource the target keeps
	// (default 2: the booted release and the new one).
	InstancesMax int `toml:"instances-max"`
	// Partitions adds Type=partition transfers for each [[verity]]
	// output's data and hash tree.
	Partitions bool `toml:"partitions"`
}

// TransferDir is the build directory's subdirectory holding the
// sysupdate transfer definitions.
const TransferDir = "sysupdate.d"

// PCRLockName is the .pcrlock file name of a UKI or boot loader output:
// the output without its extension, plus .pcrlock.
func PCRLockName(output string) string {
	return strings.TrimSuffix(output, filepath.Ext(output)) + ".pcrlock"
}

// lockUKI reports whether a UKI's .pcrlock is written.
func (u *UKIConfig) lockUKI() bool {
	if u.PCRLock != nil {
		return *u.PCRLock
	}
	return u.SecureBootKey != ""
}

// lockPE reports whether a boot loader's .pcrlock is written.
func (b *BootLoaderConfig) lockPE() bool { return b.PCRLock == nil || *b.PCRLock }

// VerityConfig describes a file system image protected by dm-verity
// outside a disk image: the data is copied to Output, its hash tree (with
// superblock, as `veritysetup format` writes it) to Output.verity, the root
// hash to Output.roothash (hex, no newline) and its detached PKCS#7
// signature to Output.roothash.p7s (as systemd-keyutil pkcs7 makes it).
type VerityConfig struct {
	Data   string `toml:"data"`
	Output string `toml:"output"`
	// Seed derives the salt and the superblock UUID as systemd-repart
	// does; default derived from the output name.
	Seed string `toml:"seed"`
	Key  string `toml:"key"`
	// Cmdline is the kernel parameter a UKI naming this output carries:
	// "usrhash" (default) or "roothash".
	Cmdline string `toml:"cmdline"`
}

// ImageConfig describes a disk image built from repart.d definitions.
type ImageConfig struct {
	Output      string `toml:"output"`
	Definitions string `toml:"definitions"`
	// Seed derives the image's UUIDs and verity salts (repart --seed=);
	// default derived from the output name.
	Seed string `toml:"seed"`
	// VerityKey signs the verity root hashes.
	VerityKey string `toml:"verity-key"`
}

// ManifestConfig describes the SHA256SUMS over every other output.
type ManifestConfig struct {
	Output     string `toml:"output"` // default SHA256SUMS
	OpenPGPKey string `toml:"openpgp-key"`
	PKCS7Key   string `toml:"pkcs7-key"`
}

// IPEConfig describes an IPE policy to sign (attached PKCS#7, no
// attributes).
type IPEConfig struct {
	Policy string `toml:"policy"`
	Output string `toml:"output"` // default <policy base name>.p7b
	Key    string `toml:"key"`
}

// LoadConfig reads and checks a configuration file. Unknown keys are errors.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c Config
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&c)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		var names []string
		for _, k := range und {
			names = append(names, k.String())
		}
		return nil, fmt.Errorf("%s: unknown key(s) %s", path, strings.Join(names, ", "))
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	c.dir = filepath.Dir(abs)
	c.digest = sha256.Sum256(data)
	if err := c.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

// Path resolves a configuration path against the configuration's directory.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) || strings.HasPrefix(p, "pkcs11:") {
		return p
	}
	return filepath.Join(c.dir, p)
}

// BuildDir is the build directory the configuration names.
func (c *Config) BuildDir() string {
	if c.Directory == "" {
		return c.Path("build")
	}
	return c.Path(c.Directory)
}

func (c *Config) check() error {
	if c.Name == "" {
		c.Name = "image"
	}
	outputs := map[string]bool{}
	output := func(what, name string) error {
		if name == "" {
			return fmt.Errorf("%s: no output given", what)
		}
		if err := manifest.ValidName(name); err != nil || strings.HasPrefix(name, "round-") || name == stateFile || name == workDir || name == TransferDir || name == EnrollDir {
			return fmt.Errorf("%s: output %q is not a plain file name signet may use", what, name)
		}
		if outputs[name] {
			return fmt.Errorf("%s: output %q is used twice", what, name)
		}
		outputs[name] = true
		return nil
	}
	used := map[string][]request.Kind{}
	key := func(what, name string, kinds ...request.Kind) error {
		if name == "" {
			return nil
		}
		k := c.Keys[name]
		if k == nil {
			return fmt.Errorf("%s: no [keys.%s]", what, name)
		}
		used[name] = append(used[name], kinds...)
		return nil
	}
	for name, k := range c.Keys {
		if k.Key == "" || (k.Certificate == "" && k.Key != Offline) {
			return fmt.Errorf("[keys.%s]: certificate and key are required (key = \"offline\" for offline signing; only an offline key may take its certificate from the signing service)", name)
		}
		if strings.ContainsAny(name, "=,/ ") {
			return fmt.Errorf("[keys.%s]: key names may not contain '=', ',', '/' or space", name)
		}
	}
	images := map[string]*ImageConfig{}
	for i, im := range c.Images {
		what := fmt.Sprintf("[[image]] %d", i+1)
		if err := output(what, im.Output); err != nil {
			return err
		}
		if im.Definitions == "" {
			return fmt.Errorf("%s: no definitions directory", what)
		}
		if err := key(what, im.VerityKey, request.KindVerityRootHash); err != nil {
			return err
		}
		images[im.Output] = im
	}
	for i, v := range c.Verity {
		what := fmt.Sprintf("[[verity]] %d", i+1)
		if v.Data == "" {
			return fmt.Errorf("%s: no data", what)
		}
		for _, suffix := range []string{"", ".verity", ".roothash", ".roothash.p7s"} {
			if err := output(what, v.Output+suffix); err != nil {
				return err
			}
		}
		if err := key(what, v.Key, request.KindVerityRootHash); err != nil {
			return err
		}
		switch v.Cmdline {
		case "":
			v.Cmdline = "usrhash"
		case "usrhash", "roothash":
		default:
			return fmt.Errorf("%s: cmdline %q is not usrhash or roothash", what, v.Cmdline)
		}
		images[v.Output] = nil
	}
	for i, u := range c.UKIs {
		what := fmt.Sprintf("[[uki]] %d", i+1)
		if err := output(what, u.Output); err != nil {
			return err
		}
		if u.Stub == "" || u.Linux == "" {
			return fmt.Errorf("%s: stub and linux are required", what)
		}
		if err := key(what, u.SecureBootKey, request.KindAuthenticode); err != nil {
			return err
		}
		if err := key(what, u.PCRKey, request.KindPCRPolicy); err != nil {
			return err
		}
		if _, ok := images[u.VerityImage]; u.VerityImage != "" && !ok {
			return fmt.Errorf("%s: verity-image %q is no [[image]] or [[verity]] output", what, u.VerityImage)
		}
		if u.lockUKI() {
			if err := output(what+" pcrlock", PCRLockName(u.Output)); err != nil {
				return err
			}
		}
	}
	for i, b := range c.BootLoaders {
		what := fmt.Sprintf("[[bootloader]] %d", i+1)
		if b.Input == "" || b.SecureBootKey == "" {
			return fmt.Errorf("%s: input and secure-boot-key are required", what)
		}
		if b.Output == "" {
			b.Output = filepath.Base(b.Input)
		}
		if err := output(what, b.Output); err != nil {
			return err
		}
		if err := key(what, b.SecureBootKey, request.KindAuthenticode); err != nil {
			return err
		}
		if b.lockPE() {
			if err := output(what+" pcrlock", PCRLockName(b.Output)); err != nil {
				return err
			}
		}
	}
	if c.IPE != nil {
		if c.IPE.Policy == "" || c.IPE.Key == "" {
			return errors.New("[ipe]: policy and key are required")
		}
		if c.IPE.Output == "" {
			c.IPE.Output = strings.TrimSuffix(filepath.Base(c.IPE.Policy), filepath.Ext(c.IPE.Policy)) + ".p7b"
		}
		if err := output("[ipe]", c.IPE.Output); err != nil {
			return err
		}
		if err := key("[ipe]", c.IPE.Key, request.KindIPEPolicy); err != nil {
			return err
		}
	}
	if m := c.Manifest; m != nil {
		if m.Output == "" {
			m.Output = "SHA256SUMS"
		}
		if err := output("[manifest]", m.Output); err != nil {
			return err
		}
		for _, suffix := range []string{".gpg", ".p7s"} {
			if err := output("[manifest]", m.Output+suffix); err != nil {
				return err
			}
		}
		if err := key("[manifest]", m.OpenPGPKey, request.KindManifestOpenPGP); err != nil {
			return err
		}
		if err := key("[manifest]", m.PKCS7Key, request.KindManifestPKCS7); err != nil {
			return err
		}
	}
	if err := c.checkEnroll(output, key); err != nil {
		return err
	}
	if err := c.checkSysupdate(); err != nil {
		return err
	}
	return c.checkKeyKinds(used)
}

// checkKeyKinds binds each key to the kinds its roles sign: the declared
// kinds when [keys.NAME] has kinds, else one kind family.
func (c *Config) checkKeyKinds(used map[string][]request.Kind) error {
	for _, name := range c.KeyNames() {
		k := c.Keys[name]
		if len(k.Kinds) == 0 {
			if err := request.CheckKeyKinds(used[name], nil); err != nil {
				return fmt.Errorf("[keys.%s]: %w (kinds = [...] declares them)", name, err)
			}
			continue
		}
		declared, err := request.ParseKinds(strings.Join(k.Kinds, ","))
		if err != nil {
			return fmt.Errorf("[keys.%s] kinds: %w", name, err)
		}
		for _, u := range used[name] {
			if !slices.Contains(declared, u) {
				return fmt.Errorf("[keys.%s]: its roles sign %s, which its kinds %v do not declare", name, u, k.Kinds)
			}
		}
	}
	return nil
}

// KeyKinds returns the kinds [keys.NAME] declares, or nil (then the key
// signs one kind family); LoadConfig checked them.
func (c *Config) KeyKinds(name string) []request.Kind {
	k := c.Keys[name]
	if k == nil || len(k.Kinds) == 0 {
		return nil
	}
	kinds, _ := request.ParseKinds(strings.Join(k.Kinds, ","))
	return kinds
}

// pcrKey reports whether a UKI signs its PCR policies with key name.
func (c *Config) pcrKey(name string) bool {
	for _, u := range c.UKIs {
		if u.PCRKey == name {
			return true
		}
	}
	return false
}

// KeyNames lists the configured key names, sorted.
func (c *Config) KeyNames() []string {
	var out []string
	for n := range c.Keys {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Certificate loads the certificate of a key name.
func (c *Config) Certificate(name string) (*x509.Certificate, []*x509.Certificate, error) {
	k := c.Keys[name]
	if k == nil {
		return nil, nil, fmt.Errorf("no key %q in the configuration", name)
	}
	if k.Certificate == "" {
		if certs := c.remote[name]; len(certs) > 0 {
			return certs[0], certs[1:], nil
		}
		return nil, nil, fmt.Errorf("key %s: %w", name, ErrNoCertificate)
	}
	ref := c.Path(k.Certificate)
	if strings.HasPrefix(ref, "pkcs11:") {
		cert, err := keys.PKCS11Certificate(ref)
		if err != nil {
			return nil, nil, fmt.Errorf("key %s: certificate: %w", name, err)
		}
		if cert == nil {
			return nil, nil, fmt.Errorf("key %s: certificate %s: not on the token", name, keys.Redact(ref))
		}
		return cert, nil, nil
	}
	certs, err := keys.LoadCertificates(ref)
	if err != nil {
		return nil, nil, fmt.Errorf("key %s: certificate %s: %w", name, keys.Redact(ref), err)
	}
	return certs[0], certs[1:], nil
}

// SetKeys makes the named keys online with the given references (PEM files
// or pkcs11: URIs), as `signet build --key NAME=KEY` does. It does not
// change the configuration's digest: signatures are checked against the
// configured certificates whatever key makes them.
func (c *Config) SetKeys(refs map[string]string) error {
	for name, ref := range refs {
		k := c.Keys[name]
		if k == nil {
			return fmt.Errorf("--key %s: no [keys.%s] in the configuration", name, name)
		}
		if ref == Offline {
			k.Key = Offline
			continue
		}
		abs := ref
		if !strings.HasPrefix(ref, "pkcs11:") {
			var err error
			if abs, err = filepath.Abs(ref); err != nil {
				return err
			}
		}
		k.Key, k.Source = abs, ""
	}
	return nil
}
