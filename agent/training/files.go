package training

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// writeFileAtomic writes data to path so that after a crash path holds
// either its old content or data: a temporary file in the same directory,
// synced, renamed over path, and the directory synced.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("training: write %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("training: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("training: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("training: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("training: write %s: %w", path, err)
	}
	ok = true
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("training: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("training: sync %s: %w", dir, err)
	}
	return nil
}

// writeJSON writes v as JSON to path atomically.
func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("training: encode %s: %w", filepath.Base(path), err)
	}
	return writeFileAtomic(path, b)
}

// readJSON decodes the JSON file at path into v.
func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("training: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("training: %s: %w", path, err)
	}
	return nil
}
