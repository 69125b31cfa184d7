//go:build !unix

package ingest

import "errors"

// errNoStatfs: free space is not reported on this platform; the
// MinFreeBytes reserve is not enforced there.
var errNoStatfs = errors.New("ingest: free disk space is not reported on this platform")

func freeBytes(string) (int64, error) { return 0, errNoStatfs }
