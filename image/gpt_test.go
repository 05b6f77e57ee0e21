package image

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"signet.dev/internal/testenv"
)

// TestReadSfdisk: signet reads a table sfdisk wrote (types, UUIDs, names,
// attributes, extents).
func TestReadSfdisk(t *testing.T) {
	sf := testenv.Tool(t, "sfdisk")
	path := filepath.Join(t.TempDir(), "disk.raw")
	f, _ := os.Create(path)
	f.Truncate(8 << 20)
	f.Close()
	cmd := exec.Command(sf, "--quiet", path)
	cmd.Stdin = strings.NewReader(`label: gpt
label-id: D47BFE9E-0823-446A-A03C-FF8546417E61
start=2048, size=4096, type=8484680C-9521-48C6-9C11-B0720656F69E, uuid=A35B29A5-7B77-CDFB-5C08-07FB99724E43, name="usr-x86-64", attrs="GUID:60"
start=8192, size=1024, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="ESP ünïcode"
`)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v: %s", err, out)
	}
	_, tab := readImage(t, path)
	if tab.DiskGUID.String() != "d47bfe9e-0823-446a-a03c-ff8546417e61" {
		t.Errorf("disk GUID %s", tab.DiskGUID)
	}
	e := tab.Entries[0]
	if e.Type != Types["usr-x86-64"].UUID || e.UUID.String() != "a35b29a5-7b77-cdfb-5c08-07fb99724e43" ||
		e.Name != "usr-x86-64" || e.Attributes != AttrReadOnly || e.Offset() != 1<<20 || e.Size() != 2<<20 {
		t.Errorf("entry 1: %+v", e)
	}
	if e := tab.Entries[1]; e.Type != Types["esp"].UUID || e.Name != "ESP ünïcode" || e.FirstLBA != 8192 || e.LastLBA != 9215 {
		t.Errorf("entry 2: %+v", e)
	}
}

// TestWriteReadBack: a written table reads back; corruptions are named.
func TestWriteReadBack(t *testing.T) {
	size := int64(4 << 20)
	tab, err := NewTable(DeriveUUID(GUID{1}, "disk-uuid"), size)
	if err != nil {
		t.Fatal(err)
	}
	tab.Entries[0] = Entry{Type: Types["home"].UUID, UUID: GUID{2}, FirstLBA: 2048, LastLBA: 4095, Name: "home"}
	tab.Entries[5] = Entry{Type: Types["swap"].UUID, UUID: GUID{3}, FirstLBA: 4096, LastLBA: 5000, Attributes: AttrNoAuto, Name: "swap"}
	img := &memImg{b: make([]byte, size)}
	if err := tab.Write(img, size); err != nil {
		t.Fatal(err)
	}
	got, err := Read(bytes.NewReader(img.b), size)
	if err != nil {
		t.Fatal(err)
	}
	for i := range tab.Entries {
		if got.Entries[i] != tab.Entries[i] {
			t.Fatalf("entry %d: %+v, want %+v", i, got.Entries[i], tab.Entries[i])
		}
	}
	// Backup header mirrors the primary.
	last := size - SectorSize
	if string(img.b[last:last+8]) != "EFI PART" {
		t.Fatal("no backup header")
	}
	for _, c := range []struct {
		at   int
		want string
	}{{512 + 20 + 4, "header CRC"}, {1024 + 40, "entry array CRC"}, {512, "no GPT header"}} {
		b := bytes.Clone(img.b)
		b[c.at] ^= 0xff
		if _, err := Read(bytes.NewReader(b), size); !errors.Is(err, ErrGPT) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("corrupt byte %d: %v, want %q", c.at, err, c.want)
		}
	}
	tab.Entries[1] = Entry{Type: Types["tmp"].UUID, FirstLBA: 3000, LastLBA: 3100}
	if err := tab.Write(img, size); err == nil || !strings.Contains(err.Error(), "overlap") {
		t.Errorf("overlap: %v", err)
	}
}

type memImg struct{ b []byte }

func (m *memImg) WriteAt(p []byte, off int64) (int, error) { return copy(m.b[off:], p), nil }

