//go:build unix

package agent

import (
	"fmt"
	"syscall"
)

// diskUsage reports the used and total bytes of the file system holding
// path (used counts blocks not free to unprivileged users as used, as
// df does).
func diskUsage(path string) (used, total uint64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, 0, fmt.Errorf("agent: statfs %s: %w", path, err)
	}
	bs := uint64(st.Bsize)
	total = uint64(st.Blocks) * bs
	free := uint64(st.Bfree) * bs
	if free > total {
		free = total
	}
	return total - free, total, nil
}
