//go:build linux

package procmem

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

func rssFileKiB(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "RssFile:"); ok {
			n, err := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Skip("no RssFile in /proc/self/status")
	return 0
}

// TestReleaseDropsExecutablePages checks that the test binary's own
// file-backed resident memory falls after Release.
func TestReleaseDropsExecutablePages(t *testing.T) {
	before := rssFileKiB(t)
	r, err := Release()
	if err != nil {
		t.Skipf("kernel refused MADV_PAGEOUT (needs Linux 5.4+): %v", err)
	}
	after := rssFileKiB(t)
	t.Logf("%d mappings, %d KiB advised; RssFile %d KiB -> %d KiB", r.Mappings, r.Bytes>>10, before, after)
	if r.Mappings < 2 {
		t.Fatalf("advised %d mappings of the executable, want code and read-only data", r.Mappings)
	}
	if after > before/2 {
		t.Fatalf("RssFile %d KiB -> %d KiB: executable pages were not released", before, after)
	}
}

func TestReadOnlyMappingOf(t *testing.T) {
	for _, tc := range []struct {
		line string
		ok   bool
	}{
		{"00400000-00dc3000 r-xp 00000000 fd:01 123 /bin/agent", true},
		{"00dc3000-01761000 r--p 009c3000 fd:01 123 /bin/agent", true},
		{"01761000-017ee000 rw-p 01361000 fd:01 123 /bin/agent", false},
		{"7f00-8f00 r-xp 0 fd:01 9 /lib/libc.so.6", false},
		{"zz-01 r-xp 0 fd:01 123 /bin/agent", false},
		{"0200-0100 r-xp 0 fd:01 123 /bin/agent", false},
		{"", false},
	} {
		if _, _, ok := readOnlyMappingOf(tc.line, "/bin/agent"); ok != tc.ok {
			t.Errorf("%q: ok %v, want %v", tc.line, ok, tc.ok)
		}
	}
}
