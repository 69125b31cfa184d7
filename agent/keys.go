package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/agent/uplink"
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
	// KeysDir is the folder of the key material under DataDir.
	KeysDir = "keys"
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

	xwingAtRestAD = "edgefleet/agent x-wing key v1"
)

// keyMaterial is the agent's Keyring for the uplink: the device key, the
// X-Wing key pair and, once the agent is enrolled, its dkms keyring.
type keyMaterial struct {
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

// openKeyMaterial loads DataDir/keys/, creating the device key and the
// X-Wing key on first use.
func openKeyMaterial(dataDir string, rnd io.Reader, clk clock.Clock, log *slog.Logger, reg *prometheus.Registry) (*keyMaterial, error) {
	dir := filepath.Join(dataDir, KeysDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: keys dir: %w", err)
	}
	if err := restrict(dir, 0o700); err != nil {
		return nil, err
	}
	devPath := filepath.Join(dir, DeviceKeyFile)
	device, err := dkms.LoadOrCreateDeviceKeyFile(devPath, rnd)
	if err != nil {
		return nil, fmt.Errorf("agent: device key: %w", err)
	}
	if err := restrict(devPath, 0o600); err != nil {
		return nil, err
	}
	// The keyring seals from the uplink's two loops at once; an injected
	// reader need not be safe for that.
	k := &keyMaterial{dir: dir, device: device, rand: &lockedReader{r: rnd}, clock: clk, log: log, reg: reg}
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
		return fmt.Errorf("agent: %w", err)
	}
	if st.Mode().Perm()&^perm != 0 {
		if err := os.Chmod(path, perm); err != nil {
			return fmt.Errorf("agent: restrict %s to %v: %w", path, perm, err)
		}
	}
	return nil
}

// loadOrCreateXWing unseals the X-Wing key, or makes it and stores it
// sealed.
func (k *keyMaterial) loadOrCreateXWing() (*pqcrypto.PrivateKey, error) {
	store := dkms.FileBlobStore{Path: filepath.Join(k.dir, XWingKeyFile)}
	ctx := context.Background()
	blob, err := store.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent: X-Wing key: %w", err)
	}
	if blob != nil {
		seed, _, err := pqcrypto.Open(nil, blob, &pqcrypto.Keys{DataKey: pqcrypto.DataKeys(k.device), AAD: []byte(xwingAtRestAD)})
		if err != nil {
			return nil, fmt.Errorf("agent: unsealing the X-Wing key %s (another device key, or a damaged file): %w", store.Path, err)
		}
		defer clear(seed)
		sk, err := pqcrypto.NewXWingKeyFromSeed(seed)
		if err != nil {
			return nil, fmt.Errorf("agent: X-Wing key %s: %w", store.Path, err)
		}
		return sk, nil
	}
	sk, err := pqcrypto.GenerateXWingKey(k.rand)
	if err != nil {
		return nil, fmt.Errorf("agent: generating the X-Wing key: %w", err)
	}
	seed := sk.Bytes()
	defer clear(seed)
	sealed, err := pqcrypto.SealWithDataKey(nil, k.device, seed, &pqcrypto.SealOptions{AAD: []byte(xwingAtRestAD), Rand: k.rand})
	if err != nil {
		return nil, fmt.Errorf("agent: sealing the X-Wing key: %w", err)
	}
	if err := store.Save(ctx, sealed); err != nil {
		return nil, fmt.Errorf("agent: X-Wing key: %w", err)
	}
	k.log.Info("generated the agent's X-Wing key; it is registered with the control plane at enrollment",
		"path", store.Path, "fingerprint", sk.Public().Fingerprint())
	return sk, nil
}

// XWingPublic implements uplink.Keyring.
func (k *keyMaterial) XWingPublic() []byte { return k.sk.Public().Bytes() }

// Open implements uplink.Keyring: it opens the enrolled agent's keyring
// from DataDir/keys/keyring-<id>.sealed, once.
func (k *keyMaterial) Open(ctx context.Context, agentID string, controlPlane *pqcrypto.VerifyingKey) (*dkms.AgentKeys, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ak != nil {
		if k.ak.ID() != agentID {
			return nil, fmt.Errorf("agent: keyring open for agent %q, not %q", k.ak.ID(), agentID)
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

func (k *keyMaterial) keyringPath(agentID string) string {
	return filepath.Join(k.dir, KeyringFilePrefix+agentID+".sealed")
}

// Keys is the agent's keyring: the key versions the control plane sent
// it (the data key "telemetry" that seals uploads, the gossip key, and
// whatever else its policies give the agent), checked and kept sealed at
// rest under the device key. Nil without a control plane
// (control_plane.url empty), before Start, and until the agent is
// enrolled and has the control plane's signing key pinned.
func (a *Agent) Keys() *dkms.AgentKeys {
	if up := a.Uplink(); up != nil {
		return up.Keys()
	}
	return nil
}

// onKeysChanged registers f to run after every key fetch that accepted at
// least one key message (a new version, a state change, or the full set
// again after a restart). f runs on the uplink's heartbeat loop and must
// not block.
func (a *Agent) onKeysChanged(f func()) {
	a.keysMu.Lock()
	defer a.keysMu.Unlock()
	a.keysChanged = append(a.keysChanged, f)
}

func (a *Agent) fireKeysChanged() {
	a.keysMu.Lock()
	fs := append([]func(){}, a.keysChanged...)
	a.keysMu.Unlock()
	for _, f := range fs {
		f()
	}
}

// uplinkKeyring opens the key material for the uplink. The keyring's
// clock is the uplink's (key messages carry the control plane's time,
// which the simulator compresses together with the uplink's).
func (a *Agent) uplinkKeyring() (uplink.Keyring, error) {
	k, err := openKeyMaterial(a.cfg.DataDir, a.rnd, clock.Or(a.deps.UplinkClock), a.log.With("component", "keys"), a.reg)
	if err != nil {
		return nil, err
	}
	return k, nil
}
