package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/keys"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/internal/cptest"
	"github.com/edgefleet/edgefleet/pqcrypto"
	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// keysCP is a control plane in dev mode (unsealed, with the built-in
// keys) that asks for a heartbeat every 300 ms, and its admin client.
type keysCP struct {
	srv   *controlplane.Server
	admin *cpapi.Client
}

func startKeysCP(t *testing.T) *keysCP {
	t.Helper()
	cfg := cptest.Config(t.TempDir())
	cfg.HeartbeatInterval = 300 * time.Millisecond
	srv, admin := cptest.Start(t, cfg)
	return &keysCP{srv: srv, admin: admin}
}

// agentConfig is an agent enrolling into the control plane.
func (c *keysCP) agentConfig(t *testing.T, name string) Config {
	t.Helper()
	toks, err := c.admin.CreateEnrollmentTokens(t.Context(), time.Hour, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, name)
	cfg.ControlPlane.URL = c.srv.URL()
	cfg.ControlPlane.CAFile = c.srv.CAPath()
	cfg.ControlPlane.EnrollmentToken = toks[0].Token
	return cfg
}

func startAgent(t *testing.T, cfg Config, deps Deps) *Agent {
	t.Helper()
	a, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Kill() })
	return a
}

// telemetryVersion is the primary version of the telemetry key the agent
// holds (0: none).
func telemetryVersion(a *Agent) uint32 {
	ak := a.Keys()
	if ak == nil {
		return 0
	}
	dk, err := ak.PrimaryDataKey(cpapi.TelemetryKeyName)
	if err != nil {
		return 0
	}
	return dk.Version()
}

