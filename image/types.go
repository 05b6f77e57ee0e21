package image

import (
	"fmt"
	"runtime"
	"strings"
)

// PartType is a partition type of the Discoverable Partitions Specification.
type PartType struct {
	Name string // e.g. "usr-x86-64-verity"
	UUID GUID
	// Arch is the architecture of a root/usr type ("x86-64", "arm64"), or "".
	Arch string
	// Class is the architecture-independent designation: "root",
	// "root-verity", "root-verity-sig", "usr", "usr-verity",
	// "usr-verity-sig", or the name of a generic type.
	Class string
}

// Verity reports which part of a verity set the type is: "data", "hash",
// "signature", or "" for none.
func (t PartType) Verity() string {
	switch {
	case strings.HasSuffix(t.Class, "-verity-sig"):
		return "signature"
	case strings.HasSuffix(t.Class, "-verity"):
		return "hash"
	case t.Class == "root" || t.Class == "usr":
		return "data"
	}
	return ""
}

// knowsGrowFS reports the types for which GPT flag 59 (grow file system)
// is defined; repart sets it on them unless read-only.
func (t PartType) knowsGrowFS() bool {
	switch t.Class {
	case "root", "usr", "home", "srv", "var", "tmp", "xbootldr":
		return true
	}
	return false
}

// knowsReadOnly reports the types for which GPT flag 60 (read-only) is
// defined.
func (t PartType) knowsReadOnly() bool {
	return t.knowsGrowFS() || t.Verity() == "hash" || t.Verity() == "signature"
}

var archUUIDs = map[string][6]string{
	// root, root-verity, root-verity-sig, usr, usr-verity, usr-verity-sig
	"x86-64": {"4f68bce3-e8cd-4db1-96e7-fbcaf984b709", "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5", "41092b05-9fc8-4523-994f-2def0408b176",
		"8484680c-9521-48c6-9c11-b0720656f69e", "77ff5f63-e7b6-4633-acf4-1565b864c0e6", "e7bb33fb-06cf-4e81-8273-e543b413e2e2"},
	"arm64": {"b921b045-1df0-41c3-af44-4c6f280d3fae", "df3300ce-d69f-4c92-978c-9bfb0f38d820", "6db69de6-29f4-4758-a7a5-962190f00ce3",
		"b0e01050-ee5f-4390-949a-9101b17104e9", "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e", "c23ce4ff-44bd-4b00-b2d4-b41b3419e02a"},
}

var archClasses = [6]string{"root", "root-verity", "root-verity-sig", "usr", "usr-verity", "usr-verity-sig"}

var generic = map[string]string{
	"esp":           "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
	"xbootldr":      "bc13c2ff-59e6-4262-a352-b275fd6f7172",
	"swap":          "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f",
	"home":          "933ac7e1-2eb4-4f13-b844-0e14e2aef915",
	"srv":           "3b8f8425-20e0-4f3b-907f-1a25a76f98e8",
	"var":           "4d21b016-b534-45c2-a9fb-5c16e091fd2d",
	"tmp":           "7ec6f557-3bc5-4aca-b293-16ef5df639d1",
	"user-home":     "773f91ef-66d4-49b5-bd83-d683bf40ad16",
	"linux-generic": "0fc63daf-8483-4772-8e79-3d69d8477de4",
}

// Types is the table of known types, by name.
var Types = func() map[string]PartType {
	m := map[string]PartType{}
	for arch, uu := range archUUIDs {
		for i, u := range uu {
			c := archClasses[i]
			name := strings.Replace(c, "-", "-"+arch+"-", 1)
			if !strings.Contains(c, "-") {
				name = c + "-" + arch
			}
			g, _ := ParseGUID(u)
			m[name] = PartType{Name: name, UUID: g, Arch: arch, Class: c}
		}
	}
	for n, u := range generic {
		g, _ := ParseGUID(u)
		m[n] = PartType{Name: n, UUID: g, Class: n}
	}
	return m
}()

// NativeArch is the DPS name of the architecture signet runs on.
func NativeArch() string {
	if runtime.GOARCH == "arm64" {
		return "arm64"
	}
	return "x86-64"
}

// LookupType resolves a repart Type= value: a type name, an
// architecture-independent root/usr name (meaning the native
// architecture's, as repart does), or a type UUID.
func LookupType(s string) (PartType, error) {
	if t, ok := Types[s]; ok {
		return t, nil
	}
	for i, c := range archClasses {
		if s == c {
			g, _ := ParseGUID(archUUIDs[NativeArch()][i])
			return TypeByUUID(g), nil
		}
	}
	if g, err := ParseGUID(s); err == nil {
		return TypeByUUID(g), nil
	}
	return PartType{}, fmt.Errorf("unknown partition type %q", s)
}

// TypeByUUID returns the known type with this UUID, or an unnamed type
// whose Name is the UUID.
func TypeByUUID(g GUID) PartType {
	for _, t := range Types {
		if t.UUID == g {
			return t
		}
	}
	return PartType{Name: g.String(), UUID: g}
}
