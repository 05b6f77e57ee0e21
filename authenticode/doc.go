// Package authenticode signs and verifies PE/COFF images (UEFI
// applications, UKIs, kernels) for Secure Boot, producing what
// systemd-sbsign and sbsign produce and what sbverify, osslsigncode and the
// firmware accept.
//
// The image is read through an io.ReaderAt and never loaded whole; package
// pe reads and validates its headers:
//
//	f, err := authenticode.Parse(in, size)
//	d, err := f.Digest(crypto.SHA256)     // the Authenticode hash
//
// Signing follows signet's prepare → sign → join shape:
//
//	p, err := authenticode.Prepare(f, signingTime)      // p.SignedAttributes is the TBS
//	sig, err := keys.Sign(signer, p.Hash, p.SignedAttributes)
//	err = authenticode.Join(f, p.SignedAttributes, cert, sig, out)
//
// and authenticode.Sign does the three in one pass over the file, with the
// same bytes as a result.
//
// # Format
//
// The Authenticode digest (Digest) covers the headers without the optional
// header's CheckSum and the certificate table's DataDirectory entry, then
// the section data sorted by PointerToRawData, then the data from
// SizeOfHeaders plus the sum of the section sizes up to the certificate
// table (or the end of the file), then zero bytes up to a multiple of 8.
//
// What is signed (Prepared.SignedAttributes) is the DER SET OF four signed
// attributes, sorted: SMIMECapabilities (an empty SEQUENCE), contentType
// SpcIndirectDataContent (1.3.6.1.4.1.311.2.1.4), signingTime, and
// messageDigest, the SHA-256 of the content octets of the
// SpcIndirectDataContent that carries the image digest. The signature is
// PKCS#1 v1.5 (RSA) or ECDSA over SHA-256 of those bytes. The PKCS#7
// SignedData carries the SpcIndirectDataContent as its content, the signer
// certificate only, and one SignerInfo.
//
// The PKCS#7 is appended in a WIN_CERTIFICATE (revision 2.0, type
// PKCS_SIGNED_DATA): the file is zero-padded to 8 bytes, dwLength is 8 plus
// the DER length, the entry is padded to 8 bytes, the certificate table
// entry grows by the padded length, and the PE CheckSum is recomputed. An
// image that is already signed gets an additional WIN_CERTIFICATE.
package authenticode
