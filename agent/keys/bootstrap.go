package keys

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// GossipKeyFile is the generated bootstrap gossip key's name inside the
// data directory.
const GossipKeyFile = "gossip.key"

// BootstrapConfig says where the bootstrap gossip key comes from (config
// gossip.encrypt, gossip.key, gossip.key_file).
type BootstrapConfig struct {
	Encrypt bool
	Key     string // base64; takes precedence over KeyFile
	KeyFile string // "" means DataDir/gossip.key, generated on first start
	DataDir string
	Rand    io.Reader    // generates the key; required when it may be generated
	Logger  *slog.Logger // nil means slog.Default()
}

// LoadGossipKey returns the bootstrap gossip encryption key, or nil when
// encryption is off. With no key configured, DataDir/gossip.key is read,
// or generated from Rand on first start.
func LoadGossipKey(g BootstrapConfig) ([]byte, error) {
	log := g.Logger
	if log == nil {
		log = slog.Default()
	}
	if !g.Encrypt {
		log.Warn("gossip encryption is off; any host that can reach the gossip port can read and inject cluster state")
		return nil, nil
	}
	if g.Key != "" {
		return DecodeGossipKey(g.Key)
	}
	rnd := g.Rand
	path, generate := g.KeyFile, false
	if path == "" {
		path, generate = filepath.Join(g.DataDir, GossipKeyFile), true
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		key, err := DecodeGossipKey(strings.TrimSpace(string(data)))
		if err != nil {
			return nil, fmt.Errorf("keys: gossip key file %s: %w", path, err)
		}
		if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
			log.Warn("gossip key file is readable by other users", "path", path, "mode", st.Mode().Perm().String())
		}
		return key, nil
	case errors.Is(err, fs.ErrNotExist) && generate:
		key := make([]byte, 32)
		if _, err := io.ReadFull(rnd, key); err != nil {
			return nil, fmt.Errorf("keys: generating gossip key: %w", err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("keys: writing gossip key: %w", err)
		}
		if _, err := f.WriteString(base64.StdEncoding.EncodeToString(key) + "\n"); err != nil {
			f.Close()
			return nil, fmt.Errorf("keys: writing gossip key %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, fmt.Errorf("keys: writing gossip key %s: %w", path, err)
		}
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("keys: writing gossip key %s: %w", path, err)
		}
		log.Warn("generated a new gossip key; every peer must be given the same key (gossip.key or gossip.key_file)",
			"path", path, "fingerprint", Fingerprint(key))
		return key, nil
	default:
		return nil, fmt.Errorf("keys: gossip key: %w", err)
	}
}

// Fingerprint identifies a key in logs without revealing it.
func Fingerprint(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:6])
}

// DecodeGossipKey decodes a base64 (standard or URL alphabet, padded or
// not) key of 16, 24 or 32 bytes.
func DecodeGossipKey(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(s); err == nil {
			switch len(k) {
			case 16, 24, 32:
				return k, nil
			}
			return nil, fmt.Errorf("key is %d bytes, want 16, 24 or 32", len(k))
		}
	}
	return nil, errors.New("key is not base64")
}
