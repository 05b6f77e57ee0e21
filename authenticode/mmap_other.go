//go:build !unix

package authenticode

func windowMapper(r any, size int64) func(off, n int64) ([]byte, func(), error) { return nil }
