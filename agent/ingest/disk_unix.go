//go:build unix

package ingest

import (
	"fmt"
	"syscall"
)

// freeBytes returns the bytes free to unprivileged users on the file
// system holding dir (df's "Avail").
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, fmt.Errorf("ingest: statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}
