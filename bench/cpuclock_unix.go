//go:build unix

package bench

import (
	"syscall"
	"time"
)

// CPUClock is a clock that reads the process's CPU time (user + system,
// all threads) from getrusage, for Options.Now: on a machine shared with
// other work it measures what an operation costs without the time the
// process spent waiting for a core. A reading that fails returns the
// zero time, which makes the measurement fail loudly rather than lie.
func CPUClock() time.Time {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return time.Time{}
	}
	d := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return time.Unix(0, 0).Add(d)
}
