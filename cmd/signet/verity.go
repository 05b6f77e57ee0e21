package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"signet.dev/image"
	"signet.dev/internal/atomicfile"
	"signet.dev/verity"
)

func init() { commands = append(commands, newVerityCmd) }

func newVerityCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "verity",
		Short: "dm-verity hash trees (as veritysetup) and root hash signatures (as systemd-repart)",
	}
	c.AddCommand(newVerityFormatCmd(), newVerityVerifyCmd(), newVeritySignCmd())
	return c
}

// verityFlags are veritysetup's format options.
type verityFlags struct {
	noSuperblock  bool
	salt, uuid    string
	dataBlockSize int
	hashBlockSize int
	hash          string
}

func (v *verityFlags) register(fs *pflag.FlagSet, format bool) {
	fs.BoolVar(&v.noSuperblock, "no-superblock", false, "no superblock: the tree starts at offset 0 and the parameters must be given")
	fs.StringVar(&v.salt, "salt", "", "salt as hex, or - for none (format default: 32 random bytes)")
	fs.IntVar(&v.dataBlockSize, "data-block-size", 4096, "data block size in bytes")
	fs.IntVar(&v.hashBlockSize, "hash-block-size", 4096, "hash block size in bytes")
	fs.StringVar(&v.hash, "hash", "sha256", "hash algorithm: sha256, sha1 or sha512")
	if format {
		fs.StringVar(&v.uuid, "uuid", "", "superblock UUID (default: random)")
	}
}

func (v *verityFlags) params(format bool) (verity.Params, error) {
	p := verity.Params{HashAlgorithm: v.hash, DataBlockSize: v.dataBlockSize, HashBlockSize: v.hashBlockSize, NoSuperblock: v.noSuperblock}
	switch v.salt {
	case "-":
	case "":
		if format {
			p.Salt = make([]byte, 32)
			rand.Read(p.Salt)
		}
	default:
		s, err := hex.DecodeString(v.salt)
		if err != nil || len(s) > verity.MaxSaltSize {
			return p, fmt.Errorf("--salt=%s: not hex, or longer than %d bytes", v.salt, verity.MaxSaltSize)
		}
		p.Salt = s
	}
	if v.uuid != "" {
		g, err := image.ParseGUID(v.uuid)
		if err != nil {
			return p, fmt.Errorf("--uuid=: %v", err)
		}
		p.UUID = g
	} else if format {
		rand.Read(p.UUID[:])
		p.UUID[6] = p.UUID[6]&0x0f | 0x40
		p.UUID[8] = p.UUID[8]&0x3f | 0x80
	}
	return p, nil
}

// openSized opens a file or block device and returns its size.
func openSized(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	return f, n, nil
}

// progress returns a progress printer for stderr when it is a terminal,
// and nil (quiet) in pipes and CI.
func progress(what string) (func(done, total int64), func()) {
	if !term.IsTerminal(int(os.Stderr.Fd())) {
		return nil, func() {}
	}
	var mu sync.Mutex
	var last time.Time
	shown := false
	return func(done, total int64) {
			mu.Lock()
			defer mu.Unlock()
			if time.Since(last) < 200*time.Millisecond && done < total {
				return
			}
			last, shown = time.Now(), true
			fmt.Fprintf(os.Stderr, "\r%s: %3d%% (%d/%d MiB)", what, done*100/max(total, 1), done>>20, total>>20)
		}, func() {
			if shown {
				fmt.Fprintln(os.Stderr)
			}
		}
}

func uuidString(u [16]byte) string { return image.GUID(u).String() }

