//go:build !unix

package bench

import "time"

// CPUClock is not available on this system; it returns the zero time.
func CPUClock() time.Time { return time.Time{} }
