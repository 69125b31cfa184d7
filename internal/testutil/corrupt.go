package testutil

import (
	"math/rand/v2"
	"os"
	"testing"
)

// CorruptMiddle overwrites the 4 KiB page-aligned block in the middle of
// the file at path with pseudo-random bytes (the file must be closed and
// at least 16 KiB, so the block is a data page, not the header). It
// returns the block's offset.
func CorruptMiddle(t testing.TB, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() < 16<<10 {
		t.Fatalf("%s holds %d bytes: too small to corrupt its middle", path, fi.Size())
	}
	off := fi.Size() / 2 &^ 4095
	junk := make([]byte, 4096)
	r := rand.New(rand.NewPCG(uint64(fi.Size()), 11))
	for i := range junk {
		junk[i] = byte(r.UintN(256))
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(junk, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return off
}