func FuzzReadGPT(f *testing.F) {
	size := int64(2<<20 + 64<<10)
	tab, _ := NewTable(GUID{9}, size)
	tab.Entries[0] = Entry{Type: Types["esp"].UUID, UUID: GUID{1}, FirstLBA: 2048, LastLBA: 2100, Name: "esp"}
	img := &memImg{b: make([]byte, size)}
	tab.Write(img, size)
	f.Add(img.b[:3*SectorSize+entryArea], int64(len(img.b)))
	f.Add([]byte("EFI PART"), int64(4096))
	f.Fuzz(func(t *testing.T, b []byte, size int64) {
		if size < 0 || size > 1<<40 {
			return
		}
		r := bytes.NewReader(b)
		tab, err := Read(r, size)
		if err != nil {
			return
		}
		// What parses is a consistent table: it writes back.
		if err := tab.Write(&discard{}, size); err != nil {
			t.Fatalf("parsed table does not write: %v", err)
		}
	})
}

type discard struct{}

func (discard) WriteAt(p []byte, _ int64) (int, error) { return len(p), nil }

func TestParseDefinitionErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"[Partition]\nType=usr\nWeight=100\n", "x.conf:3: key Weight= is not supported"},
		{"[Partition]\nType=usr\nSizeMinBytes=4X\n", "x.conf:3: SizeMinBytes=: \"4X\" is not a size"},
		{"[Partition]\nType=usr-verity\nVerity=hash\n", "VerityMatchKey= must be set if Verity=hash"},
		{"[Partition]\nType=usr\nVerity=hash\nVerityMatchKey=u\n", "Verity=hash needs a *-verity partition type, not usr-"},
		{"[Partition]\nType=esp\nSizeMinBytes=2M\nSizeMaxBytes=1M\n", "SizeMinBytes=2097152 is larger than SizeMaxBytes=1048576"},
		{"[Match]\nType=esp\n", "x.conf:1: section [Match] is not supported"},
		{"Type=esp\n", "x.conf:1: Type= outside a [Partition] section"},
		{"[Partition]\nLabel=x\n", "x.conf: Type= is not set"},
		{"[Partition]\nType=esp\nCopyBlocks=auto\n", "CopyBlocks=auto is not supported"},
		{"[Partition]\nType=usr-verity-sig\nVerity=signature\nVerityMatchKey=u\nSizeMinBytes=16K\n", "cannot be used with Verity=signature"},
		{"[Partition]\nType=esp\n", "neither CopyBlocks= nor SizeMinBytes="},
		{"[Partition]\nType=esp\nSizeMinBytes=1M\nVerityDataBlockSizeBytes=1000\n", "not a power of two"},
	} {
		_, err := ParseDefinition(strings.NewReader(c.in), "defs/x.conf")
		if !errors.Is(err, ErrDefinition) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.in, err, c.want)
		}
	}
	d, err := ParseDefinition(strings.NewReader("# comment\n[Partition]\n ; also\nType = home \nLabel=my home\nSizeMinBytes=1G\nUUID=a35b29a5-7b77-cdfb-5c08-07fb99724e43\nReadOnly=yes\n"), "h.conf")
	if err != nil || d.Type.Name != "home" || d.Label != "my home" || d.SizeMin != 1<<30 || !d.HasUUID || d.ReadOnly == nil || !*d.ReadOnly {
		t.Fatalf("%+v %v", d, err)
	}
}

func FuzzParseDefinition(f *testing.F) {
	for _, s := range []string{
		"[Partition]\nType=usr\nVerity=data\nVerityMatchKey=usr\nCopyBlocks=data.bin\nSizeMinBytes=4M\nSizeMaxBytes=4M\n",
		"[Partition]\nType=usr-verity-sig\nVerity=signature\nVerityMatchKey=usr\n",
		"[Partition]\nType=esp\nSizeMinBytes=1G\nLabel=x\nUUID=a35b29a57b77cdfb5c0807fb99724e43\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDefinition(strings.NewReader(s), "f.conf")
		if err != nil {
			if !errors.Is(err, ErrDefinition) {
				t.Fatalf("error not ErrDefinition: %v", err)
			}
			return
		}
		if err := CheckDefinitions([]*Definition{d}); err != nil && !errors.Is(err, ErrDefinition) {
			t.Fatal(err)
		}
	})
}
