package request

import (
	"bytes"
	"crypto"
	_ "crypto/sha1" // to name a SHA-1 signature (obs-sign's default)
	_ "crypto/sha512"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/cavaliergopher/cpio"

	"signet.dev/keys"
)

// OBS interop. The Open Build Service signs in bulk: a newc cpio archive
// ("*.cpio.rsasign") of files goes in; for each regular file it signs
// RSASSA-PKCS1-v1_5(SHA-256(file bytes)) and returns a newc cpio
// ("*.cpio.rsasign.sig") holding "<name>.sig" with the raw signature. That is
// keys.Sign(key, SHA-256, TBS), so a request exports as one file per item,
// named by item id (ids follow mkosi-obs's layout where one exists:
// pcrs/<uki>/<pol hex>, ukis/<uki>, roothashes/<image>.roothash).

// maxOBSEntry bounds the size of one entry read from an OBS archive; raw
// signatures are at most a few hundred bytes.
const maxOBSEntry = 64 << 10

// ExportOBS writes r as an OBS bulk-signing cpio: one regular file per item,
// its TBS named by its id. OBS hashes with SHA-256 and signs with RSA, so
// every item must use sha256. The archive is reproducible: fixed modes,
// owners and times.
func ExportOBS(w io.Writer, r *Request) error {
	if err := r.Validate(); err != nil {
		return err
	}
	for _, it := range r.Items {
		if it.Hash != "sha256" {
			return fmt.Errorf("item %q: hash %s: OBS signs SHA-256 digests only", it.ID, it.Hash)
		}
	}
	cw := cpio.NewWriter(w)
	for _, it := range r.Items {
		hdr := &cpio.Header{Name: it.ID, Mode: cpio.TypeReg | 0o644, Size: int64(len(it.TBS)), Links: 1}
		if err := cw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("cpio entry %q: %w", it.ID, err)
		}
		if _, err := cw.Write(it.TBS); err != nil {
			return fmt.Errorf("cpio entry %q: %w", it.ID, err)
		}
	}
	return cw.Close()
}

// ReadOBSSignatures reads an OBS "*.cpio.rsasign.sig" archive into a map
// from item id (the entry name without ".sig") to raw signature. Entries
// other than regular "*.sig" files (directories) are skipped; a duplicate
// name, or a regular file not named "*.sig", is an error.
func ReadOBSSignatures(rd io.Reader) (map[string][]byte, error) {
	cr := cpio.NewReader(rd)
	sigs := map[string][]byte{}
	for {
		hdr, err := cr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("OBS signature cpio: %w", err)
		}
		if !hdr.Mode.IsRegular() {
			continue
		}
		name := strings.TrimPrefix(hdr.Name, "./")
		id, ok := strings.CutSuffix(name, ".sig")
		if !ok {
			return nil, fmt.Errorf("OBS signature cpio: entry %q is not named <item>.sig", hdr.Name)
		}
		if hdr.Size <= 0 || hdr.Size > maxOBSEntry {
			return nil, fmt.Errorf("OBS signature cpio: entry %q: size %d is not a signature's", hdr.Name, hdr.Size)
		}
		if _, dup := sigs[id]; dup {
			return nil, fmt.Errorf("OBS signature cpio: entry %q appears twice", hdr.Name)
		}
		var buf bytes.Buffer
		if _, err := io.CopyN(&buf, cr, hdr.Size); err != nil {
			return nil, fmt.Errorf("OBS signature cpio: entry %q: %w", hdr.Name, err)
		}
		sigs[id] = buf.Bytes()
	}
	if len(sigs) == 0 {
		return nil, errors.New("OBS signature cpio: no signatures in it")
	}
	return sigs, nil
}

// ImportOBS turns an OBS signature archive into a response to r. OBS does
// not return certificates, so certs gives one per key name. Every
// signature is verified against its item's TBS and certificate before the
// response is returned; an archive missing an item, or with a signature for
// no item, is refused.
func ImportOBS(rd io.Reader, r *Request, certs map[string]*x509.Certificate) (*Response, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	sigs, err := ReadOBSSignatures(rd)
	if err != nil {
		return nil, err
	}
	resp := &Response{Format: FormatResponse, Request: r.DigestString(), Items: []Signature{}}
	for _, it := range r.Items {
		sig, ok := sigs[it.ID]
		if !ok {
			return nil, fmt.Errorf("OBS signature cpio: no %s.sig for item %q: %w", it.ID, it.ID, ErrMissing)
		}
		cert := certs[it.Key]
		if cert == nil {
			return nil, fmt.Errorf("item %q: no certificate given for key %q", it.ID, it.Key)
		}
		resp.Items = append(resp.Items, Signature{ID: it.ID, Signature: sig, Certificate: cert.Raw})
		delete(sigs, it.ID)
	}
	for id := range sigs {
		return nil, fmt.Errorf("OBS signature cpio: %s.sig answers no item of the request", id)
	}
	if _, err := Verify(r, resp, certs); err != nil {
		for i, it := range r.Items {
			if h := otherHash(&it, resp.Items[i].Signature, certs[it.Key]); h != "" {
				return nil, fmt.Errorf("item %q: %w: signet expected a signature over the %s digest, the signature is over the %s digest (obs-sign signs SHA-1 by default: run it with -h sha256)", it.ID, ErrBadSignature, hashLabel(it.Hash), h)
			}
		}
		return nil, err
	}
	return resp, nil
}

// otherHash names the hash a signature that does not verify over the item
// with its own hash was made with, if it is one of the others a signer
// might have used; "" if none (or it verifies).
func otherHash(it *Item, sig []byte, cert *x509.Certificate) string {
	if keys.Verify(cert.PublicKey, it.CryptoHash(), it.TBS, sig) == nil {
		return ""
	}
	for _, h := range []crypto.Hash{crypto.SHA1, crypto.SHA224, crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		if h != it.CryptoHash() && keys.Verify(cert.PublicKey, h, it.TBS, sig) == nil {
			return h.String()
		}
	}
	return ""
}

func hashLabel(name string) string {
	switch name {
	case "sha256":
		return "SHA-256"
	case "sha384":
		return "SHA-384"
	case "sha512":
		return "SHA-512"
	}
	return name
}
