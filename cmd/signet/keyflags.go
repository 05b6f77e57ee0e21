package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/pflag"

	"signet.dev/keys"
)

// keyFlags are the key options systemd's signing tools share:
// --private-key=, --private-key-source=, --certificate=,
// --certificate-source=.
type keyFlags struct {
	privateKey        string
	privateKeySource  string
	certificate       string
	certificateSource string
}

func (k *keyFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&k.privateKey, "private-key", "", "private key: PEM file, or pkcs11: URI")
	fs.StringVar(&k.privateKeySource, "private-key-source", "file", "where the private key is: file or provider:pkcs11")
	fs.StringVar(&k.certificate, "certificate", "", "X.509 certificate (PEM or DER file, or pkcs11: URI)")
	fs.StringVar(&k.certificateSource, "certificate-source", "file", "where the certificate is: file or provider:pkcs11")
}

// signer opens the private key; the caller closes it.
func (k *keyFlags) signer() (keys.Signer, error) {
	if k.privateKey == "" {
		return nil, errors.New("no --private-key= given")
	}
	return keys.Open(k.privateKeySource, k.privateKey)
}

// cert loads the certificate.
func (k *keyFlags) cert() (*x509.Certificate, error) {
	if k.certificate == "" {
		return nil, errors.New("no --certificate= given")
	}
	if strings.HasPrefix(k.certificate, "pkcs11:") {
		c, err := keys.PKCS11Certificate(k.certificate)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: %w", keys.Redact(k.certificate), err)
		}
		if c == nil {
			return nil, fmt.Errorf("certificate %s: not found on the token", keys.Redact(k.certificate))
		}
		return c, nil
	}
	switch k.certificateSource {
	case "", "file":
	default:
		return nil, fmt.Errorf("certificate source %q: not supported (use file, or a pkcs11: URI)", k.certificateSource)
	}
	return keys.LoadCertificate(k.certificate)
}

// signerAndCert opens both and checks that they belong together.
func (k *keyFlags) signerAndCert() (keys.Signer, *x509.Certificate, error) {
	cert, err := k.cert()
	if err != nil {
		return nil, nil, err
	}
	s, err := k.pairedSigner(cert)
	if err != nil {
		return nil, nil, err
	}
	return s, cert, nil
}

// pairedSigner opens the private key and checks that cert is its
// certificate, so a mismatched pair fails before anything is signed; the
// caller closes the signer.
func (k *keyFlags) pairedSigner(cert *x509.Certificate) (keys.Signer, error) {
	s, err := k.signer()
	if errors.Is(err, keys.ErrKeyPolicy) {
		return nil, err // names the key already
	} else if err != nil {
		return nil, fmt.Errorf("private key %s: %w", keys.Redact(k.privateKey), err)
	}
	if err := keys.CheckPair(s, cert); err != nil {
		s.Close()
		return nil, fmt.Errorf("private key %s and certificate %s: %w", keys.Redact(k.privateKey), keys.Redact(k.certificate), err)
	}
	return s, nil
}
