//go:build !unix

package authenticode

func mapFile(r any, size int64) (data []byte, unmap func()) { return nil, nil }
