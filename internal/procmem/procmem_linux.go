//go:build linux

package procmem

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Release advises the kernel to page out the read-only mappings (code and
// read-only data) of this process's executable. Writable mappings are left
// alone. It is safe to call at any time; a kernel without MADV_PAGEOUT
// answers EINVAL, returned as an error and otherwise harmless.
func Release() (Released, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return Released{}, fmt.Errorf("procmem: %w", err)
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return Released{}, fmt.Errorf("procmem: %w", err)
	}
	defer f.Close()
	var ranges [][2]uintptr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lo, hi, ok := readOnlyMappingOf(sc.Text(), exe)
		if ok {
			ranges = append(ranges, [2]uintptr{lo, hi})
		}
	}
	if err := sc.Err(); err != nil {
		return Released{}, fmt.Errorf("procmem: reading /proc/self/maps: %w", err)
	}
	var r Released
	var errs []error
	for _, m := range ranges {
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, m[0], m[1]-m[0], unix.MADV_PAGEOUT); e != 0 {
			errs = append(errs, fmt.Errorf("procmem: madvise(MADV_PAGEOUT) %#x-%#x: %w", m[0], m[1], e))
			continue
		}
		r.Mappings++
		r.Bytes += uint64(m[1] - m[0])
	}
	return r, errors.Join(errs...)
}

// readOnlyMappingOf parses one line of /proc/self/maps ("lo-hi perms offset
// dev inode path") and reports the range when it maps path without write
// permission.
func readOnlyMappingOf(line, path string) (lo, hi uintptr, ok bool) {
	fs := strings.Fields(line)
	if len(fs) < 6 || fs[5] != path || len(fs[1]) < 2 || fs[1][1] == 'w' {
		return 0, 0, false
	}
	a, b, found := strings.Cut(fs[0], "-")
	if !found {
		return 0, 0, false
	}
	l, err1 := strconv.ParseUint(a, 16, 64)
	h, err2 := strconv.ParseUint(b, 16, 64)
	if err1 != nil || err2 != nil || h <= l {
		return 0, 0, false
	}
	return uintptr(l), uintptr(h), true
}
