// Package pgtest runs a throwaway PostgreSQL cluster for tests: initdb and
// postgres from Debian's postgresql-15, run as the unprivileged user nobody
// (postgres refuses root), listening on a free loopback port with its unix
// socket in the cluster's directory, stopped by PID when the test ends.
package pgtest

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
)

// TB is what Start needs of a test: testing.TB has it, and so can a
// benchmark program.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// Cluster is a running PostgreSQL server.
type Cluster struct {
	Port int
	n    atomic.Int32
}

func binary(t TB, name string) string {
	p := filepath.Join("/usr/lib/postgresql/15/bin", name)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	t.Fatalf("PostgreSQL's %s is not installed: run scripts/install-deps (package postgresql)", name)
	return ""
}

// FreePort returns a loopback TCP port nobody listens on now.
func FreePort(t TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Start initialises and starts a cluster, stopped in t.Cleanup.
func Start(t TB) *Cluster {
	t.Helper()
	initdb, postgres := binary(t, "initdb"), binary(t, "postgres")
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	// Not t.TempDir: its parents are mode 0700, closed to nobody.
	dir, err := os.MkdirTemp("", "signet-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	cred := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	data := filepath.Join(dir, "data")
	cmd := exec.Command(initdb, "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C")
	cmd.SysProcAttr = cred
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	c := &Cluster{Port: FreePort(t)}
	logf, _ := os.Create(filepath.Join(dir, "postgres.log"))
	os.Chown(logf.Name(), uid, gid)
	srv := exec.Command(postgres, "-D", data, "-p", strconv.Itoa(c.Port), "-k", dir, "-h", "127.0.0.1",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200")
	srv.SysProcAttr = cred
	srv.Dir = dir
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		t.Fatalf("postgres: %v", err)
	}
	t.Cleanup(func() {
		srv.Process.Signal(syscall.SIGINT) // fast shutdown
		done := make(chan struct{})
		go func() { srv.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			srv.Process.Kill()
			<-done
		}
		logf.Close()
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		db, err := sql.Open("pgx", c.DSN("postgres"))
		if err == nil {
			err = db.PingContext(context.Background())
			db.Close()
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("postgres did not start: %v\n%s", err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return c
}

// DSN is the connection string of database name.
func (c *Cluster) DSN(name string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, name)
}

// NewDatabase creates an empty database and returns its DSN.
func (c *Cluster) NewDatabase(t TB) string {
	t.Helper()
	name := fmt.Sprintf("signet_%d", c.n.Add(1))
	db, err := sql.Open("pgx", c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec("CREATE DATABASE " + name); err != nil {
		t.Fatal(err)
	}
	return c.DSN(name)
}
