package main

import (
	"runtime/debug"
	"testing"
)

func TestFormatVersion(t *testing.T) {
	bi := &debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Path: "signet.dev", Version: "v1.2.3"},
		Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.time", Value: "2026-01-02T03:04:05Z"}, {Key: "vcs.modified", Value: "true"}}}
	if got, want := formatVersion(bi), "signet v1.2.3 revision 0123abcd+dirty (2026-01-02T03:04:05Z) go1.26"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	bi = &debug.BuildInfo{GoVersion: "go1.26", Main: debug.Module{Path: "signet.dev"}}
	if got, want := formatVersion(bi), "signet (devel) revision unknown go1.26"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	revision = "feed"
	defer func() { revision = "" }()
	if got, want := formatVersion(bi), "signet (devel) revision feed go1.26"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
