package dkms

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"crypto/rand"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

// BlobStore keeps one opaque value: an agent's keyring, sealed under its
// device key. Load returns nil and no error when nothing was saved yet.
type BlobStore interface {
	Load(ctx context.Context) ([]byte, error)
	Save(ctx context.Context, data []byte) error
}

// FileBlobStore is a BlobStore in one file, replaced atomically (write to a
// temporary file, sync, rename, sync the directory) with mode 0600.
type FileBlobStore struct {
	Path string
}

// Load reads the file; a missing file is no value.
func (f FileBlobStore) Load(context.Context) ([]byte, error) {
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dkms: read %s: %w", f.Path, err)
	}
	return b, nil
}

// Save replaces the file's content atomically.
func (f FileBlobStore) Save(_ context.Context, data []byte) error {
	if err := writeFileAtomic(f.Path, data); err != nil {
		return fmt.Errorf("dkms: write %s: %w", f.Path, err)
	}
	return nil
}

func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// DeviceKeyID is the pqcrypto key id of agent device keys.
const DeviceKeyID = "dkms/device"

// NewDeviceKey makes a device key from a 32-byte secret (from a secret
// store, a TPM-sealed blob, an environment the service manager provides).
func NewDeviceKey(secret []byte) (*pqcrypto.DataKey, error) {
	k, err := pqcrypto.NewDataKey(DeviceKeyID, 1, secret)
	if err != nil {
		return nil, fmt.Errorf("dkms: device key: %w", err)
	}
	return k, nil
}

// LoadOrCreateDeviceKeyFile reads the device key from a file holding 64 hex
// digits, creating the file (mode 0600, secret from rnd; nil means
// crypto/rand) when it does not exist. A file with other content is
// ErrMalformed.
func LoadOrCreateDeviceKeyFile(path string, rnd io.Reader) (*pqcrypto.DataKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		secret, derr := hex.DecodeString(strings.TrimSpace(string(b)))
		clear(b)
		if derr != nil || len(secret) != KeySize {
			return nil, fmt.Errorf("dkms: device key file %s must hold %d hex digits: %w", path, 2*KeySize, ErrMalformed)
		}
		defer clear(secret)
		return NewDeviceKey(secret)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("dkms: read device key %s: %w", path, err)
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	secret := make([]byte, KeySize)
	defer clear(secret)
	if _, err := io.ReadFull(rnd, secret); err != nil {
		return nil, fmt.Errorf("dkms: reading randomness for the device key: %w", err)
	}
	text := []byte(hex.EncodeToString(secret) + "\n")
	defer clear(text)
	if err := writeFileAtomic(path, text); err != nil {
		return nil, fmt.Errorf("dkms: write device key %s: %w", path, err)
	}
	return NewDeviceKey(secret)
}
