// Package keys holds the agent's key material and what moves keys: the
// device key, the X-Wing key and the dkms keyring sealed at rest (Material,
// the uplink's Keyring), the hooks run after key fetches (Hooks), the key
// relay over replicated state (Relay), the gossip keyring rotator (Rotator)
// and the bootstrap gossip key (LoadGossipKey). It knows nothing of the
// agent: what it needs of replication and of the uplink comes in through
// its Config structs and the State interface.
package keys

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// The agent's key material, in DataDir/keys/ (mode 0700), present when a
// control plane is configured. Only the device key is stored as it is;
// everything else is sealed under it (a pqcrypto data-key envelope bound
// to what the file holds), so the files hold no key in the clear but the
// device key. Keep the device key elsewhere (a secret store, a TPM) to
// make a copy of the data directory useless; it is a plain file here.
const (
	// Dir is the folder of the key material under DataDir.
	Dir = "keys"
	// DeviceKeyFile holds the device key: 64 hex digits, mode 0600
	// (dkms.LoadOrCreateDeviceKeyFile), made at the first start.
	DeviceKeyFile = "device.key"
	// XWingKeyFile holds the agent's X-Wing private key (its 32-byte seed),
	// sealed under the device key, mode 0600. Made once, at the first
	// start; its public half is registered at enrollment and the control
	// plane seals key versions to it.
	XWingKeyFile = "xwing.sealed"
	// KeyringFilePrefix names the agent's dkms keyring, sealed under the
	// device key and bound to the agent id: keyring-<agent id>.sealed,
	// mode 0600, replaced atomically at every change. An agent enrolled
	// again (a new id) starts a new keyring.
	KeyringFilePrefix = "keyring-"

	// XWingAD is the associated data binding XWingKeyFile's envelope to
	// what it holds.
	XWingAD = "edgefleet/agent x-wing key v1"
)

// Material is the agent's Keyring for the uplink: the device key, the
// X-Wing key pair and, once the agent is enrolled, its dkms keyring.
type Material struct {
	dir    string
	device *pqcrypto.DataKey
	sk     *pqcrypto.PrivateKey
	rand   io.Reader
	clock  clock.Clock
	log    *slog.Logger
	reg    *prometheus.Registry

	mu sync.Mutex
	ak *dkms.AgentKeys
}

// OpenMaterial loads DataDir/keys/, creating the device key and the
// X-Wing key on first use. clk is the keyring's clock (nil: real); reg,
// when not nil, receives the keyring's metrics.
func OpenMaterial(dataDir string, rnd io.Reader, clk clock.Clock, log *slog.Logger, reg *prometheus.Registry) (*Material, error) {
	dir := filepath.Join(dataDir, Dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("keys: keys dir: %w", err)
	}
	if err := restrict(dir, 0o700); err != nil {
		return nil, err
	}
	devPath := filepath.Join(dir, DeviceKeyFile)
	device, err := dkms.LoadOrCreateDeviceKeyFile(devPath, rnd)
	if err != nil {
		return nil, fmt.Errorf("keys: device key: %w", err)
	}
	if err := restrict(devPath, 0o600); err != nil {
		return nil, err
	}
	// The keyring seals from the uplink's two loops at once; an injected
	// reader need not be safe for that.
	k := &Material{dir: dir, device: device, rand: &lockedReader{r: rnd}, clock: clock.Or(clk), log: log, reg: reg}
	if k.sk, err = k.loadOrCreateXWing(); err != nil {
		return nil, err
	}
	return k, nil
}

// lockedReader serializes reads from r.
type lockedReader struct {
	mu sync.Mutex
	r  io.Reader
}

func (l *lockedReader) Read(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.r.Read(p)
}

// restrict tightens a file's or folder's mode to at most perm.
func restrict(path string, perm os.FileMode) error {
	st, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("keys: %w", err)
	}
	if st.Mode().Perm()&^perm != 0 {
		if err := os.Chmod(path, perm); err != nil {
			return fmt.Errorf("keys: restrict %s to %v: %w", path, perm, err)
		}
	}
	return nil
}

