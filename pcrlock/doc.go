// Package pcrlock writes and reads systemd-pcrlock's .pcrlock component
// files, and makes the ones a build server can make offline: the PCR 4
// record of a PE image (the boot loader, a UKI) and the PCR 11 records of
// the sections a UKI's systemd-stub measures.
//
// # Format
//
// A .pcrlock file (systemd.pcrlock(5)) is a JSON object with one "records"
// array, a subset of TCG CEL-JSON. Each record names a PCR and the digest
// of one extend operation in every bank:
//
//	{"records":[{"pcr":4,"digests":[{"hashAlg":"sha1","digest":"…"},{"hashAlg":"sha256","digest":"…"},…]},…]}
//
// systemd-pcrlock writes it compact, keys in that order, banks sha1,
// sha256, sha384, sha512, and one trailing newline; Marshal writes the
// same bytes. Instead of "pcr" a record may carry "nv_index" (an NvPCR);
// "recnum", "content" and "content_type" are accepted and ignored on
// reading, as systemd does.
//
// # Components
//
// systemd-pcrlock reads components from *.pcrlock files and the files of
// *.pcrlock.d directories (each file one variant of that component) under
// /etc, /run, /var/lib, /usr/local/lib and /usr/lib pcrlock.d; the
// component id is the file name without .pcrlock and the sort order of the
// ids is the assumed boot order. A UKI belongs after the boot loader's PCR
// 4 record and before 700-action-efi-exit-boot-services and
// 750-enter-initrd: signet names it 650-uki, one variant per release (and
// per boot profile), e.g. /var/lib/pcrlock.d/650-uki.pcrlock.d/1.2.pcrlock.
//
// # Records of a UKI
//
// LockUKI writes what systemd-pcrlock 262's lock-uki writes: first the PCR
// 4 record, the Authenticode hash of the whole image (which a Secure Boot
// signature does not change), then for every measured section in the
// canonical order two PCR 11 records, the hash of the section name with
// its NUL and the hash of its contents. Unlike lock-uki it records only
// the sections the UKI's own stub release measures, skips empty sections
// as the stub does, and gives one variant per boot profile of a
// multi-profile UKI (which lock-uki refuses).
package pcrlock
