package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/keys"
	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/agent/replication"
	dto "github.com/prometheus/client_model/go"
)

func TestClusterConverges(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	agents := c.startN(4)
	waitFor(t, 10*time.Second, "membership", func() (bool, string) { return allAlive(agents) })
	ctx := context.Background()
	for i, a := range agents {
		for k := 0; k < 5; k++ {
			if err := a.Put(ctx, "devices", fmt.Sprintf("d%d-%d", i, k), []byte(fmt.Sprintf(`{"n":%d}`, k))); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.SetAdd(ctx, "tags", "from-"+a.Name()); err != nil {
			t.Fatal(err)
		}
		if err := a.CounterAdd(ctx, "seen", "total", int64(i+1)); err != nil {
			t.Fatal(err)
		}
		if err := a.MVPut(ctx, "config", "mode", []byte(a.Name())); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "convergence", func() (bool, string) { return sameState(agents) })
	for _, a := range agents {
		entries, err := a.Store().List(ctx, "devices")
		if err != nil || len(entries) != 20 {
			t.Fatalf("%s holds %d devices (%v)", a.Name(), len(entries), err)
		}
		n, err := a.Store().CounterValue(ctx, "seen", "total")
		if err != nil || n != 10 {
			t.Fatalf("%s counter = %d (%v)", a.Name(), n, err)
		}
		vals, err := a.Store().MVGet(ctx, "config", "mode")
		if err != nil || len(vals) == 0 {
			t.Fatalf("%s mvreg = %q (%v)", a.Name(), vals, err)
		}
		st := a.Stats()
		if st.GossipBytesSent == 0 || st.GossipBytesReceived == 0 || st.GossipMessagesSent == 0 {
			t.Errorf("%s traffic not counted: %+v", a.Name(), st)
		}
		if st.Rejected != 0 {
			t.Errorf("%s rejected %d messages of a healthy cluster", a.Name(), st.Rejected)
		}
	}
	var applied uint64
	for _, a := range agents {
		applied += a.Stats().DeltasApplied
	}
	// Every agent lacks 3*8 = 24 of the 32 ops (at least: counters and
	// registers may be superseded before they arrive, so merely >= 1 each).
	if applied == 0 {
		t.Error("no remote deltas applied")
	}
	m := agents[0].Members()
	if len(m) != 4 || m[1].Meta.ID != m[1].Name || m[1].Meta.Version != Version {
		t.Errorf("members/meta: %+v", m)
	}
	if got := mustGauge(t, agents[0], "edgefleet_members", "alive"); got != 4 {
		t.Errorf("edgefleet_members{state=alive} = %v", got)
	}
}

// mustGauge finds a metric with the given state/dir label value on the
// agent's registry.
func mustGauge(t *testing.T, a *Agent, name, labelValue string) float64 {
	t.Helper()
	mfs, err := a.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == labelValue {
					return m.GetGauge().GetValue() + m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("metric %s{%s} not found", name, labelValue)
	return 0
}

// TestPartitionHealConverges: a cut network keeps accepting writes on both
// sides; members declared dead rejoin by themselves after the heal, and all
// writes converge.
func TestPartitionHealConverges(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	agents := c.startN(4)
	waitFor(t, 10*time.Second, "membership", func() (bool, string) { return allAlive(agents) })
	ctx := context.Background()
	if err := agents[0].Put(ctx, "kv", "before", []byte("1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "pre-partition convergence", func() (bool, string) { return sameState(agents) })

	left, right := agents[:2], agents[2:]
	c.part.Split([]string{left[0].GossipAddr(), left[1].GossipAddr()}, []string{right[0].GossipAddr(), right[1].GossipAddr()})
	// Wait until each side has declared the other dead.
	waitFor(t, 15*time.Second, "failure detection across the partition", func() (bool, string) {
		for _, a := range agents {
			dead := 0
			for _, m := range a.Members() {
				if m.State == StateDead {
					dead++
				}
			}
			if dead != 2 {
				return false, fmt.Sprintf("%s sees %d dead: %v", a.Name(), dead, a.Members())
			}
		}
		return true, ""
	})
	// Outlast memberlist's gossip to the dead (2 s in the test profile):
	// from then on only the reconnect loop can bring the sides together.
	time.Sleep(2500 * time.Millisecond)
	for i, a := range agents {
		for k := 0; k < 10; k++ {
			if err := a.Put(ctx, "kv", fmt.Sprintf("%s-%d", a.Name(), k), []byte(fmt.Sprint(i*k))); err != nil {
				t.Fatal(err)
			}
		}
		if err := a.Put(ctx, "kv", "contested", []byte(a.Name())); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 10*time.Second, "each side converging on its own", func() (bool, string) {
		if ok, d := sameState(left); !ok {
			return false, d
		}
		return sameState(right)
	})
	if ok, _ := sameState(agents); ok {
		t.Fatal("state converged across a partition")
	}

	healed := time.Now()
	c.part.Heal()
	waitFor(t, 15*time.Second, "rejoin after heal", func() (bool, string) { return allAlive(agents) })
	waitFor(t, 15*time.Second, "convergence after heal", func() (bool, string) { return sameState(agents) })
	t.Logf("converged %v after heal", time.Since(healed).Round(time.Millisecond))
	var reconnects uint64
	for _, a := range agents {
		reconnects += a.Stats().Reconnects
	}
	if reconnects == 0 {
		t.Error("sides rejoined without the reconnect loop")
	}
	for _, a := range agents {
		entries, err := a.Store().List(ctx, "kv")
		if err != nil || len(entries) != 42 {
			t.Fatalf("%s holds %d keys (%v)", a.Name(), len(entries), err)
		}
	}
}

// TestKilledAgentRestartsAndCatchesUp: an agent killed without leaving and
// restarted on its data dir (on a new port) keeps its acknowledged writes,
// rejoins and catches up with what it missed.
func TestKilledAgentRestartsAndCatchesUp(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	agents := c.startN(3)
	waitFor(t, 10*time.Second, "membership", func() (bool, string) { return allAlive(agents) })
	ctx := context.Background()
	victim := agents[2]
	for k := 0; k < 20; k++ {
		if err := victim.Put(ctx, "kv", fmt.Sprintf("acked-%d", k), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	for k := 0; k < 20; k++ {
		if err := agents[k%2].Put(ctx, "kv", fmt.Sprintf("missed-%d", k), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	restarted := c.start("a2", []string{agents[0].GossipAddr()}, nil)
	now := []*Agent{agents[0], agents[1], restarted}
	for k := 0; k < 20; k++ {
		if _, ok, err := restarted.Store().Get(ctx, "kv", fmt.Sprintf("acked-%d", k)); err != nil || !ok {
			t.Fatalf("acknowledged write acked-%d lost across kill (%v)", k, err)
		}
	}
	waitFor(t, 15*time.Second, "restarted agent alive everywhere", func() (bool, string) { return allAlive(now) })
	waitFor(t, 15*time.Second, "catch-up", func() (bool, string) { return sameState(now) })
	entries, err := restarted.Store().List(ctx, "kv")
	if err != nil || len(entries) != 40 {
		t.Fatalf("restarted agent holds %d keys (%v)", len(entries), err)
	}
}

func TestGracefulStopIsSeenAsLeft(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	agents := c.startN(3)
	waitFor(t, 10*time.Second, "membership", func() (bool, string) { return allAlive(agents) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := agents[2].Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := agents[2].Put(ctx, "kv", "k", nil); err == nil {
		t.Fatal("write accepted after Stop")
	}
	waitFor(t, 5*time.Second, "left state", func() (bool, string) {
		for _, a := range agents[:2] {
			for _, m := range a.Members() {
				if m.Name == "a2" && m.State != StateLeft {
					return false, fmt.Sprintf("%s sees a2 %s", a.Name(), m.State)
				}
			}
		}
		return true, ""
	})
	// The reconnect loop leaves members that left alone.
	time.Sleep(500 * time.Millisecond)
	for _, m := range agents[0].Members() {
		if m.Name == "a2" && m.State != StateLeft {
			t.Fatalf("a2 came back as %s", m.State)
		}
	}
}

func TestForeignClusterRejected(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	home := c.start("home", nil, nil)
	ml := home.cluster.Memberlist()

	// Same key, another cluster name: memberlist's label check drops it.
	other := c.start("other", nil, func(cfg *Config) { cfg.Gossip.Cluster = "elsewhere" })
	if _, err := other.cluster.Memberlist().Join([]string{home.GossipAddr()}); err == nil {
		t.Fatal("agent of another cluster joined")
	}
	// Right name, wrong key: decryption fails.
	wrongKey := c.start("wrongkey", nil, func(cfg *Config) { cfg.Gossip.Key = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=" })
	if _, err := wrongKey.cluster.Memberlist().Join([]string{home.GossipAddr()}); err == nil {
		t.Fatal("agent with another key joined")
	}
	// No encryption at all.
	plain := c.start("plain", nil, func(cfg *Config) { cfg.Gossip.Encrypt = false; cfg.Gossip.Key = "" })
	if _, err := plain.cluster.Memberlist().Join([]string{home.GossipAddr()}); err == nil {
		t.Fatal("unencrypted agent joined")
	}
	waitFor(t, 5*time.Second, "rejections counted", func() (bool, string) {
		foreign := rejectedCount(home, membership.ReasonForeignCluster)
		decrypt := rejectedCount(home, membership.ReasonDecrypt)
		return foreign >= 1 && decrypt >= 2, fmt.Sprintf("foreign=%v decrypt=%v", foreign, decrypt)
	})
	if ml.NumMembers() != 1 {
		t.Fatalf("home has %d members", ml.NumMembers())
	}
	for _, m := range home.Members() {
		if m.Name != "home" {
			t.Fatalf("home learned of %s", m.Name)
		}
	}
}

func TestMalformedMessagesRejectedAndCounted(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	agents := c.startN(2)
	waitFor(t, 10*time.Second, "membership", func() (bool, string) { return allAlive(agents) })
	ctx := context.Background()
	if err := agents[1].Put(ctx, "kv", "keep", []byte("me")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "convergence", func() (bool, string) { return sameState(agents) })
	before, _ := agents[1].Store().StateHash(ctx)

	sender := agents[0].cluster.Memberlist()
	node, ok := agents[0].peers.Load().Lookup("a1")
	if !ok {
		t.Fatal("a1 unknown to a0")
	}
	bad := map[string][]byte{
		replication.ReasonUnknownType:  {99, 1, 2, 3},
		membership.ReasonMalformed:     {replication.TypeSyncReq, 200},
		replication.ReasonInvalidDelta: {replication.TypeDeltas, 0xff, 0xff, 0xff},
		replication.ReasonOwnName:      mustEncode(t, replication.Message{Type: replication.TypeSyncReq, From: "a1", Addr: agents[0].GossipAddr()}),
	}
	for reason, msg := range bad {
		if err := sender.SendReliable(node, msg); err != nil {
			t.Fatalf("%s: %v", reason, err)
		}
		if err := sender.SendBestEffort(node, msg); err != nil {
			t.Fatalf("%s: %v", reason, err)
		}
	}
	waitFor(t, 5*time.Second, "rejections counted", func() (bool, string) {
		var missing []string
		for reason := range bad {
			if rejectedCount(agents[1], reason) < 2 {
				missing = append(missing, reason)
			}
		}
		return len(missing) == 0, fmt.Sprintf("not counted twice: %v", missing)
	})
	after, _ := agents[1].Store().StateHash(ctx)
	if after != before {
		t.Fatal("bad messages changed the state")
	}
	// The agent still works.
	if err := agents[0].Put(ctx, "kv", "still", []byte("ok")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "convergence after bad input", func() (bool, string) { return sameState(agents) })
}

func mustEncode(t *testing.T, m replication.Message) []byte {
	t.Helper()
	b, err := replication.Encode(m, nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestGeneratedGossipKey(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("gen", nil, func(cfg *Config) { cfg.Gossip.Key = "" })
	path := filepath.Join(c.dirs["gen"], keys.GossipKeyFile)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("gossip.key mode %v", st.Mode().Perm())
	}
	first, _ := os.ReadFile(path)
	if _, err := keys.DecodeGossipKey(strings.TrimSpace(string(first))); err != nil {
		t.Fatal(err)
	}
	a.Kill()
	c.start("gen", nil, func(cfg *Config) { cfg.Gossip.Key = "" })
	second, _ := os.ReadFile(path)
	if string(first) != string(second) {
		t.Fatal("key regenerated on restart")
	}
	// A peer configured with the same key joins.
	peer := c.start("peer", []string{c.get("gen").GossipAddr()}, func(cfg *Config) { cfg.Gossip.Key = strings.TrimSpace(string(first)) })
	waitFor(t, 10*time.Second, "join with generated key", func() (bool, string) { return allAlive([]*Agent{c.get("gen"), peer}) })
}

func TestNodeNameRecordedInDataDir(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	a := c.start("first", nil, nil)
	a.Kill()
	cfg := testConfig(t, "second")
	cfg.DataDir = c.dirs["first"]
	b, err := New(cfg, Deps{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(context.Background()); err == nil || !strings.Contains(err.Error(), "first") {
		b.Kill()
		t.Fatalf("start with another name on the data dir: %v", err)
	}
	// With no name configured, the recorded one is adopted.
	again := c.start("first", nil, func(cfg *Config) { cfg.NodeName = "" })
	if again.Name() != "first" || again.Store().ReplicaID() != "first" {
		t.Fatalf("name %q replica %q", again.Name(), again.Store().ReplicaID())
	}
}

// rejectedCount reads edgefleet_gossip_rejected_total{reason}.
func rejectedCount(a *Agent, reason string) float64 {
	var m dto.Metric
	if err := a.m.rejectedVec.WithLabelValues(reason).Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
