//go:build !linux

package procmem

import "errors"

// Release is only implemented on Linux.
func Release() (Released, error) {
	return Released{}, errors.New("procmem: releasing executable pages is only implemented on Linux")
}
