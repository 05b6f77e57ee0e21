package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"
)

func init() {
	commands = append(commands, func() *cobra.Command {
		return &cobra.Command{
			Use:   "version",
			Short: "Print signet's module version and VCS revision",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				fmt.Fprintln(cmd.OutOrStdout(), versionString())
				return nil
			},
		}
	})
}

// revision is the VCS revision when the toolchain recorded none (a build
// from a git worktree, or with -buildvcs=false):
// go build -ldflags "-X main.revision=$(git rev-parse HEAD)".
var revision string

// versionString is "signet VERSION" with, when the binary was built from a
// VCS checkout, the revision (and "+dirty" for uncommitted changes) and its
// commit time, as the Go toolchain recorded them.
func versionString() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "signet devel"
	}
	return formatVersion(bi)
}

func formatVersion(bi *debug.BuildInfo) string {
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	s := "signet " + v
	var rev, when, modified string
	for _, kv := range bi.Settings {
		switch kv.Key {
		case "vcs.revision":
			rev = kv.Value
		case "vcs.time":
			when = kv.Value
		case "vcs.modified":
			modified = kv.Value
		}
	}
	if rev == "" {
		rev = revision
	}
	if rev != "" {
		s += " revision " + rev
		if modified == "true" {
			s += "+dirty"
		}
		if when != "" {
			s += " (" + when + ")"
		}
	} else {
		s += " revision unknown"
	}
	return s + " " + bi.GoVersion
}
