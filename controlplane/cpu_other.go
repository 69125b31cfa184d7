//go:build !unix

package controlplane

// ProcessCPUSeconds returns 0: this platform's CPU accounting is not read.
func ProcessCPUSeconds() float64 { return 0 }
