//go:build !unix

package agent

import "errors"

// diskUsage is not available on this platform: it reports zeros.
func diskUsage(string) (used, total uint64, err error) {
	return 0, 0, errors.New("agent: disk usage is not reported on this platform")
}
