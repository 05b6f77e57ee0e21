// Package swtpmtest starts a software TPM (swtpm) for tests: on a unix
// socket for go-tpm, or on loopback TCP for tools that speak the TCTI swtpm
// protocol (systemd-measure --tpm2-device=swtpm:...). Each TPM is stopped by
// its process ID when the test ends.
package swtpmtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"

	"signet.dev/internal/testenv"
)

// TPM is a running swtpm.
type TPM struct {
	Socket string // unix socket path (Unix mode)
	Port   int    // server port (TCP mode); the control port is Port+1
}

// Device is the --tpm2-device= value for systemd tools (TCP mode).
func (t *TPM) Device() string { return fmt.Sprintf("swtpm:host=127.0.0.1,port=%d", t.Port) }

// Open connects go-tpm to a Unix-mode TPM.
func (t *TPM) Open(tb testing.TB) transport.TPMCloser {
	tb.Helper()
	tp, err := linuxudstpm.Open(t.Socket)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { tp.Close() })
	return tp
}

func start(tb testing.TB, server, ctrl string) {
	tb.Helper()
	bin := testenv.Tool(tb, "swtpm")
	state := tb.TempDir()
	cmd := exec.Command(bin, "socket", "--tpm2", "--server", server, "--ctrl", ctrl,
		"--tpmstate", "dir="+state, "--flags", "not-need-init,startup-clear")
	// swtpm logs every client disconnect; tests report what matters.
	cmd.Stdout, cmd.Stderr = nil, nil
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	pid := cmd.Process.Pid
	tb.Cleanup(func() {
		if p, err := os.FindProcess(pid); err == nil {
			p.Kill()
		}
		cmd.Wait()
	})
}

// Unix starts a TPM listening on a unix socket.
func Unix(tb testing.TB) *TPM {
	tb.Helper()
	dir := tb.TempDir()
	sock := filepath.Join(dir, "tpm.sock")
	start(tb, "type=unixio,path="+sock, "type=unixio,path="+filepath.Join(dir, "ctrl.sock"))
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return &TPM{Socket: sock}
		}
		time.Sleep(10 * time.Millisecond)
	}
	tb.Fatal("swtpm did not open its socket")
	return nil
}

// TCP starts a TPM on two free loopback ports.
func TCP(tb testing.TB) *TPM {
	tb.Helper()
	for attempt := 0; attempt < 20; attempt++ {
		port := freePortPair(tb)
		start(tb, "type=tcp,port="+strconv.Itoa(port)+",bindaddr=127.0.0.1", "type=tcp,port="+strconv.Itoa(port+1)+",bindaddr=127.0.0.1")
		for i := 0; i < 200; i++ {
			if c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port)); err == nil {
				c.Close()
				return &TPM{Port: port}
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	tb.Fatal("swtpm did not listen on a free port pair")
	return nil
}

// freePortPair finds P such that P and P+1 are free on loopback now.
func freePortPair(tb testing.TB) int {
	tb.Helper()
	for i := 0; i < 100; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p
		}
	}
	tb.Fatal("no free port pair")
	return 0
}
