//go:build cgo

package keys

import (
	"crypto"
	"crypto/x509"
	"fmt"
	"io"
	"sync"

	"github.com/ThalesGroup/crypto11"
)

// A PKCS#11 module may be initialised once per process; share contexts by
// module and token so that several keys on one token work.
var (
	p11mu   sync.Mutex
	p11ctxs = map[string]*p11ctx{}
)

type p11ctx struct {
	ctx  *crypto11.Context
	refs int
}

type pkcs11Signer struct {
	crypto11.Signer
	key  string
	once sync.Once
}

func (s *pkcs11Signer) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	sig, err := s.Signer.Sign(r, digest, opts)
	if err != nil {
		return nil, fmt.Errorf("pkcs11: sign: %w", err)
	}
	return sig, nil
}

func (s *pkcs11Signer) Close() error {
	s.once.Do(func() {
		p11mu.Lock()
		defer p11mu.Unlock()
		c := p11ctxs[s.key]
		if c == nil {
			return
		}
		c.refs--
		if c.refs == 0 {
			c.ctx.Close()
			delete(p11ctxs, s.key)
		}
	})
	return nil
}

func openContext(u *PKCS11URI) (*crypto11.Context, string, error) {
	key := u.ModulePath + "\x00" + u.Token + "\x00" + u.Serial
	p11mu.Lock()
	defer p11mu.Unlock()
	if c, ok := p11ctxs[key]; ok {
		c.refs++
		return c.ctx, key, nil
	}
	if err := u.ReadPIN(); err != nil {
		return nil, "", err
	}
	if u.PIN == "" {
		return nil, "", fmt.Errorf("pkcs11: token %q: no PIN given (pin-value=, pin-source= or %s)", u.Token, EnvPKCS11PIN)
	}
	ctx, err := crypto11.Configure(&crypto11.Config{
		Path:        u.ModulePath,
		TokenLabel:  u.Token,
		TokenSerial: u.Serial,
		Pin:         u.PIN,
	})
	if err != nil {
		return nil, "", fmt.Errorf("pkcs11: token %q via %s: %w", u.Token, u.ModulePath, err)
	}
	p11ctxs[key] = &p11ctx{ctx: ctx, refs: 1}
	return ctx, key, nil
}

func openPKCS11(ref string) (Signer, error) {
	u, err := ParsePKCS11URI(ref)
	if err != nil {
		return nil, err
	}
	ctx, key, err := openContext(u)
	if err != nil {
		return nil, err
	}
	var label []byte
	if u.Object != "" {
		label = []byte(u.Object)
	}
	var id []byte
	if len(u.ID) > 0 {
		id = u.ID
	}
	s, err := ctx.FindKeyPair(id, label)
	if err == nil && s == nil {
		err = fmt.Errorf("no key pair with label %q on token %q", u.Object, u.Token)
	}
	ps := &pkcs11Signer{Signer: s, key: key}
	if err != nil {
		ps.Close()
		return nil, fmt.Errorf("pkcs11: %w", err)
	}
	return ps, nil
}

// PKCS11Certificate returns the certificate stored on the token under the
// URI's object label or id, or nil if there is none.
func PKCS11Certificate(ref string) (*x509.Certificate, error) {
	u, err := ParsePKCS11URI(ref)
	if err != nil {
		return nil, err
	}
	ctx, key, err := openContext(u)
	if err != nil {
		return nil, err
	}
	defer (&pkcs11Signer{key: key}).Close()
	var label []byte
	if u.Object != "" {
		label = []byte(u.Object)
	}
	return ctx.FindCertificate(u.ID, label, nil)
}
