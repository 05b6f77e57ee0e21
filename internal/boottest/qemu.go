package boottest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Machine is one boot: OVMF's Secure Boot build with a variable store, an
// ESP and optional extra disks and TPM.
type Machine struct {
	// Name names the console log (dir/Name.log) and the QEMU pid file.
	Name string
	// Dir holds the console log, the pid files and the TPM socket.
	Dir string
	// Vars is the OVMF variable store (pflash unit 1, written by the
	// firmware: enrollment and boot entries persist across boots).
	Vars string
	// ESP is the boot disk (virtio, bootindex 1).
	ESP string
	// Disks are further raw disks (virtio, in order).
	Disks []string
	// TPMState, when set, is the swtpm state directory: a TPM 2.0 is
	// attached (tpm-tis), its swtpm started before and stopped after the
	// boot by PID.
	TPMState string
	// Timeout bounds the boot's wall-clock time (default 6 minutes: a
	// TCG boot that takes 15 s alone took 2 minutes on a machine loaded
	// 5-fold; a boot ends earlier by power-off or a Stop marker).
	Timeout time.Duration
	// Stop lists console strings that end the boot as soon as they appear
	// (a refusal, say); the boot ends anyway when the guest powers off.
	Stop []string
	// Net, when set, is the -nic argument (e.g. user networking
	// restricted to one guestfwd to a loopback server); empty means no
	// network.
	Net string
	// Accel is "tcg" or "kvm"; empty means $SIGNET_BOOT_ACCEL, else tcg.
	// OVMF's Secure Boot build needs SMM, which not every KVM offers (see
	// docs/boot-test.md).
	Accel string

	rebooted bool // Boot ran it once more after an early kernel panic
}

// kernelPanic ends every boot: a panicked guest prints nothing more.
const kernelPanic = "---[ end Kernel panic"

// earlyPanic reports a kernel panic before the kernel ran any program of
// the guest. Under TCG the Debian kernel now and then faults in
// efi_enter_virtual_mode (the firmware's runtime services mapping), which
// is the emulation's doing and says nothing of what the boot tests; a
// panic after /init started is the guest's verdict and is kept.
func earlyPanic(console string) bool {
	return strings.Contains(console, kernelPanic) && !strings.Contains(console, "Run /init as init process")
}

// Console is what a boot printed on its serial console.
type Console struct {
	Path    string        // the log file
	Text    string        // its contents
	Elapsed time.Duration // wall time from QEMU's start to its end
	// Ended says why the boot ended: "exit" (QEMU exited: power-off or
	// reboot with -no-reboot), "stop:MARKER" or "timeout".
	Ended string
}

// Has reports whether the console shows s.
func (c *Console) Has(s string) bool { return strings.Contains(c.Text, s) }

// Expect fails the test unless the console shows every one of want; the
// message carries the console's tail.
func (c *Console) Expect(t testing.TB, want ...string) {
	t.Helper()
	for _, w := range want {
		if !c.Has(w) {
			t.Fatalf("console (%s, %s after %v) lacks %q:\n%s", c.Path, c.Ended, c.Elapsed.Round(time.Second), w, c.Tail(40))
		}
	}
}

// Refuse fails the test if the console shows any of bad.
func (c *Console) Refuse(t testing.TB, bad ...string) {
	t.Helper()
	for _, b := range bad {
		if c.Has(b) {
			t.Fatalf("console (%s) shows %q:\n%s", c.Path, b, c.Tail(40))
		}
	}
}

