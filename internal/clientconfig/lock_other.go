//go:build !unix

package clientconfig

import (
	"fmt"
	"os"
	"path/filepath"
)

// lockFile only prepares the directory on platforms without flock: Save's
// atomic rename still keeps the file whole, but two concurrent updates may
// lose one of the changes.
func lockFile(path string) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("clientconfig: %w", err)
	}
	return func() {}, nil
}
