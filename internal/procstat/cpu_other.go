//go:build !unix

package procstat

// CPUSeconds returns 0: this platform's CPU accounting is not read.
func CPUSeconds() float64 { return 0 }
