package runtime

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestMain builds patronus once for every test of the package when PATRONUS_BIN is not
// set (scripts/test.sh sets it), instead of once per test.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv("PATRONUS_BIN") == "" && os.Geteuid() == 0 {
		dir, err := os.MkdirTemp("", "pt-rt-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		bin := filepath.Join(dir, "patronus")
		cmd := exec.Command("go", "build", "-o", bin, ".")
		cmd.Dir = filepath.Join("..", "..")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "go build patronus: %v\n%s", err, out)
			return 1
		}
		os.Setenv("PATRONUS_BIN", bin)
	}
	return m.Run()
}
