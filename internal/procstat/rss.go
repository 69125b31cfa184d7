// Package procstat reads this process's resource use (CPU time, resident
// memory) for status reports and benchmarks.
package procstat

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// RSS returns this process's resident set size in bytes from the VmRSS
// line of /proc/self/status, or 0 where that file does not exist.
func RSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			fields := strings.Fields(rest)
			if len(fields) >= 1 {
				kb, err := strconv.ParseInt(fields[0], 10, 64)
				if err == nil {
					return kb * 1024
				}
			}
		}
	}
	return 0
}
