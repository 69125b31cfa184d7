package keys

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/internal/testutil"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// memState is replicated state on one store that records broadcasts.
type memState struct {
	s      *crdt.Store
	deltas []crdt.Delta
}

func (m *memState) LiveStore() (*crdt.Store, error) { return m.s, nil }
func (m *memState) Broadcast(d crdt.Delta)          { m.deltas = append(m.deltas, d) }

func newMemState(t *testing.T, name string) *memState {
	t.Helper()
	s, err := crdt.Open(filepath.Join(t.TempDir(), name+".db"), crdt.Options{ReplicaID: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &memState{s: s}
}

func revList(t *testing.T, sign func(*dkms.RevocationList) error, names ...string) []byte {
	t.Helper()
	var agents []dkms.RevokedAgent
	for _, n := range names {
		agents = append(agents, dkms.RevokedAgent{ID: "id-" + n, Name: n, RevokedAt: time.Now()})
	}
	l, err := dkms.NewRevocationList(agents, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := sign(l); err != nil {
		t.Fatal(err)
	}
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRevocationsVerifyCarryAndKeep: a list from the control plane is
// verified, adopted and written into replicated state; a peer reading that
// state adopts it; a list with a bad signature, or an older one, is refused
// with a logged reason and the list held stays, and a bad replicated entry
// is overwritten with the list held.
func TestRevocationsVerifyCarryAndKeep(t *testing.T) {
	f := newGKFleet(t, 2, nil, time.Hour, time.Minute)
	ctx := context.Background()
	sign := f.svc.SignRevocationList
	logs := &testutil.SyncBuffer{}
	stA, stB := newMemState(t, "a"), newMemState(t, "b")
	var got map[string]bool
	reg := prometheus.NewRegistry()
	a, err := NewRevocations(RevocationsConfig{State: stA, Keys: func() *dkms.AgentKeys { return f.nodes[0].keys },
		Changed: func(n map[string]bool) { got = n }, Interval: time.Hour, Logger: testLogger(logs), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	v2 := revList(t, sign, "x", "y")
	if ok, err := a.Offer(ctx, v2, "control_plane"); !ok || err != nil {
		t.Fatalf("offer v2: %v %v", ok, err)
	}
	if !a.Revoked("x") || !a.Revoked("y") || a.Revoked("z") || !got["x"] || a.Version() != 2 {
		t.Fatalf("held %v, changed with %v", a.Version(), got)
	}
	e, ok, _ := stA.s.Get(ctx, RevocationCollection, RevocationKey)
	if !ok || !bytes.Equal(e.Value, v2) || len(stA.deltas) != 1 {
		t.Fatalf("not written into replicated state: %v %d", ok, len(stA.deltas))
	}

	// Bad signature: refused, logged, the list held stays.
	other, _ := pqcrypto.GenerateSigningKey(gkRand(77))
	forged := revList(t, func(l *dkms.RevocationList) error {
		sig, err := other.Sign(dkms.RevocationListContext, nil)
		l.Signature = sig
		return err
	}, "a", "b", "c")
	if ok, err := a.Offer(ctx, forged, "peers"); ok || !errors.Is(err, dkms.ErrBadSignature) {
		t.Fatalf("forged list: %v %v", ok, err)
	}
	if a.Version() != 2 || a.Revoked("a") || !strings.Contains(logs.String(), "reason=bad_signature") {
		t.Fatalf("after a forged list: v%d, log %s", a.Version(), logs.String())
	}
	// Older: not adopted.
	if ok, err := a.Offer(ctx, revList(t, sign, "x"), "peers"); ok || err != nil || a.Version() != 2 {
		t.Fatalf("older list: %v %v v%d", ok, err, a.Version())
	}
	// A peer writes the forged list into replicated state: a refuses it
	// and writes its own back.
	if _, err := stA.s.Put(ctx, RevocationCollection, RevocationKey, forged); err != nil {
		t.Fatal(err)
	}
	a.Scan(ctx)
	if e, _, _ := stA.s.Get(ctx, RevocationCollection, RevocationKey); !bytes.Equal(e.Value, v2) {
		t.Fatal("the forged entry was left in replicated state")
	}
	if a.Version() != 2 {
		t.Fatal("the held list was lost")
	}
	// Agent b cannot reach the control plane: it learns the list from
	// replicated state (here: a's deltas merged into b's store).
	if _, err := stB.s.Merge(ctx, stA.deltas); err != nil {
		t.Fatal(err)
	}
	b, err := NewRevocations(RevocationsConfig{State: stB, Keys: func() *dkms.AgentKeys { return f.nodes[1].keys }, Interval: time.Hour, Logger: testLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	b.Scan(ctx)
	if !b.Revoked("x") || b.Version() != 2 {
		t.Fatalf("b did not learn the list from peers: v%d", b.Version())
	}
}

func testLogger(w *testutil.SyncBuffer) *slog.Logger { return slog.New(slog.NewTextHandler(w, nil)) }

// TestRotatorEndGraceRemovesBootstrapKey: after the takeover by a dkms
// version the bootstrap key stays installed for its grace period (an
// hour) unless EndGrace (a revocation) shortens it to endedGrace: at once
// when the takeover is older, else endedGrace after it.
func TestRotatorEndGraceRemovesBootstrapKey(t *testing.T) {
	bootstrap := bytes.Repeat([]byte{0xb0}, 32)
	v2 := bytes.Repeat([]byte{0x02}, 32)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	newRotator := func(activate time.Time) (*Rotator, *clock.Manual, *atomic.Bool) {
		t.Helper()
		clk := clock.NewManual(now)
		var delivered atomic.Bool
		kr, err := memberlist.NewKeyring(nil, bootstrap)
		if err != nil {
			t.Fatal(err)
		}
		r, err := NewRotator(RotatorConfig{Keyring: kr, Bootstrap: bootstrap, Clock: clk, Logger: testLogger(&testutil.SyncBuffer{}),
			Source: func(time.Time) (dkms.GossipKeyring, error) {
				if !delivered.Load() {
					return dkms.GossipKeyring{}, dkms.ErrUnknownKey
				}
				return dkms.GossipKeyring{Primary: 2, Keys: []dkms.GossipKeyVersion{{Version: 2, Key: v2, State: dkms.StatePrimary, ActivateAt: activate}}}, nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		return r, clk, &delivered
	}

	// Taken over a minute ago: the bootstrap key stays until EndGrace.
	r, clk, delivered := newRotator(now.Add(-time.Minute))
	delivered.Store(true)
	if err := r.Apply(); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	r.Apply()
	if st := r.State(); st.Primary != 2 || !st.Bootstrap {
		t.Fatalf("after the takeover: %+v, want v2 primary and the bootstrap key kept for its grace", st)
	}
	r.EndGrace()
	if st := r.State(); st.Bootstrap || len(st.Versions) != 1 {
		t.Fatalf("after EndGrace: %+v", st)
	}

	// EndGrace before the takeover: the bootstrap key leaves endedGrace
	// after it.
	r, clk, delivered = newRotator(now.Add(time.Minute))
	r.EndGrace()
	delivered.Store(true)
	clk.Advance(time.Minute)
	r.Apply()
	if st := r.State(); st.Primary != 2 || !st.Bootstrap {
		t.Fatalf("at the takeover: %+v, want the bootstrap key kept endedGrace", st)
	}
	if next := r.Next(); !next.Equal(now.Add(time.Minute + endedGrace)) {
		t.Fatalf("next step at %v, want the end of the shortened grace", next)
	}
	clk.Advance(endedGrace)
	r.Apply()
	if st := r.State(); st.Bootstrap {
		t.Fatalf("endedGrace after the takeover: %+v", st)
	}
}