// Value returns the rest of the first console line that starts with
// prefix, trimmed ("" when there is none).
func (c *Console) Value(prefix string) string {
	for _, l := range strings.Split(clean(c.Text), "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Tail returns the last n lines of the console, with control characters
// (the firmware's screen escapes) dropped.
func (c *Console) Tail(n int) string {
	lines := strings.Split(strings.TrimRight(clean(c.Text), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || r >= ' ' && r != 0x7f {
			return r
		}
		return -1
	}, s)
}

// WaitFor polls the file at path until it contains one of markers, the
// process behind done ends, or deadline passes. It returns the marker seen
// ("" if none) and the file's contents.
func WaitFor(path string, markers []string, done <-chan struct{}, deadline time.Time) (string, []byte) {
	for {
		b, _ := os.ReadFile(path)
		for _, m := range markers {
			if bytes.Contains(b, []byte(m)) {
				return m, b
			}
		}
		select {
		case <-done:
			b, _ = os.ReadFile(path)
			for _, m := range markers {
				if bytes.Contains(b, []byte(m)) {
					return m, b
				}
			}
			return "", b
		default:
		}
		if time.Now().After(deadline) {
			return "", b
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// started is a process started in its own process group, so that it and
// the chroot runner's children are stopped together by its id.
type started struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func start(t testing.TB, logPath string, name string, args ...string) *started {
	t.Helper()
	cmd := InChroot(t, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	lf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	s := &started{cmd: cmd, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		lf.Close()
		close(s.done)
	}()
	return s
}

// stop ends the process group by the leader's id: SIGTERM, then SIGKILL
// after 5 s.
func (s *started) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.done
	}
}

// Boot runs m under QEMU until the guest powers off, a Stop marker shows,
// or the timeout passes, and returns the console. Only a failure to run
// QEMU fails the test here: the caller judges the console.
func Boot(t testing.TB, m Machine) *Console {
	t.Helper()
	if m.Name == "" || m.Dir == "" || m.Vars == "" || m.ESP == "" {
		t.Fatal("boottest.Machine needs Name, Dir, Vars and ESP")
	}
	timeout := m.Timeout
	if timeout == 0 {
		timeout = 6 * time.Minute
	}
	accel := m.Accel
	if accel == "" {
		accel = os.Getenv("SIGNET_BOOT_ACCEL")
	}
	switch accel {
	case "":
		accel = "tcg"
	case "tcg", "kvm":
	default:
		t.Fatalf("accelerator %q: not tcg or kvm", accel)
	}
	logPath := filepath.Join(m.Dir, m.Name+".log")
	os.Remove(logPath)
	args := []string{
		"-machine", "q35,smm=on", "-accel", accel, "-cpu", "max", "-smp", "1", "-m", "1024",
		"-global", "driver=cfi.pflash01,property=secure,value=on",
		"-global", "ICH9-LPC.disable_s3=1",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + OVMFCode,
		"-drive", "if=pflash,format=raw,unit=1,file=" + m.Vars,
		"-drive", "if=none,id=esp,format=raw,file=" + m.ESP,
		"-device", "virtio-blk-pci,drive=esp,bootindex=1",
		"-display", "none", "-monitor", "none", "-parallel", "none",
		"-serial", "file:" + logPath,
		"-no-reboot",
	}
	if m.Net == "" {
		args = append(args, "-nic", "none")
	} else {
		args = append(args, "-nic", m.Net)
	}
	for i, d := range m.Disks {
		id := fmt.Sprintf("disk%d", i)
		args = append(args, "-drive", "if=none,id="+id+",format=raw,file="+d, "-device", "virtio-blk-pci,drive="+id)
	}
	if m.TPMState != "" {
		if err := os.MkdirAll(m.TPMState, 0o700); err != nil {
			t.Fatal(err)
		}
		sock := filepath.Join(m.Dir, m.Name+".tpm.sock")
		os.Remove(sock)
		tpm := start(t, filepath.Join(m.Dir, m.Name+".swtpm.log"), "swtpm", "socket", "--tpm2",
			"--tpmstate", "dir="+m.TPMState, "--ctrl", "type=unixio,path="+sock, "--flags", "startup-clear")
		defer tpm.stop()
		if _, err := waitPath(sock, tpm.done, 20*time.Second); err != nil {
			b, _ := os.ReadFile(filepath.Join(m.Dir, m.Name+".swtpm.log"))
			t.Fatalf("swtpm: %v\n%s", err, b)
		}
		args = append(args, "-chardev", "socket,id=chrtpm,path="+sock,
			"-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0")
	}
	qlog := filepath.Join(m.Dir, m.Name+".qemu.log")
	begin := time.Now()
	q := start(t, qlog, "qemu-system-x86_64", args...)
	seen, text := WaitFor(logPath, append(slices.Clone(m.Stop), kernelPanic), q.done, begin.Add(timeout))
	exited := false
	select {
	case <-q.done:
		exited = true
	default:
	}
	q.stop()
	elapsed := time.Since(begin)
	c := &Console{Path: logPath, Text: string(text), Elapsed: elapsed}
	switch {
	case seen != "":
		c.Ended = "stop:" + seen
	case exited:
		c.Ended = "exit"
	default:
		c.Ended = "timeout"
	}
	if c.Ended == "exit" && q.cmd.ProcessState != nil && !q.cmd.ProcessState.Success() {
		b, _ := os.ReadFile(qlog)
		t.Fatalf("qemu exited with %v:\n%s", q.cmd.ProcessState, bytes.TrimSpace(b))
	}
	t.Logf("boot %s (%s): %s after %v", m.Name, accel, c.Ended, elapsed.Round(100*time.Millisecond))
	if earlyPanic(c.Text) && !m.rebooted {
		// Nothing of the guest ran, so neither the TPM nor the disks
		// changed: the same boot again is the same test.
		t.Logf("boot %s: the kernel panicked before /init (%s); booting it once more", m.Name, c.Value("RIP: "))
		os.Rename(logPath, logPath+".panic")
		m.rebooted = true
		return Boot(t, m)
	}
	return c
}

// waitPath waits until path exists, the process ends or d passes.
func waitPath(path string, done <-chan struct{}, d time.Duration) (bool, error) {
	end := time.Now().Add(d)
	for {
		if _, err := os.Stat(path); err == nil {
			return true, nil
		}
		select {
		case <-done:
			return false, fmt.Errorf("exited before making %s", path)
		default:
		}
		if time.Now().After(end) {
			return false, fmt.Errorf("no %s after %v", path, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