// scanFor fails if any file under dir holds secret in raw, hex or base64
// form.
func scanFor(t *testing.T, dir, what string, secret []byte) {
	t.Helper()
	forms := [][]byte{secret, []byte(hex.EncodeToString(secret)), []byte(base64.StdEncoding.EncodeToString(secret)),
		[]byte(base64.RawStdEncoding.EncodeToString(secret)), []byte(base64.URLEncoding.EncodeToString(secret))}
	files := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		for _, f := range forms {
			if bytes.Contains(b, f) {
				t.Errorf("%s holds the %s in the clear", path, what)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 5 {
		t.Fatalf("scanned %d files only", files)
	}
}

// TestKeysSurviveAKillAndAreSealedOnDisk: the agent's keyring and X-Wing
// key come back after a crash, with the control plane unreachable, and
// no file under the data dir holds a key in the clear but the device key.
func TestKeysSurviveAKillAndAreSealedOnDisk(t *testing.T) {
	t.Parallel()
	cp := startKeysCP(t)
	cfg := cp.agentConfig(t, "keeper")
	withIngest(&cfg)
	a, err := New(cfg, Deps{Logger: testLogger(t), Rand: seededRand("keeper")})
	if err != nil {
		t.Fatal(err)
	}
	var changes atomic.Int64
	a.keysChanged.On(func() { changes.Add(1) })
	if a.Keys() != nil {
		t.Fatal("keyring before Start")
	}
	if err := a.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Kill() })
	waitFor(t, 20*time.Second, "telemetry key", func() (bool, string) { return telemetryVersion(a) == 1, "" })
	waitFor(t, 10*time.Second, "onKeysChanged hook called", func() (bool, string) { return changes.Load() >= 1, "" })
	api := apiClient{t: t, base: "http://" + a.APIAddr()}
	dev := mqttClient(t, a.MQTTURL(), "k1")
	publish(t, dev, "devices/k1/telemetry", `{"t":1}`, `{"t":2}`)
	waitFor(t, 20*time.Second, "sealed upload", func() (bool, string) {
		_, obj, raw := api.do("GET", "/v1/uplink", "")
		kv, _ := obj["key_versions"].(map[string]any)
		return obj["uploaded_readings"] == float64(2) && obj["seal_telemetry"] == true && kv["telemetry"] == float64(1), raw
	})
	id := a.Uplink().Status().AgentID
	dk, err := a.Keys().PrimaryDataKey(cpapi.TelemetryKeyName)
	if err != nil {
		t.Fatal(err)
	}
	telemetrySecret := dk.Secret()
	gv, err := a.Keys().GossipVersions(cpapi.GossipKeyName)
	if err != nil || len(gv) != 1 || len(gv[0].Key) != 32 {
		t.Fatalf("gossip key: %+v %v", gv, err)
	}
	gossipSecret := gv[0].Key
	envBefore, err := a.Keys().Encrypt(t.Context(), cpapi.TelemetryKeyName, []byte("before the crash"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(cfg.DataDir, keys.Dir)
	for name, perm := range map[string]fs.FileMode{"": 0o700, keys.DeviceKeyFile: 0o600, keys.XWingKeyFile: 0o600, keys.KeyringFilePrefix + id + ".sealed": 0o600} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil || st.Mode().Perm() != perm {
			t.Errorf("%s: %v, mode %v, want %v", filepath.Join(dir, name), err, st.Mode().Perm(), perm)
		}
	}
	km, err := keys.OpenMaterial(cfg.DataDir, seededRand("other"), nil, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	// The X-Wing seed, unsealed from its file with the device key.
	device, err := dkms.LoadOrCreateDeviceKeyFile(filepath.Join(dir, keys.DeviceKeyFile), nil)
	if err != nil {
		t.Fatal(err)
	}
	sealedSeed, err := os.ReadFile(filepath.Join(dir, keys.XWingKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	xwingSeed, _, err := pqcrypto.Open(nil, sealedSeed, &pqcrypto.Keys{DataKey: pqcrypto.DataKeys(device), AAD: []byte(keys.XWingAD)})
	if err != nil {
		t.Fatalf("unsealing the X-Wing key file: %v", err)
	}
	if sk, err := pqcrypto.NewXWingKeyFromSeed(xwingSeed); err != nil || !bytes.Equal(sk.Public().Bytes(), km.XWingPublic()) {
		t.Fatalf("X-Wing key file holds another key: %v", err)
	}
	scanFor(t, cfg.DataDir, "telemetry key", telemetrySecret)
	scanFor(t, cfg.DataDir, "gossip key", gossipSecret)
	scanFor(t, cfg.DataDir, "X-Wing private key", xwingSeed)

	// Restart with the control plane unreachable: the keys are there at
	// once, from disk.
	down := func(http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			return nil, errors.New("test: control plane unreachable")
		})
	}
	cfg.ControlPlane.EnrollmentToken = ""
	b := startAgent(t, cfg, Deps{Logger: testLogger(t), Rand: seededRand("keeper-2"), UplinkWrapTransport: down})
	if telemetryVersion(b) != 1 {
		t.Fatalf("telemetry key after the restart: v%d", telemetryVersion(b))
	}
	if b.Keys().ID() != id {
		t.Fatalf("keyring of %q after restart, want %q", b.Keys().ID(), id)
	}
	if pt, err := b.Keys().Decrypt(t.Context(), cpapi.TelemetryKeyName, envBefore, nil); err != nil || string(pt) != "before the crash" {
		t.Fatalf("restarted keyring opens %q, %v", pt, err)
	}
	dk2, err := b.Keys().PrimaryDataKey(cpapi.TelemetryKeyName)
	if err != nil || !bytes.Equal(dk2.Secret(), telemetrySecret) {
		t.Fatalf("telemetry key changed across the restart: %v", err)
	}
	if ag, err := cp.admin.GetAgent(t.Context(), id); err != nil || !bytes.Equal(ag.XWingPublic, km.XWingPublic()) {
		t.Fatalf("registered X-Wing key differs from the one on disk: %v", err)
	}
}

// TestRevokedAgentsKeyringCopyOpensNothingNew: a copy of a decommissioned
// agent's key files cannot open telemetry sealed under versions made
// after the revocation; the remaining agent moves to them.
func TestRevokedAgentsKeyringCopyOpensNothingNew(t *testing.T) {
	t.Parallel()
	cp := startKeysCP(t)
	gone := startAgent(t, cp.agentConfig(t, "gone"), Deps{Logger: testLogger(t), Rand: seededRand("gone")})
	stay := startAgent(t, cp.agentConfig(t, "stay"), Deps{Logger: testLogger(t), Rand: seededRand("stay")})
	waitFor(t, 20*time.Second, "both hold the telemetry key", func() (bool, string) {
		return telemetryVersion(gone) == 1 && telemetryVersion(stay) == 1, ""
	})
	goneID := gone.Keys().ID()
	v1, err := stay.Keys().Encrypt(t.Context(), cpapi.TelemetryKeyName, []byte("before"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := gone.Kill(); err != nil {
		t.Fatal(err)
	}
	// An attacker copies the agent's data dir, device key included.
	stolen := t.TempDir()
	if err := os.CopyFS(filepath.Join(stolen, keys.Dir), os.DirFS(filepath.Join(gone.cfg.DataDir, keys.Dir))); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.admin.Decommission(t.Context(), goneID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the remaining agent holds v2", func() (bool, string) { return telemetryVersion(stay) == 2, "" })
	v2, err := stay.Keys().Encrypt(t.Context(), cpapi.TelemetryKeyName, []byte("after"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := cp.srv.KeyService().Decrypt(t.Context(), cpapi.TelemetryKeyName, v2, nil); err != nil || string(pt) != "after" {
		t.Fatalf("control plane opens v2: %q %v", pt, err)
	}

	km, err := keys.OpenMaterial(stolen, seededRand("thief"), nil, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	vk, err := pqcrypto.ParseVerifyingKey(cp.srv.KeyService().VerifyingKey().Bytes())
	if err != nil {
		t.Fatal(err)
	}
	copyKeys, err := km.Open(context.Background(), goneID, vk)
	if err != nil {
		t.Fatalf("opening the copied keyring: %v", err)
	}
	if _, err := copyKeys.Decrypt(t.Context(), cpapi.TelemetryKeyName, v2, nil); !errors.Is(err, dkms.ErrUnknownVersion) {
		t.Fatalf("the copy opens data sealed after the revocation: %v", err)
	}
	// What was sealed before stays readable to the copy (rewrap and
	// destroy v1 if that matters).
	if pt, err := copyKeys.Decrypt(t.Context(), cpapi.TelemetryKeyName, v1, nil); err != nil || string(pt) != "before" {
		t.Fatalf("copy and v1: %q %v", pt, err)
	}
}

// TestKeyringFileDamageStopsStart: a keyring that does not unseal (another
// device key, a damaged file) is a local problem that waiting cannot fix.
func TestKeyringFileDamageStopsStart(t *testing.T) {
	t.Parallel()
	cp := startKeysCP(t)
	cfg := cp.agentConfig(t, "damaged")
	a := startAgent(t, cfg, Deps{Logger: testLogger(t), Rand: seededRand("damaged")})
	waitFor(t, 20*time.Second, "telemetry key", func() (bool, string) { return telemetryVersion(a) == 1, "" })
	id := a.Keys().ID()
	a.Kill()
	path := filepath.Join(cfg.DataDir, keys.Dir, keys.KeyringFilePrefix+id+".sealed")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-3] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.ControlPlane.EnrollmentToken = ""
	again, err := New(cfg, Deps{Logger: testLogger(t), Rand: seededRand("damaged-2")})
	if err != nil {
		t.Fatal(err)
	}
	err = again.Start(t.Context())
	if err == nil {
		again.Kill()
		t.Fatal("started with a damaged keyring")
	}
	if !strings.Contains(err.Error(), "keyring") {
		t.Fatalf("error does not name the keyring: %v", err)
	}
}

func TestNoKeysWithoutControlPlane(t *testing.T) {
	t.Parallel()
	cfg := testConfig(t, "alone")
	a := startAgent(t, cfg, Deps{Logger: testLogger(t), Rand: seededRand("alone")})
	if a.Keys() != nil {
		t.Fatal("keyring without a control plane")
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, keys.Dir)); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("keys dir made without a control plane: %v", err)
	}
}

// TestGossipKeysAgentWiring checks the agent-side wiring: the rotator
// plans from the agent's keyring on the uplink's clock with the agent's
// registry, and its loop ends with the agent's context.
func TestGossipKeysAgentWiring(t *testing.T) {
	clk := clock.NewManual(time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC))
	reg := prometheus.NewRegistry()
	quiet := slog.New(slog.DiscardHandler)
	a, err := New(testConfig(t, "gk-wire"), Deps{Logger: quiet, Registry: reg, UplinkClock: clk})
	if err != nil {
		t.Fatal(err)
	}
	boot := bytes.Repeat([]byte{0xb0}, 32)
	kr, err := memberlist.NewKeyring(nil, boot)
	if err != nil {
		t.Fatal(err)
	}
	cfg := a.gossipKeysConfig(kr, boot)
	if cfg.Clock != clock.Clock(clk) || cfg.Registry != reg || cfg.Keyring != kr || !bytes.Equal(cfg.Bootstrap, boot) {
		t.Fatalf("rotator config %+v: want the uplink's clock, the agent's registry and keyring", cfg)
	}
	if _, err := cfg.Source(clk.Now()); !errors.Is(err, dkms.ErrUnknownKey) {
		t.Fatalf("source without a keyring: %v", err)
	}
	if b, _ := New(testConfig(t, "gk-wire-2"), Deps{Logger: quiet}); b.gossipKeysConfig(kr, boot).Clock != b.clk {
		t.Fatal("without an uplink clock the rotator does not run on the agent's")
	}
	r, err := keys.NewRotator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.startGossipKeys(ctx, r)
	a.startGossipKeys(ctx, nil) // encryption off: nothing
	a.keysChanged.Fire()
	if st := r.State(); st.Primary != 0 || len(st.Versions) != 0 || !st.Bootstrap {
		t.Fatalf("keyring %+v without a dkms keyring", st)
	}
	if metricSum(t, reg, "edgefleet_gossip_keyring_keys", "") != 1 {
		t.Fatal("metrics not on the agent's registry")
	}
	cancel()
	a.wg.Wait()
}