// loadOrCreateXWing unseals the X-Wing key, or makes it and stores it
// sealed.
func (k *Material) loadOrCreateXWing() (*pqcrypto.PrivateKey, error) {
	store := dkms.FileBlobStore{Path: filepath.Join(k.dir, XWingKeyFile)}
	ctx := context.Background()
	blob, err := store.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("keys: X-Wing key: %w", err)
	}
	if blob != nil {
		seed, _, err := pqcrypto.Open(nil, blob, &pqcrypto.Keys{DataKey: pqcrypto.DataKeys(k.device), AAD: []byte(XWingAD)})
		if err != nil {
			return nil, fmt.Errorf("keys: unsealing the X-Wing key %s (another device key, or a damaged file): %w", store.Path, err)
		}
		defer clear(seed)
		sk, err := pqcrypto.NewXWingKeyFromSeed(seed)
		if err != nil {
			return nil, fmt.Errorf("keys: X-Wing key %s: %w", store.Path, err)
		}
		return sk, nil
	}
	sk, err := pqcrypto.GenerateXWingKey(k.rand)
	if err != nil {
		return nil, fmt.Errorf("keys: generating the X-Wing key: %w", err)
	}
	seed := sk.Bytes()
	defer clear(seed)
	sealed, err := pqcrypto.SealWithDataKey(nil, k.device, seed, &pqcrypto.SealOptions{AAD: []byte(XWingAD), Rand: k.rand})
	if err != nil {
		return nil, fmt.Errorf("keys: sealing the X-Wing key: %w", err)
	}
	if err := store.Save(ctx, sealed); err != nil {
		return nil, fmt.Errorf("keys: X-Wing key: %w", err)
	}
	k.log.Info("generated the agent's X-Wing key; it is registered with the control plane at enrollment",
		"path", store.Path, "fingerprint", sk.Public().Fingerprint())
	return sk, nil
}

// XWingPublic implements uplink.Keyring.
func (k *Material) XWingPublic() []byte { return k.sk.Public().Bytes() }

// Open implements uplink.Keyring: it opens the enrolled agent's keyring
// from DataDir/keys/keyring-<id>.sealed, once.
func (k *Material) Open(ctx context.Context, agentID string, controlPlane *pqcrypto.VerifyingKey) (*dkms.AgentKeys, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ak != nil {
		if k.ak.ID() != agentID {
			return nil, fmt.Errorf("keys: keyring open for agent %q, not %q", k.ak.ID(), agentID)
		}
		return k.ak, nil
	}
	// The keyring registers its metrics before it reads its file, so only
	// the first attempt gets the registry: a retry after a failed open
	// would be refused as a duplicate registration.
	reg := k.reg
	k.reg = nil
	ak, err := dkms.OpenAgentKeys(ctx, dkms.AgentConfig{
		AgentID: agentID, PrivateKey: k.sk, ControlPlaneKey: controlPlane, DeviceKey: k.device,
		Store: dkms.FileBlobStore{Path: k.keyringPath(agentID)},
		Rand:  k.rand, Clock: k.clock, Logger: k.log, Registry: reg,
	})
	if err != nil {
		return nil, err
	}
	k.ak = ak
	return ak, nil
}

func (k *Material) keyringPath(agentID string) string {
	return filepath.Join(k.dir, KeyringFilePrefix+agentID+".sealed")
}

// Hooks are functions run after every key fetch that accepted at least one
// key message. The zero value is ready for use.
type Hooks struct {
	mu sync.Mutex
	fs []func()
}

// On registers f. f runs on the caller of Fire (the uplink's heartbeat
// loop, the relay's scan) and must not block.
func (h *Hooks) On(f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fs = append(h.fs, f)
}

// Fire runs the registered functions in order.
func (h *Hooks) Fire() {
	h.mu.Lock()
	fs := append([]func(){}, h.fs...)
	h.mu.Unlock()
	for _, f := range fs {
		f()
	}
}
