package dkms

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/internal/testutil"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// testRand returns a deterministic random source.
func testRand(seed uint64) io.Reader {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	return rand.NewChaCha8(s)
}

var epoch = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newClock() *clock.Manual { return clock.NewManual(epoch) }

// recorder is an Auditor that keeps every event.
type recorder struct {
	mu     sync.Mutex
	events []AuditEvent
}

func (r *recorder) Audit(_ context.Context, e AuditEvent) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
}

func (r *recorder) find(action, key string) []AuditEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []AuditEvent
	for _, e := range r.events {
		if e.Action == action && (key == "" || e.Key == key) {
			out = append(out, e)
		}
	}
	return out
}

// env is a key service on a SQLite file with its dependencies.
type env struct {
	t      testing.TB
	dir    string
	path   string
	store  *SQLiteStore
	svc    *Service
	clock  *clock.Manual
	audit  *recorder
	logs   *testutil.SyncBuffer
	signer *pqcrypto.SigningKey
	shares []Share
	seed   uint64
}

func quietLogger(buf *testutil.SyncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newEnv starts an initialized, unsealed 3-of-5 key service.
func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), clock: newClock(), audit: &recorder{}, logs: &testutil.SyncBuffer{}, seed: 1}
	e.path = filepath.Join(e.dir, "keys.db")
	var err error
	if e.signer, err = pqcrypto.GenerateSigningKey(testRand(99)); err != nil {
		t.Fatal(err)
	}
	e.open(false)
	if e.shares, err = e.svc.Initialize(context.Background(), 3, 5); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) config(dev bool) Config {
	e.seed++
	return Config{
		Store: e.store, SigningKey: e.signer, DevMode: dev, Rand: testRand(e.seed), Clock: e.clock,
		Logger: quietLogger(e.logs), Auditor: e.audit,
	}
}

// open (re)opens the store and service.
func (e *env) open(dev bool) error {
	e.t.Helper()
	if e.store != nil {
		e.store.Close()
	}
	var err error
	if e.store, err = OpenSQLite(e.path); err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { e.store.Close() })
	e.svc, err = Open(context.Background(), e.config(dev))
	return err
}

// reopenUnsealed restarts the service and unseals it with three shares.
func (e *env) reopenUnsealed() {
	e.t.Helper()
	if err := e.open(false); err != nil {
		e.t.Fatal(err)
	}
	for _, sh := range e.shares[1:4] {
		if _, err := e.svc.Unseal(context.Background(), sh); err != nil {
			e.t.Fatal(err)
		}
	}
	if e.svc.Status().Sealed {
		e.t.Fatal("still sealed after three shares")
	}
}

// testAgent is an agent identity with its keyring.
type testAgent struct {
	id   string
	sk   *pqcrypto.PrivateKey
	keys *AgentKeys
	path string // keyring file
	dev  *pqcrypto.DataKey
}

func (e *env) newAgent(id string, labels map[string]string) *testAgent {
	e.t.Helper()
	e.seed++
	sk, err := pqcrypto.GenerateXWingKey(testRand(e.seed))
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.svc.RegisterAgent(context.Background(), id, sk.Public(), labels); err != nil {
		e.t.Fatal(err)
	}
	a := &testAgent{id: id, sk: sk, path: filepath.Join(e.dir, id+".keyring")}
	if a.dev, err = LoadOrCreateDeviceKeyFile(filepath.Join(e.dir, id+".device"), testRand(e.seed+1000)); err != nil {
		e.t.Fatal(err)
	}
	a.keys = e.openAgent(a, a.path)
	return a
}

func (e *env) openAgent(a *testAgent, path string) *AgentKeys {
	e.t.Helper()
	e.seed++
	k, err := OpenAgentKeys(context.Background(), AgentConfig{
		AgentID: a.id, PrivateKey: a.sk, ControlPlaneKey: e.signer.Public(), DeviceKey: a.dev,
		Store: FileBlobStore{Path: path}, Rand: testRand(e.seed), Clock: e.clock, Logger: quietLogger(e.logs), Auditor: e.audit,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return k
}

// deliver hands every message to the agent it is addressed to.
func deliver(t testing.TB, msgs []*KeyMessage, agents ...*testAgent) {
	t.Helper()
	for _, m := range msgs {
		b, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range agents {
			if a.id == m.AgentID {
				if _, err := a.keys.Accept(context.Background(), b); err != nil {
					t.Fatalf("agent %s accepting %s v%d: %v", a.id, m.Key, m.Version, err)
				}
			}
		}
	}
}

func mustErr(t testing.TB, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
}

// fileContains reports whether any file starting with path (the database,
// its -wal and -shm) contains needle.
func fileContains(t testing.TB, path string, needle []byte) bool {
	t.Helper()
	matches, _ := filepath.Glob(path + "*")
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, needle) {
			return true
		}
	}
	return false
}

func ctxb() context.Context { return context.Background() }
