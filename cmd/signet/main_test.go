package main

import (
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// The scenarios in testdata/script are user stories: a few commands a
// release engineer would type, judged by the real peers where one exists.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"signet":          func() { os.Exit(run(os.Args)) },
		"systemd-sbsign":  func() { os.Exit(run(os.Args)) },
		"systemd-measure": func() { os.Exit(run(os.Args)) },
		"sign":            func() { os.Exit(run(os.Args)) },
	})
}

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			// Scenarios read the shared vectors and make keys with openssl.
			wd, _ := os.Getwd()
			env.Setenv("REPO", wd+"/../..")
			// A free loopback port for scenarios that run the service.
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return err
			}
			defer l.Close()
			env.Setenv("PORT", fmt.Sprint(l.Addr().(*net.TCPAddr).Port))
			return nil
		},
	})
}
