package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// DataDir returns the shared data directory: $EDGEFLEET_DATA, else
// ../shared/data relative to the repository root (the directory holding
// go.mod above the test's working directory).
func DataDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("EDGEFLEET_DATA"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "..", "shared", "data")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testutil: no go.mod above the test directory")
		}
		dir = parent
	}
}
