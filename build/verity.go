package build

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	"signet.dev/image"
	"signet.dev/internal/atomicfile"
	"signet.dev/request"
	"signet.dev/verity"
)

// seedFor parses a configured seed, or derives one from the build's name
// and the output, so that a build without seeds is still reproducible.
func (p *pass) seedFor(seed, output string) (image.GUID, error) {
	var g image.GUID
	if seed != "" {
		g, err := image.ParseGUID(seed)
		if err != nil {
			return g, fmt.Errorf("seed: %w", err)
		}
		return g, nil
	}
	sum := sha256.Sum256([]byte("signet build seed\x00" + p.c.Name + "\x00" + output))
	copy(g[:], sum[:16])
	return g, nil
}

// verity protects a file system image with dm-verity outside a disk image:
// data copy, hash tree with superblock, root hash, and its detached PKCS#7
// signature (no signed attributes, as systemd-keyutil pkcs7 and
// `openssl smime -sign -binary -noattr` make it).
func (p *pass) verity(v *VerityConfig) error {
	seed, err := p.seedFor(v.Seed, v.Output)
	if err != nil {
		return err
	}
	// Salt and superblock UUID as systemd-repart derives them from its
	// seed (HMAC-SHA256 of "verity-salt" / "verity-uuid", UUID v4 bits).
	mac := hmac.New(sha256.New, seed[:])
	mac.Write([]byte("verity-uuid"))
	var uuid [16]byte
	copy(uuid[:], mac.Sum(nil))
	uuid[6] = uuid[6]&0x0f | 0x40
	uuid[8] = uuid[8]&0x3f | 0x80
	params := verity.Params{HashAlgorithm: "sha256", DataBlockSize: 4096, HashBlockSize: 4096, Salt: image.DeriveSalt(seed), UUID: uuid}

	if err := copyFile(p.out(v.Output), p.c.Path(v.Data)); err != nil {
		return err
	}
	data, err := os.Open(p.out(v.Output))
	if err != nil {
		return err
	}
	defer data.Close()
	fi, err := data.Stat()
	if err != nil {
		return err
	}
	hash, err := atomicfile.Create(p.out(v.Output+".verity"), 0o644)
	if err != nil {
		return err
	}
	defer hash.Close()
	root, err := verity.Format(data, fi.Size(), hash.File, params)
	if err != nil {
		return fmt.Errorf("%s: %w", v.Data, err)
	}
	if err := hash.Commit(); err != nil {
		return err
	}
	tbs, h := verity.PrepareSignature(root)
	if err := atomicfile.WriteFile(p.out(v.Output+".roothash"), tbs, 0o644); err != nil {
		return err
	}
	p.rootHashes[v.Output] = []string{v.Cmdline + "=" + hex.EncodeToString(root)}
	outs := []Output{{File: v.Output, Kind: "verity-data"}, {File: v.Output + ".verity", Kind: "verity-hash"}, {File: v.Output + ".roothash", Kind: "verity-roothash"}}
	if s := p.c.Sysupdate; s != nil && s.Partitions {
		// The partition files sysupdate installs carry the partition
		// UUIDs (@u) systemd finds them by: the root hash's halves.
		for _, part := range partitionFiles(v.Output, s.Version, root) {
			if err := copyFile(p.out(part.File), p.out(part.Of)); err != nil {
				return err
			}
			outs = append(outs, part)
		}
	}
	if v.Key == "" {
		p.logf("verity %s: done (unsigned)", v.Output)
		p.outputs = append(p.outputs, outs...)
		return nil
	}
	hashName, err := request.HashName(h)
	if err != nil {
		return err
	}
	it := request.Item{ID: "roothashes/" + v.Output + ".roothash", Kind: request.KindVerityRootHash, Key: v.Key, Hash: hashName, TBS: tbs,
		Verity: &request.VerityContext{Image: v.Output, RootHash: string(tbs)}}
	sig, cert, ok, err := p.sign(it)
	if err != nil {
		return err
	}
	if !ok {
		p.blocked = true
		p.logf("verity %s: root hash signature requested", v.Output)
		return nil
	}
	pl, err := verity.JoinSignature(cert, root, sig)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(p.out(v.Output+".roothash.p7s"), pl.Signature, 0o644); err != nil {
		return err
	}
	outs = append(outs, Output{File: v.Output + ".roothash.p7s", Kind: "verity-signature", Keys: map[string]string{"signer": v.Key}})
	p.logf("verity %s: done", v.Output)
	p.outputs = append(p.outputs, outs...)
	return nil
}

// PartitionUUIDs are the partition UUIDs systemd-repart gives a verity
// data and hash partition, and systemd looks them up by: the first and
// the last 128 bits of the root hash.
func PartitionUUIDs(root []byte) (data, hash string) {
	f := func(b []byte) string {
		return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	}
	return f(root[:16]), f(root[len(root)-16:])
}

// partitionFiles are the copies of a [[verity]] output's data and hash
// tree named for sysupdate's partition transfers: the version followed by
// _<partition UUID>.
func partitionFiles(output, version string, root []byte) []Output {
	d, h := PartitionUUIDs(root)
	return []Output{
		{File: strings.Replace(output, version, version+"_"+d, 1), Kind: "partition-data", Of: output},
		{File: strings.Replace(output, version, version+"_"+h, 1) + ".verity", Kind: "partition-hash", Of: output + ".verity"},
	}
}