func newVerityFormatCmd() *cobra.Command {
	var v verityFlags
	var asJSON bool
	c := &cobra.Command{
		Use:   "format DATA HASH",
		Short: "Compute the hash tree of DATA, write it to HASH, print the root hash (as veritysetup format)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := v.params(true)
			if err != nil {
				return err
			}
			data, size, err := openSized(args[0])
			if err != nil {
				return err
			}
			defer data.Close()
			l, err := verity.ComputeLayout(size, p)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			var done func()
			p.Progress, done = progress("verity format " + args[0])
			root, err := formatTo(args[1], data, size, l, p)
			done()
			if err != nil {
				return err
			}
			salt := hex.EncodeToString(p.Salt)
			if salt == "" {
				salt = "-"
			}
			uuid := ""
			if !p.NoSuperblock {
				uuid = uuidString(p.UUID)
			}
			w := cmd.OutOrStdout()
			if asJSON {
				b, _ := json.Marshal(map[string]any{
					"rootHash": hex.EncodeToString(root), "uuid": uuid, "hashType": 1,
					"dataBlocks": l.DataBlocks, "dataBlockSize": p.DataBlockSize, "hashBlocks": l.HashBlocks,
					"hashBlockSize": p.HashBlockSize, "hashAlgorithm": p.HashAlgorithm, "salt": salt,
					"hashDeviceSize": l.HashDeviceSize, "superblock": !p.NoSuperblock,
				})
				fmt.Fprintf(w, "%s\n", b)
				return nil
			}
			fmt.Fprintf(w, "VERITY header information for %s\n", args[1])
			fmt.Fprintf(w, "UUID:            \t%s\n", uuid)
			fmt.Fprintf(w, "Hash type:       \t1\n")
			fmt.Fprintf(w, "Data blocks:     \t%d\n", l.DataBlocks)
			fmt.Fprintf(w, "Data block size: \t%d\n", p.DataBlockSize)
			fmt.Fprintf(w, "Hash blocks:     \t%d\n", l.HashBlocks)
			fmt.Fprintf(w, "Hash block size: \t%d\n", p.HashBlockSize)
			fmt.Fprintf(w, "Hash algorithm:  \t%s\n", p.HashAlgorithm)
			fmt.Fprintf(w, "Salt:            \t%s\n", salt)
			fmt.Fprintf(w, "Root hash:      \t%x\n", root)
			fmt.Fprintf(w, "Hash device size: \t%d [bytes]\n", l.HashDeviceSize)
			return nil
		},
	}
	v.register(c.Flags(), true)
	c.Flags().BoolVar(&asJSON, "json", false, "print the facts as one JSON object")
	return c
}

// formatTo writes the tree to a block device in place, or to a file
// atomically.
func formatTo(path string, data *os.File, size int64, l *verity.Layout, p verity.Params) ([]byte, error) {
	if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeDevice != 0 {
		dev, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		defer dev.Close()
		if n, err := dev.Seek(0, io.SeekEnd); err != nil || n < l.HashDeviceSize {
			return nil, fmt.Errorf("%s: %w: the tree needs %d bytes", path, verity.ErrHashTooSmall, l.HashDeviceSize)
		}
		root, err := verity.Format(data, size, dev, p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", data.Name(), err)
		}
		return root, dev.Sync()
	}
	out, err := atomicfile.Create(path, 0o600)
	if err != nil {
		return nil, err
	}
	defer out.Close()
	root, err := verity.Format(data, size, out.File, p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", data.Name(), err)
	}
	if err := out.Truncate(l.HashDeviceSize); err != nil {
		return nil, err
	}
	return root, out.Commit()
}

