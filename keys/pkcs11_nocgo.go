//go:build !cgo

package keys

import "crypto/x509"

func openPKCS11(ref string) (Signer, error) {
	if _, err := ParsePKCS11URI(ref); err != nil {
		return nil, err
	}
	return nil, ErrPKCS11Unavailable
}

// PKCS11Certificate reports ErrPKCS11Unavailable in a build without cgo.
func PKCS11Certificate(ref string) (*x509.Certificate, error) {
	return nil, ErrPKCS11Unavailable
}
