package boottest

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	code := m.Run()
	RemoveSignet()
	os.Exit(code)
}