func newVerityVerifyCmd() *cobra.Command {
	var v verityFlags
	c := &cobra.Command{
		Use:   "verify DATA HASH ROOTHASH",
		Short: "Check DATA and its hash tree in HASH against ROOTHASH (as veritysetup verify)",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			root, err := hex.DecodeString(args[2])
			if err != nil || len(root) == 0 {
				return fmt.Errorf("root hash %q: not hex", args[2])
			}
			data, size, err := openSized(args[0])
			if err != nil {
				return err
			}
			defer data.Close()
			hash, err := os.Open(args[1])
			if err != nil {
				return err
			}
			defer hash.Close()
			var p verity.Params
			if v.noSuperblock {
				if p, err = v.params(false); err != nil {
					return err
				}
			} else {
				for _, f := range []string{"salt", "hash", "data-block-size", "hash-block-size"} {
					if cmd.Flags().Changed(f) {
						return fmt.Errorf("--%s= needs --no-superblock (the superblock in %s has the parameters)", f, args[1])
					}
				}
				sb, err := verity.ReadSuperblock(hash)
				if err != nil {
					return fmt.Errorf("%s: %w", args[1], err)
				}
				p = sb.Params()
				if size < sb.DataSize() {
					return fmt.Errorf("%s: %d bytes, the superblock says %d", args[0], size, sb.DataSize())
				}
				size = sb.DataSize()
			}
			var done func()
			p.Progress, done = progress("verity verify " + args[0])
			err = verity.Verify(data, size, hash, root, p)
			done()
			if err != nil {
				err = fmt.Errorf("%s, %s: %w", args[0], args[1], err)
				// veritysetup's codes: 2 for a data or hash block mismatch.
				if errors.Is(err, verity.ErrCorrupt) {
					return &exitError{code: 2, err: err}
				}
				return err
			}
			return nil
		},
	}
	v.register(c.Flags(), false)
	return c
}

func newVeritySignCmd() *cobra.Command {
	var key keyFlags
	var rootHex, output, sigPath string
	var prepare, pkcs7Out bool
	c := &cobra.Command{
		Use:   "sign --root-hash=HEX --certificate=CERT (--private-key=KEY | --signature=RAW | --prepare-offline-signing) --output=FILE",
		Short: "Write the verity signature partition payload for a root hash (as systemd-repart)",
		Long: `Writes the verity-sig partition's JSON (rootHash, certificateFingerprint,
signature: a detached PKCS#7 without signed attributes over the lowercase hex
root hash), exactly as systemd-repart does, without NUL padding.

Offline: --prepare-offline-signing writes the bytes to sign (the hex root hash;
sign them with SHA-256, e.g. openssl dgst -sha256 -sign), and --signature=RAW
joins that raw signature, after checking it against the certificate.
--pkcs7 writes the bare DER PKCS#7 instead of the JSON.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root, err := image.ParseRootHash(rootHex)
			if err != nil {
				return fmt.Errorf("--root-hash=: %v", err)
			}
			if output == "" {
				return errors.New("no --output= given")
			}
			if prepare {
				if key.privateKey != "" || sigPath != "" {
					return errors.New("--prepare-offline-signing cannot be combined with --private-key= or --signature=")
				}
				tbs, _ := verity.PrepareSignature(root)
				return atomicfile.WriteFile(output, tbs, 0o644)
			}
			var payload *verity.SignaturePayload
			switch {
			case sigPath != "" && key.privateKey != "":
				return errors.New("--signature= and --private-key= exclude each other")
			case sigPath != "":
				cert, err := key.cert()
				if err != nil {
					return err
				}
				raw, err := os.ReadFile(sigPath)
				if err != nil {
					return err
				}
				if payload, err = verity.JoinSignature(cert, root, raw); err != nil {
					return fmt.Errorf("%s: %w", sigPath, err)
				}
			case key.privateKey != "":
				s, cert, err := key.signerAndCert()
				if err != nil {
					return err
				}
				defer s.Close()
				if payload, err = verity.Sign(s, cert, root); err != nil {
					return err
				}
			default:
				return errors.New("one of --private-key=, --signature= or --prepare-offline-signing is required")
			}
			out := payload.Marshal()
			if pkcs7Out {
				out = payload.Signature
			}
			return atomicfile.WriteFile(output, out, 0o644)
		},
	}
	fs := c.Flags()
	key.register(fs)
	fs.StringVar(&rootHex, "root-hash", "", "root hash (hex) to sign")
	fs.StringVar(&output, "output", "", "file to write (atomically)")
	fs.StringVar(&sigPath, "signature", "", "raw signature over the hex root hash (SHA-256) made elsewhere")
	fs.BoolVar(&prepare, "prepare-offline-signing", false, "write the bytes to sign instead of signing")
	fs.BoolVar(&pkcs7Out, "pkcs7", false, "write the DER PKCS#7 alone instead of the JSON payload")
	return c
}
