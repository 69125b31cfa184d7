package agent

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// gossipKeyFile is the generated key's name inside DataDir.
const gossipKeyFile = "gossip.key"

// loadGossipKey returns the gossip encryption key, or nil when encryption
// is off. With no key configured, DataDir/gossip.key is read, or generated
// from rnd on first start.
func (a *Agent) loadGossipKey(rnd io.Reader) ([]byte, error) {
	g := a.cfg.Gossip
	if !g.Encrypt {
		a.log.Warn("gossip encryption is off; any host that can reach the gossip port can read and inject cluster state")
		return nil, nil
	}
	if g.Key != "" {
		return decodeGossipKey(g.Key)
	}
	path, generate := g.KeyFile, false
	if path == "" {
		path, generate = filepath.Join(a.cfg.DataDir, gossipKeyFile), true
	}
	data, err := os.ReadFile(path)
	switch {
	case err == nil:
		key, err := decodeGossipKey(strings.TrimSpace(string(data)))
		if err != nil {
			return nil, fmt.Errorf("agent: gossip key file %s: %w", path, err)
		}
		if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
			a.log.Warn("gossip key file is readable by other users", "path", path, "mode", st.Mode().Perm().String())
		}
		return key, nil
	case errors.Is(err, fs.ErrNotExist) && generate:
		key := make([]byte, 32)
		if _, err := io.ReadFull(rnd, key); err != nil {
			return nil, fmt.Errorf("agent: generating gossip key: %w", err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return nil, fmt.Errorf("agent: writing gossip key: %w", err)
		}
		if _, err := f.WriteString(base64.StdEncoding.EncodeToString(key) + "\n"); err != nil {
			f.Close()
			return nil, fmt.Errorf("agent: writing gossip key %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, fmt.Errorf("agent: writing gossip key %s: %w", path, err)
		}
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("agent: writing gossip key %s: %w", path, err)
		}
		a.log.Warn("generated a new gossip key; every peer must be given the same key (gossip.key or gossip.key_file)",
			"path", path, "fingerprint", keyFingerprint(key))
		return key, nil
	default:
		return nil, fmt.Errorf("agent: gossip key: %w", err)
	}
}

// keyFingerprint identifies a key in logs without revealing it.
func keyFingerprint(key []byte) string {
	sum := sha256.Sum256(key)
	return hex.EncodeToString(sum[:6])
}
