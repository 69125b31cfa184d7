package keys

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/edgefleet/edgefleet/clock"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/internal/testutil"
	"github.com/edgefleet/edgefleet/pqcrypto"
	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// Tests of the gossip keyring rotator: unit tests against a keyring and a
// scripted key source, and real memberlist clusters on 127.0.0.1 whose
// rotators read the keys a real dkms.Service distributed to each node's
// dkms.AgentKeys. The schedule runs on a fake clock advanced by the tests
// (except in TestGossipRotatorRunLoopRealClock); memberlist runs in real
// time with the "test" profile.

var gkEpoch = time.Date(2026, 5, 1, 8, 0, 0, 0, time.UTC)

// gkClock is the tests' settable clock.
type gkClock = clock.Manual

// realClock is the system clock, for fleets run without a gkClock.
var realClock = clock.Real()

func gkRand(seed uint64) io.Reader {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	s[31] = 0x6b
	return rand.NewChaCha8(s)
}

// gkMLLog is memberlist's log sink: it counts the messages no installed
// key could decrypt and keeps the error and warning lines.
type gkMLLog struct {
	mu      sync.Mutex
	decrypt int
	lines   []string
}

func (l *gkMLLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if strings.Contains(strings.ToLower(line), "no installed keys could decrypt") {
			l.decrypt++
		}
		if strings.Contains(line, "[ERR]") || strings.Contains(line, "[WARN]") {
			l.lines = append(l.lines, line)
		}
	}
	return len(p), nil
}

func (l *gkMLLog) failures() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.decrypt
}

func (l *gkMLLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) > 10 {
		return strings.Join(l.lines[len(l.lines)-10:], "\n")
	}
	return strings.Join(l.lines, "\n")
}

// gkDelegate records user messages and leave events.
type gkDelegate struct {
	q      *memberlist.TransmitLimitedQueue
	mu     sync.Mutex
	got    map[string]bool
	leaves []string
}

type gkBroadcast []byte

func (b gkBroadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b gkBroadcast) Message() []byte                       { return b }
func (b gkBroadcast) Finished()                             {}

func (d *gkDelegate) NodeMeta(int) []byte { return nil }

// NotifyMsg records a message; a broadcast seen for the first time is
// relayed, so broadcasts spread through the whole cluster.
func (d *gkDelegate) NotifyMsg(b []byte) {
	d.mu.Lock()
	seen := d.got[string(b)]
	d.got[string(b)] = true
	d.mu.Unlock()
	if !seen && bytes.HasPrefix(b, []byte("b/")) {
		d.q.QueueBroadcast(gkBroadcast(bytes.Clone(b)))
	}
}
func (d *gkDelegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.q.GetBroadcasts(overhead, limit)
}
func (d *gkDelegate) LocalState(bool) []byte        { return nil }
func (d *gkDelegate) MergeRemoteState([]byte, bool) {}
func (d *gkDelegate) NotifyJoin(*memberlist.Node)   {}
func (d *gkDelegate) NotifyUpdate(*memberlist.Node) {}
func (d *gkDelegate) NotifyLeave(n *memberlist.Node) {
	d.mu.Lock()
	d.leaves = append(d.leaves, n.Name)
	d.mu.Unlock()
}

func (d *gkDelegate) has(msg string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.got[msg]
}

func (d *gkDelegate) leaveEvents() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.leaves)
}

// gkFleet is a key service and the nodes it gives gossip keys to.
type gkFleet struct {
	t         *testing.T
	ctx       context.Context
	clock     *gkClock
	clk       clock.Clock
	svc       *dkms.Service
	bootstrap []byte
	grace     time.Duration
	first     time.Duration
	nodes     []*gkNode
	dir       string
	quiet     *slog.Logger
	rng       *rand.Rand

	sent     map[*gkNode][]string // messages each node must have received
	sendErrs []string
}

// gkNode is one memberlist instance with its dkms keyring and rotator.
type gkNode struct {
	f       *gkFleet
	name    string
	sk      *pqcrypto.PrivateKey
	device  *pqcrypto.DataKey
	keys    *dkms.AgentKeys
	mlLog   *gkMLLog
	rotLog  *testutil.SyncBuffer
	d       *gkDelegate
	ml      *memberlist.Memberlist
	kr      *memberlist.Keyring
	rot     *Rotator
	reg     *prometheus.Registry
	wake    chan struct{}
	stopRun context.CancelFunc
	runDone chan struct{}
}

// newGKFleet starts a key service (dev mode, SQLite) and registers n agents.
// A nil clock means the real clock.
func newGKFleet(t *testing.T, n int, clock *gkClock, grace, first time.Duration) *gkFleet {
	t.Helper()
	f := &gkFleet{
		t: t, ctx: context.Background(), clock: clock, dir: t.TempDir(),
		bootstrap: bytes.Repeat([]byte{0xb0}, 32), grace: grace, first: first,
		quiet: slog.New(slog.NewTextHandler(io.Discard, nil)),
		rng:   rand.New(rand.NewPCG(7, 11)), sent: map[*gkNode][]string{},
	}
	f.clk = realClock
	if clock != nil {
		f.clk = clock
	}
	store, err := dkms.OpenSQLite(filepath.Join(f.dir, "keys.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	signer, err := pqcrypto.GenerateSigningKey(gkRand(1))
	if err != nil {
		t.Fatal(err)
	}
	cfg := dkms.Config{Store: store, SigningKey: signer, DevMode: true, Rand: gkRand(2), Logger: f.quiet}
	cfg.Clock = f.clk
	if f.svc, err = dkms.Open(f.ctx, cfg); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		nd := &gkNode{f: f, name: fmt.Sprintf("gk-%c", 'a'+i), mlLog: &gkMLLog{}, rotLog: &testutil.SyncBuffer{}}
		if nd.sk, err = pqcrypto.GenerateXWingKey(gkRand(uint64(10 + i))); err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.RegisterAgent(f.ctx, nd.name, nd.sk.Public(), nil); err != nil {
			t.Fatal(err)
		}
		if nd.device, err = dkms.NewDeviceKey(bytes.Repeat([]byte{byte(0x40 + i)}, 32)); err != nil {
			t.Fatal(err)
		}
		nd.openKeys()
		f.nodes = append(f.nodes, nd)
	}
	t.Cleanup(func() {
		for _, nd := range f.nodes {
			nd.shutdown()
		}
	})
	return f
}

// openKeys (re)opens the node's dkms keyring from its file, as a restart does.
func (n *gkNode) openKeys() {
	n.f.t.Helper()
	k, err := dkms.OpenAgentKeys(n.f.ctx, dkms.AgentConfig{
		AgentID: n.name, PrivateKey: n.sk, ControlPlaneKey: n.f.svc.VerifyingKey(), DeviceKey: n.device,
		Store: dkms.FileBlobStore{Path: filepath.Join(n.f.dir, n.name+".keyring")},
		Clock: n.f.clk, Rand: gkRand(99), Logger: n.f.quiet,
	})
	if err != nil {
		n.f.t.Fatal(err)
	}
	n.keys = k
}

// start creates the rotator, applies it, starts memberlist and joins
// seeds; it returns the join error as the agent would log it.
func (n *gkNode) start(seeds ...string) error {
	t := n.f.t
	t.Helper()
	kr, err := memberlist.NewKeyring(nil, n.f.bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	n.kr, n.reg = kr, prometheus.NewRegistry()
	var clk clock.Clock // nil: the real clock
	if n.f.clock != nil {
		clk = n.f.clock
	}
	n.rot, err = NewRotator(RotatorConfig{
		Keyring:         kr,
		Source:          func(now time.Time) (dkms.GossipKeyring, error) { return n.keys.GossipKeyring("gossip", now) },
		Bootstrap:       n.f.bootstrap,
		Grace:           n.f.grace,
		FirstActivation: n.f.first,
		Clock:           clk,
		Logger:          slog.New(slog.NewTextHandler(n.rotLog, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", n.name),
		Registry:        n.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.rot.Apply(); err != nil {
		t.Fatalf("%s: first Apply: %v", n.name, err)
	}
	conf := membership.Profile(membership.ProfileTest)
	// The tests check keys, not latency: a loopback dial or stream slowed
	// past the profile's 1 s by a loaded machine (-race) is not a
	// failure of the rotation.
	conf.TCPTimeout = 10 * time.Second
	conf.Name = n.name
	conf.BindAddr = "127.0.0.1"
	conf.BindPort = 0
	conf.Label = "gk-test"
	conf.Keyring = kr
	conf.GossipVerifyIncoming = true
	conf.GossipVerifyOutgoing = true
	conf.Logger = log.New(n.mlLog, "", 0)
	n.d = &gkDelegate{got: map[string]bool{}}
	// Broadcasts are best effort (the agent repairs losses by anti-entropy);
	// these are sent often enough that every node gets each one.
	n.d.q = &memberlist.TransmitLimitedQueue{RetransmitMult: 10}
	conf.Delegate = n.d
	conf.Events = n.d
	ml, err := memberlist.Create(conf)
	if err != nil {
		t.Fatal(err)
	}
	n.d.q.NumNodes = ml.NumMembers
	n.ml = ml
	if len(seeds) == 0 {
		return nil
	}
	_, err = ml.Join(seeds)
	return n.rot.JoinFailed(err)
}

// runLoop starts the rotator's run loop with a wake channel.
func (n *gkNode) runLoop() {
	ctx, cancel := context.WithCancel(context.Background())
	n.wake, n.stopRun, n.runDone = make(chan struct{}, 1), cancel, make(chan struct{})
	go func() {
		defer close(n.runDone)
		n.rot.Run(ctx, n.wake)
	}()
}

func (n *gkNode) addr() string { return n.ml.LocalNode().Address() }

func (n *gkNode) running() bool { return n.ml != nil }

// stop leaves the cluster and shuts memberlist down.
func (n *gkNode) stop() {
	if n.ml == nil {
		return
	}
	if err := n.ml.Leave(time.Second); err != nil {
		n.f.t.Logf("%s: leave: %v", n.name, err)
	}
	n.shutdown()
}

func (n *gkNode) shutdown() {
	if n.stopRun != nil {
		n.stopRun()
		<-n.runDone
		n.stopRun = nil
	}
	if n.ml != nil {
		n.ml.Shutdown()
		n.ml = nil
	}
}

func (f *gkFleet) running() []*gkNode {
	var out []*gkNode
	for _, n := range f.nodes {
		if n.running() {
			out = append(out, n)
		}
	}
	return out
}

// startAll starts every node, joining the first.
func (f *gkFleet) startAll() {
	f.t.Helper()
	for i, n := range f.nodes {
		var err error
		if i == 0 {
			err = n.start()
		} else {
			err = n.start(f.nodes[0].addr())
		}
		if err != nil {
			f.t.Fatalf("%s: join: %v", n.name, err)
		}
	}
	f.waitAllAlive(10 * time.Second)
}

// waitAllAlive waits until every running node sees every running node alive.
func (f *gkFleet) waitAllAlive(timeout time.Duration) {
	f.t.Helper()
	testutil.WaitFor(f.t, timeout, "every node to see every node alive", func() (bool, string) {
		nodes := f.running()
		for _, n := range nodes {
			alive := 0
			for _, m := range n.ml.Members() {
				if m.State == memberlist.StateAlive {
					alive++
				}
			}
			if alive != len(nodes) {
				return false, fmt.Sprintf("%s sees %d/%d alive", n.name, alive, len(nodes))
			}
		}
		return true, ""
	})
}

// deliver distributes version v of the gossip key to the running nodes in
// random order, each accepting its encoded message and applying its
// rotator (or waking its run loop) at once.
func (f *gkFleet) deliver(v uint32) {
	f.t.Helper()
	msgs, err := f.svc.Distribute(f.ctx, "gossip", v)
	if err != nil {
		f.t.Fatal(err)
	}
	f.rng.Shuffle(len(msgs), func(i, j int) { msgs[i], msgs[j] = msgs[j], msgs[i] })
	for _, m := range msgs {
		n := f.node(m.AgentID)
		if !n.running() {
			continue // offline: the message waits at the control plane
		}
		raw, err := m.MarshalBinary()
		if err != nil {
			f.t.Fatal(err)
		}
		if _, err := n.keys.Accept(f.ctx, raw); err != nil {
			f.t.Fatalf("%s: accepting v%d: %v", n.name, v, err)
		}
		n.notify()
		time.Sleep(5 * time.Millisecond)
	}
}

// notify tells the node's rotator that keys changed.
func (n *gkNode) notify() {
	if n.rot == nil {
		return // not started: its first Apply will see the keys
	}
	if n.wake != nil {
		select {
		case n.wake <- struct{}{}:
		default:
		}
		return
	}
	if err := n.rot.Apply(); err != nil {
		n.f.t.Fatalf("%s: Apply: %v", n.name, err)
	}
}

// catchUp gives the node everything the control plane holds for it.
func (n *gkNode) catchUp() {
	n.f.t.Helper()
	msgs, err := n.f.svc.CatchUp(n.f.ctx, n.name)
	if err != nil {
		n.f.t.Fatal(err)
	}
	for _, m := range msgs {
		raw, err := m.MarshalBinary()
		if err != nil {
			n.f.t.Fatal(err)
		}
		if _, err := n.keys.Accept(n.f.ctx, raw); err != nil {
			n.f.t.Fatalf("%s: catch-up v%d: %v", n.name, m.Version, err)
		}
	}
	n.notify()
}

func (f *gkFleet) node(name string) *gkNode {
	for _, n := range f.nodes {
		if n.name == name {
			return n
		}
	}
	f.t.Fatalf("no node %q", name)
	return nil
}

// applyAll applies every running node's rotator in random order, a few
// milliseconds apart (agents never act at the same instant).
func (f *gkFleet) applyAll() {
	f.t.Helper()
	nodes := f.running()
	f.rng.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
	for _, n := range nodes {
		if err := n.rot.Apply(); err != nil {
			f.t.Fatalf("%s: Apply: %v", n.name, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkRings checks that every running node's memberlist keyring holds
// exactly what dkms plans now (plus the bootstrap key when wantBootstrap),
// with the planned primary.
func (f *gkFleet) checkRings(wantBootstrap bool) {
	f.t.Helper()
	for _, n := range f.running() {
		plan, err := n.keys.GossipKeyring("gossip", f.clk.Now())
		if err != nil {
			f.t.Fatalf("%s: plan: %v", n.name, err)
		}
		st := n.rot.State()
		if !slices.Equal(st.Versions, plan.Versions()) || st.Bootstrap != wantBootstrap {
			f.t.Fatalf("%s: keyring holds %+v, dkms plans %v (bootstrap %v)", n.name, st, plan.Versions(), wantBootstrap)
		}
		want := len(plan.Keys)
		if wantBootstrap {
			want++
		}
		if got := len(n.kr.GetKeys()); got != want {
			f.t.Fatalf("%s: memberlist keyring has %d keys, want %d", n.name, got, want)
		}
		if st.Primary != plan.Primary && !(st.Primary == 0 && wantBootstrap) {
			f.t.Fatalf("%s: primary v%d, dkms plans v%d", n.name, st.Primary, plan.Primary)
		}
		if !bytes.Equal(n.kr.GetPrimaryKey(), keyOfState(n, st.Primary)) {
			f.t.Fatalf("%s: memberlist's primary key is not v%d's", n.name, st.Primary)
		}
	}
}

func keyOfState(n *gkNode, v uint32) []byte {
	if v == 0 {
		return n.f.bootstrap
	}
	vs, _ := n.keys.GossipVersions("gossip")
	for _, k := range vs {
		if k.Version == v {
			return k.Key
		}
	}
	return nil
}

// traffic sends one reliable (TCP stream) message from every running node
// to every other and queues one broadcast on each; all must arrive.
func (f *gkFleet) traffic(tag string) {
	nodes := f.running()
	for _, from := range nodes {
		for _, to := range nodes {
			if to == from {
				continue
			}
			var target *memberlist.Node
			for _, m := range from.ml.Members() {
				if m.Name == to.name {
					target = m
				}
			}
			msg := fmt.Sprintf("r/%s/%s/%s", tag, from.name, to.name)
			if target == nil {
				f.sendErrs = append(f.sendErrs, fmt.Sprintf("%s: %s not a member", msg, to.name))
				continue
			}
			if err := from.ml.SendReliable(target, []byte(msg)); err != nil {
				f.sendErrs = append(f.sendErrs, fmt.Sprintf("%s: %v", msg, err))
				continue
			}
			f.sent[to] = append(f.sent[to], msg)
		}
		b := fmt.Sprintf("b/%s/%s", tag, from.name)
		from.d.q.QueueBroadcast(gkBroadcast(b))
		for _, to := range nodes {
			if to != from {
				f.sent[to] = append(f.sent[to], b)
			}
		}
	}
}

// checkDelivered waits for every message traffic sent.
func (f *gkFleet) checkDelivered() {
	f.t.Helper()
	if len(f.sendErrs) > 0 {
		f.t.Fatalf("%d sends failed, first: %s", len(f.sendErrs), f.sendErrs[0])
	}
	total := 0
	for _, msgs := range f.sent {
		total += len(msgs)
	}
	testutil.WaitFor(f.t, 10*time.Second, "every message delivered", func() (bool, string) {
		for n, msgs := range f.sent {
			for _, m := range msgs {
				if !n.d.has(m) {
					return false, fmt.Sprintf("%s lacks %s", n.name, m)
				}
			}
		}
		return true, ""
	})
	f.t.Logf("%d messages delivered (reliable and broadcast), none lost", total)
}

// decryptFailures sums the decryption failures memberlist logged.
func (f *gkFleet) decryptFailures(except ...*gkNode) (int, string) {
	sum, detail := 0, ""
	for _, n := range f.nodes {
		if slices.Contains(except, n) {
			continue
		}
		if c := n.mlLog.failures(); c > 0 {
			sum += c
			detail += fmt.Sprintf("\n%s (%d):\n%s", n.name, c, n.mlLog)
		}
	}
	return sum, detail
}

// gkMonitor samples every running node's member list until stopped and
// records every moment one of them sees fewer members than it should.
type gkMonitor struct {
	once       sync.Once
	stop       chan struct{}
	done       chan struct{}
	samples    atomic.Int64
	suspects   atomic.Int64
	mu         sync.Mutex
	violations []string
}

func (f *gkFleet) monitor() *gkMonitor {
	type member struct {
		name string
		ml   *memberlist.Memberlist
	}
	var nodes []member
	for _, n := range f.running() {
		nodes = append(nodes, member{n.name, n.ml})
	}
	m := &gkMonitor{stop: make(chan struct{}), done: make(chan struct{})}
	f.t.Cleanup(m.halt)
	go func() {
		defer close(m.done)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-m.stop:
				return
			case <-tick.C:
			}
			for _, n := range nodes {
				members := n.ml.Members() // alive and suspect; dead and left are not members
				for _, mb := range members {
					if mb.State == memberlist.StateSuspect {
						m.suspects.Add(1)
					}
				}
				if len(members) != len(nodes) {
					m.mu.Lock()
					m.violations = append(m.violations, fmt.Sprintf("%s saw %d/%d members", n.name, len(members), len(nodes)))
					m.mu.Unlock()
				}
			}
			m.samples.Add(1)
		}
	}()
	return m
}

func (m *gkMonitor) halt() {
	m.once.Do(func() { close(m.stop) })
	<-m.done
}

// finish stops the monitor and fails the test if membership ever split.
func (m *gkMonitor) finish(t *testing.T, f *gkFleet) {
	t.Helper()
	m.halt()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.violations) > 0 {
		t.Fatalf("membership split in %d samples, first: %s", len(m.violations), m.violations[0])
	}
	for _, n := range f.running() {
		if l := n.d.leaveEvents(); len(l) > 0 {
			t.Fatalf("%s saw members fail or leave: %v", n.name, l)
		}
	}
	t.Logf("membership sampled %d times: one cluster throughout (%d suspect observations)", m.samples.Load(), m.suspects.Load())
}

// gossipPolicy schedules each gossip key version to become primary 20 s
// after its creation and the versions before it to leave 25 s after that.
var gossipPolicy = dkms.Policy{AllAgents: true, InstallGrace: 20 * time.Second, RemoveGrace: 25 * time.Second}

// activeFleet is a fleet of n nodes gossiping under gossip key v1 (the
// bootstrap key's grace period over), at fake time gkEpoch+2m.
func activeFleet(t *testing.T, n int, policy dkms.Policy) *gkFleet {
	t.Helper()
	clock := clock.NewManual(gkEpoch)
	f := newGKFleet(t, n, clock, 30*time.Second, time.Minute)
	if _, err := f.svc.CreateKey(f.ctx, "gossip", dkms.PurposeGossip, policy); err != nil {
		t.Fatal(err)
	}
	for _, nd := range f.nodes {
		nd.catchUp() // before the node runs: nothing to apply yet
	}
	clock.Set(gkEpoch.Add(2 * time.Minute)) // takeover at +1m, bootstrap gone at +1m30s
	f.startAll()
	f.checkRings(false)
	return f
}

// TestGossipRotationUnderTraffic rotates the gossip key five times, every
// 20 s of schedule time with keys installed 20 s ahead and removed 25 s
// after the next became primary (so three versions overlap), while five
// nodes exchange reliable messages and broadcasts: no decryption failure,
// no lost message, one cluster throughout, and each removal leaves exactly
// the planned keys.
func TestGossipRotationUnderTraffic(t *testing.T) {
	f := activeFleet(t, 5, gossipPolicy)
	mon := f.monitor()
	maxKeys, rotations := 0, 0
	var latest uint32 = 1
	start := time.Now()
	for step := range 32 {
		if step%4 == 0 && rotations < 5 {
			vi, err := f.svc.Rotate(f.ctx, "gossip")
			if err != nil {
				t.Fatal(err)
			}
			f.deliver(vi.Version)
			latest, rotations = vi.Version, rotations+1
		}
		f.clock.Advance(5 * time.Second)
		f.applyAll()
		f.checkRings(false)
		for _, n := range f.running() {
			maxKeys = max(maxKeys, len(n.kr.GetKeys()))
		}
		f.traffic(fmt.Sprint(step))
		time.Sleep(40 * time.Millisecond)
	}
	if c, detail := f.decryptFailures(); c > 0 {
		t.Fatalf("%d decryption failures:%s", c, detail)
	}
	f.checkDelivered()
	mon.finish(t, f)
	if maxKeys < 3 {
		t.Fatalf("at most %d keys were installed at once; the schedule should overlap three versions", maxKeys)
	}
	for _, n := range f.running() {
		st := n.rot.State()
		if st.Primary != latest || !slices.Equal(st.Versions, []uint32{latest}) || st.Bootstrap {
			t.Fatalf("%s ends with %+v, want only v%d", n.name, st, latest)
		}
		if got := testutil.MetricSum(t, n.reg, "edgefleet_gossip_keyring_rotations_total", ""); got != 6 { // the takeover at start, then 5
			t.Fatalf("%s: %v rotations applied, want 6", n.name, got)
		}
	}
	t.Logf("5 rotations, up to %d keys installed at once, in %v", maxKeys, time.Since(start).Round(time.Millisecond))
}

// TestGossipBootstrapToFirstVersion moves a cluster gossiping under the
// shared bootstrap key to dkms version 1: installed as each node receives
// it, primary everywhere at the takeover (ActivateAt + FirstActivation),
// the bootstrap key removed Grace later, with no split or failure.
func TestGossipBootstrapToFirstVersion(t *testing.T) {
	clock := clock.NewManual(gkEpoch)
	f := newGKFleet(t, 4, clock, 30*time.Second, time.Minute)
	f.startAll() // no gossip key at dkms yet: the bootstrap key serves
	for _, n := range f.nodes {
		if st := n.rot.State(); st.Primary != 0 || len(st.Versions) != 0 || !st.Bootstrap {
			t.Fatalf("%s before any dkms key: %+v", n.name, st)
		}
	}
	mon := f.monitor()
	if _, err := f.svc.CreateKey(f.ctx, "gossip", dkms.PurposeGossip, gossipPolicy); err != nil {
		t.Fatal(err)
	}
	f.deliver(1)
	f.traffic("installed")
	time.Sleep(300 * time.Millisecond) // probes and gossip under this keyring
	f.checkRings(true)
	for _, n := range f.nodes {
		if st := n.rot.State(); st.Primary != 0 {
			t.Fatalf("%s switched to v%d before the takeover", n.name, st.Primary)
		}
		if next := n.rot.Next(); !next.Equal(gkEpoch.Add(time.Minute)) {
			t.Fatalf("%s: next change %v, want the takeover at %v", n.name, next, gkEpoch.Add(time.Minute))
		}
	}
	clock.Advance(30 * time.Second)
	f.applyAll()
	f.traffic("waiting")
	clock.Set(gkEpoch.Add(time.Minute))
	f.applyAll()
	f.traffic("takeover")
	time.Sleep(300 * time.Millisecond)
	for _, n := range f.nodes {
		if st := n.rot.State(); st.Primary != 1 || !st.Bootstrap {
			t.Fatalf("%s after the takeover: %+v", n.name, st)
		}
		if next := n.rot.Next(); !next.Equal(gkEpoch.Add(90 * time.Second)) {
			t.Fatalf("%s: next change %v, want the bootstrap key's removal", n.name, next)
		}
	}
	clock.Set(gkEpoch.Add(90*time.Second - time.Millisecond))
	f.applyAll()
	f.checkRings(true)
	clock.Set(gkEpoch.Add(90 * time.Second))
	f.applyAll()
	f.checkRings(false)
	f.traffic("v1 only")
	time.Sleep(300 * time.Millisecond)
	if c, detail := f.decryptFailures(); c > 0 {
		t.Fatalf("%d decryption failures:%s", c, detail)
	}
	f.checkDelivered()
	mon.finish(t, f)
}

// offlineDuringRotation stops the last node, rotates to v2 (primary at
// +20 s, v1 removed at +45 s) without it, and applies the schedule up to
// offlineFor after the rotation.
func offlineDuringRotation(t *testing.T, offlineFor time.Duration) (*gkFleet, *gkNode) {
	f := activeFleet(t, 4, gossipPolicy)
	d := f.nodes[len(f.nodes)-1]
	d.stop()
	f.waitAllAlive(10 * time.Second)
	vi, err := f.svc.Rotate(f.ctx, "gossip")
	if err != nil {
		t.Fatal(err)
	}
	f.deliver(vi.Version)
	for passed := time.Duration(0); passed < offlineFor; passed += 5 * time.Second {
		f.clock.Advance(5 * time.Second)
		f.applyAll()
		f.checkRings(false)
	}
	time.Sleep(600 * time.Millisecond) // memberlist lets a departed name come back after DeadNodeReclaimTime
	return f, d
}

// TestGossipOfflineNodeRejoinsWithinGrace restarts a node that missed a
// rotation before the old key's removal: its peers still decrypt its
// traffic (no failure logged on their side) though it cannot read theirs
// until it fetches its pending key messages; then it rejoins.
func TestGossipOfflineNodeRejoinsWithinGrace(t *testing.T) {
	f, d := offlineDuringRotation(t, 30*time.Second) // v2 primary since +20 s, v1 removed at +45 s
	d.openKeys()
	err := d.start(f.nodes[0].addr())
	if !errors.Is(err, ErrGossipKeyStale) {
		t.Fatalf("join with the old key only: %v, want ErrGossipKeyStale", err)
	}
	if c, detail := f.decryptFailures(d); c > 0 {
		t.Fatalf("within the grace period the cluster failed to decrypt the returning node %d times:%s", c, detail)
	}
	if st := d.rot.State(); st.Primary != 1 {
		t.Fatalf("returning node before catching up: %+v", st)
	}
	d.catchUp()
	if st := d.rot.State(); st.Primary != 2 || !slices.Equal(st.Versions, []uint32{1, 2}) {
		t.Fatalf("returning node after catching up: %+v", st)
	}
	began := time.Now()
	if _, err := d.ml.Join([]string{f.nodes[0].addr()}); err != nil {
		t.Fatalf("rejoin after catching up: %v", d.rot.JoinFailed(err))
	}
	f.waitAllAlive(15 * time.Second)
	t.Logf("rejoined %v after fetching its keys", time.Since(began).Round(time.Millisecond))
	f.checkRings(false)
	f.clock.Advance(15 * time.Second) // v1's removal
	f.applyAll()
	f.checkRings(false)
	f.traffic("after")
	if c, detail := f.decryptFailures(d); c > 0 {
		t.Fatalf("%d decryption failures in the cluster:%s", c, detail)
	}
	f.checkDelivered()
}

// TestGossipOfflineBeyondGraceCannotRejoin restarts a node after every key
// it holds was removed elsewhere: the cluster refuses its traffic, its join
// fails with ErrGossipKeyStale and its log names the recovery; fetching its
// pending key messages brings it back.
func TestGossipOfflineBeyondGraceCannotRejoin(t *testing.T) {
	f, d := offlineDuringRotation(t, 50*time.Second) // v1 removed at +45 s
	seed := f.nodes[0]
	before := seed.mlLog.failures()
	d.openKeys()
	err := d.start(seed.addr())
	if !errors.Is(err, ErrGossipKeyStale) || !strings.Contains(err.Error(), "no installed keys could decrypt") {
		t.Fatalf("join with removed keys: %v, want ErrGossipKeyStale", err)
	}
	if seed.mlLog.failures() == before {
		t.Fatalf("the seed decrypted a node whose keys it removed; its log:\n%s", seed.mlLog)
	}
	logs := d.rotLog.String()
	if !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, "re-enroll") || !strings.Contains(logs, "control plane") {
		t.Fatalf("the returning node's log does not name the recovery:\n%s", logs)
	}
	time.Sleep(500 * time.Millisecond)
	for _, n := range f.nodes[:len(f.nodes)-1] {
		for _, m := range n.ml.Members() {
			if m.Name == d.name {
				t.Fatalf("%s admitted the node with removed keys (%v)", n.name, m.State)
			}
		}
	}
	if _, err := d.ml.Join([]string{seed.addr()}); !errors.Is(d.rot.JoinFailed(err), ErrGossipKeyStale) {
		t.Fatalf("second join with removed keys: %v", err)
	}

	d.catchUp() // the documented recovery: fetch the pending key messages
	if st := d.rot.State(); st.Primary != 2 || !slices.Equal(st.Versions, []uint32{2}) || st.Bootstrap {
		t.Fatalf("after catching up: %+v", st)
	}
	if _, err := d.ml.Join([]string{seed.addr()}); err != nil {
		t.Fatalf("join after catching up: %v", err)
	}
	f.waitAllAlive(15 * time.Second)
	f.traffic("after")
	f.checkDelivered()
}

// gkScript is a scripted key source: the versions an agent holds.
type gkScript struct {
	mu  sync.Mutex
	vs  []dkms.GossipKeyVersion
	err error
	raw *dkms.GossipKeyring // returned as is when set
}

func (s *gkScript) source(now time.Time) (dkms.GossipKeyring, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return dkms.GossipKeyring{}, s.err
	}
	if s.raw != nil {
		return *s.raw, nil
	}
	if len(s.vs) == 0 {
		return dkms.GossipKeyring{}, fmt.Errorf("dkms: key %q is not on agent %q: %w", "gossip", "x", dkms.ErrUnknownKey)
	}
	return dkms.PlanGossipKeyring(s.vs, now), nil
}

func (s *gkScript) add(v uint32, created time.Time, install, remove time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := dkms.GossipKeyVersion{Version: v, Key: gkKey(v), State: dkms.StatePrimary, ActivateAt: created, PrevRemoveAt: created}
	if v > 1 {
		k.ActivateAt = created.Add(install)
		k.PrevRemoveAt = k.ActivateAt.Add(remove)
		for i := range s.vs {
			s.vs[i].State = dkms.StateDecryptOnly
		}
	}
	s.vs = append(s.vs, k)
}

func gkKey(v uint32) []byte { return bytes.Repeat([]byte{byte(v)}, 32) }

func newScripted(t *testing.T, clock *gkClock, reg *prometheus.Registry) (*Rotator, *gkScript, *memberlist.Keyring, *testutil.SyncBuffer) {
	t.Helper()
	boot := bytes.Repeat([]byte{0xb0}, 32)
	kr, err := memberlist.NewKeyring(nil, boot)
	if err != nil {
		t.Fatal(err)
	}
	s := &gkScript{}
	logs := &testutil.SyncBuffer{}
	r, err := NewRotator(RotatorConfig{
		Keyring: kr, Source: s.source, Bootstrap: boot, Grace: 30 * time.Second, FirstActivation: time.Minute,
		Clock: clock, Logger: slog.New(slog.NewTextHandler(logs, nil)), Registry: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r, s, kr, logs
}

// ringVersions lists the keyring as versions, primary first (0: bootstrap).
func ringVersions(kr *memberlist.Keyring) []uint32 {
	var out []uint32
	for _, k := range kr.GetKeys() {
		if k[0] == 0xb0 {
			out = append(out, 0)
		} else {
			out = append(out, uint32(k[0]))
		}
	}
	return out
}

func gkSteps(t *testing.T, reg *prometheus.Registry) string {
	const name = "edgefleet_gossip_keyring_steps_total"
	return fmt.Sprintf("install=%v use=%v remove=%v",
		testutil.MetricSum(t, reg, name, "install"), testutil.MetricSum(t, reg, name, "use"), testutil.MetricSum(t, reg, name, "remove"))
}

// TestGossipRotatorApplyIdempotentNeverRemovesPrimary walks a keyring
// through the bootstrap era, the takeover, overlapping rotations and a
// broken key source, applying twice at every point.
func TestGossipRotatorApplyIdempotentNeverRemovesPrimary(t *testing.T) {
	clock := clock.NewManual(gkEpoch)
	reg := prometheus.NewRegistry()
	r, s, kr, logs := newScripted(t, clock, reg)
	apply := func(want []uint32) {
		t.Helper()
		for i := range 2 {
			before := gkSteps(t, reg)
			if err := r.Apply(); err != nil {
				t.Fatalf("at %v: %v", clock.Now().Sub(gkEpoch), err)
			}
			if got := ringVersions(kr); !slices.Equal(got, want) {
				t.Fatalf("at %v (apply %d): keyring %v, want %v", clock.Now().Sub(gkEpoch), i+1, got, want)
			}
			if i == 1 && gkSteps(t, reg) != before {
				t.Fatalf("at %v: a second Apply changed the keyring: %s, then %s", clock.Now().Sub(gkEpoch), before, gkSteps(t, reg))
			}
		}
	}
	apply([]uint32{0}) // no gossip key delivered yet
	if !r.Next().IsZero() {
		t.Fatalf("next change %v with nothing scheduled", r.Next())
	}

	s.add(1, gkEpoch, 0, 0)
	apply([]uint32{0, 1}) // installed ahead; the bootstrap key stays primary
	if want := gkEpoch.Add(time.Minute); !r.Next().Equal(want) {
		t.Fatalf("next %v, want the takeover %v", r.Next(), want)
	}
	clock.Set(gkEpoch.Add(time.Minute))
	apply([]uint32{1, 0}) // takeover; bootstrap decrypt-only
	if got := testutil.MetricSum(t, reg, "edgefleet_gossip_keyring_primary_version", ""); got != 1 {
		t.Fatalf("primary version gauge %v", got)
	}

	// A source failure or an unusable plan changes nothing.
	s.mu.Lock()
	s.err = errors.New("disk on fire")
	s.mu.Unlock()
	if err := r.Apply(); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("source failure: %v", err)
	}
	for _, raw := range []dkms.GossipKeyring{
		{}, // every version gone after the takeover
		{Primary: 7, Keys: []dkms.GossipKeyVersion{{Version: 1, Key: gkKey(1)}}},
		{Primary: 1, Keys: []dkms.GossipKeyVersion{{Version: 1, Key: []byte("short")}}},
		{Primary: 1, Keys: []dkms.GossipKeyVersion{{Version: 1, Key: gkKey(1)}, {Version: 2, Key: gkKey(1)}}},
		{Primary: 2, Keys: []dkms.GossipKeyVersion{{Version: 2, Key: gkKey(2)}, {Version: 2, Key: gkKey(3)}}},
	} {
		s.mu.Lock()
		s.err, s.raw = nil, &raw
		s.mu.Unlock()
		if err := r.Apply(); err == nil {
			t.Fatalf("plan %+v accepted", raw)
		}
		if got := ringVersions(kr); !slices.Equal(got, []uint32{1, 0}) {
			t.Fatalf("plan %+v changed the keyring to %v", raw, got)
		}
	}
	if got := testutil.MetricSum(t, reg, "edgefleet_gossip_keyring_failures_total", ""); got != 6 {
		t.Fatalf("failures counted %v, want 6", got)
	}
	s.mu.Lock()
	s.raw = nil
	s.mu.Unlock()

	// Rotations every 20 s, primary 20 s after creation, previous versions
	// removed 25 s later: v2 created at +70s, v3 at +90s, v4 at +110s.
	clock.Set(gkEpoch.Add(70 * time.Second))
	s.add(2, clock.Now(), 20*time.Second, 25*time.Second)
	apply([]uint32{1, 0, 2})
	clock.Set(gkEpoch.Add(90 * time.Second)) // v2 primary; bootstrap's grace over; v3 created
	s.add(3, clock.Now(), 20*time.Second, 25*time.Second)
	apply([]uint32{2, 1, 3})
	clock.Set(gkEpoch.Add(110 * time.Second)) // v3 primary; v4 created
	s.add(4, clock.Now(), 20*time.Second, 25*time.Second)
	apply([]uint32{3, 2, 1, 4})
	clock.Set(gkEpoch.Add(115 * time.Second)) // v1 leaves from the middle of the keyring
	apply([]uint32{3, 2, 4})
	if want := gkEpoch.Add(130 * time.Second); !r.Next().Equal(want) {
		t.Fatalf("next %v, want v4's activation %v", r.Next(), want)
	}
	clock.Set(gkEpoch.Add(135 * time.Second)) // v4 primary and v2 gone at once (the timer was late)
	apply([]uint32{4, 3})
	clock.Set(gkEpoch.Add(155 * time.Second))
	apply([]uint32{4})
	if !r.Next().IsZero() {
		t.Fatalf("next %v after the last change", r.Next())
	}
	if got := testutil.MetricSum(t, reg, "edgefleet_gossip_keyring_rotations_total", ""); got != 4 {
		t.Fatalf("rotations %v, want 4", got)
	}
	if got := testutil.MetricSum(t, reg, "edgefleet_gossip_keyring_keys", ""); got != 1 {
		t.Fatalf("keys gauge %v", got)
	}

	// An agent holding only a version newer than its primary (the primary's
	// versions retired) switches, then removes the old primary.
	s.mu.Lock()
	s.vs = []dkms.GossipKeyVersion{{Version: 5, Key: gkKey(5), State: dkms.StatePrimary, ActivateAt: clock.Now(), PrevRemoveAt: clock.Now()}}
	s.mu.Unlock()
	apply([]uint32{5})

	// The primary is never removed, whoever asks.
	if err := r.removeKeys([][]byte{gkKey(5)}); err == nil || !strings.Contains(err.Error(), "primary") {
		t.Fatalf("removing the primary: %v", err)
	}
	if got := ringVersions(kr); !slices.Equal(got, []uint32{5}) {
		t.Fatalf("keyring %v after refusing to remove the primary", got)
	}
	for _, want := range []string{"gossip key installed", "gossip key is primary", "gossip key removed", "bootstrap gossip key removed", "takes over from the bootstrap key"} {
		if !strings.Contains(logs.String(), want) {
			t.Fatalf("log lacks %q:\n%s", want, logs)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, fmt.Sprintf("%s:%d", mf.GetName(), len(mf.GetMetric())))
	}
	if want := []string{"edgefleet_gossip_keyring_failures_total:1", "edgefleet_gossip_keyring_keys:1", "edgefleet_gossip_keyring_primary_version:1",
		"edgefleet_gossip_keyring_rotations_total:1", "edgefleet_gossip_keyring_steps_total:3"}; !slices.Equal(names, want) {
		t.Fatalf("registered metrics %v, want %v", names, want)
	}
}

// TestGossipRotatorJoinFailed classifies join errors.
func TestGossipRotatorJoinFailed(t *testing.T) {
	clock := clock.NewManual(gkEpoch)
	r, _, _, logs := newScripted(t, clock, nil)
	if r.JoinFailed(nil) != nil {
		t.Fatal("nil error classified")
	}
	other := errors.New("1 error occurred:\n\t* Failed to join 127.0.0.1:7946: dial tcp: connection refused")
	if err := r.JoinFailed(other); err != other {
		t.Fatalf("unrelated error rewritten: %v", err)
	}
	stale := errors.New("1 error occurred:\n\t* Failed to join 127.0.0.1:7946: No installed keys could decrypt the message")
	err := r.JoinFailed(stale)
	if !errors.Is(err, ErrGossipKeyStale) || !errors.Is(err, stale) || !strings.Contains(err.Error(), "bootstrap key (primary)") {
		t.Fatalf("stale-key join error: %v", err)
	}
	r.JoinFailed(stale)
	if c := strings.Count(logs.String(), "cannot rejoin"); c != 1 {
		t.Fatalf("logged %d times within a minute, want once:\n%s", c, logs)
	}
	clock.Advance(time.Minute)
	r.JoinFailed(stale)
	if c := strings.Count(logs.String(), "cannot rejoin"); c != 2 {
		t.Fatalf("logged %d times, want twice", c)
	}
}

// TestGossipRotatorConfig rejects unusable configurations.
func TestGossipRotatorConfig(t *testing.T) {
	kr, err := memberlist.NewKeyring(nil, gkKey(9))
	if err != nil {
		t.Fatal(err)
	}
	src := func(time.Time) (dkms.GossipKeyring, error) { return dkms.GossipKeyring{}, nil }
	for name, cfg := range map[string]RotatorConfig{
		"no keyring":     {Source: src, Bootstrap: gkKey(9)},
		"no source":      {Keyring: kr, Bootstrap: gkKey(9)},
		"no bootstrap":   {Keyring: kr, Source: src},
		"short key":      {Keyring: kr, Source: src, Bootstrap: []byte("0123456789")},
		"negative grace": {Keyring: kr, Source: src, Bootstrap: gkKey(9), Grace: -time.Second},
	} {
		if _, err := NewRotator(cfg); err == nil || !strings.HasPrefix(err.Error(), "keys: ") {
			t.Errorf("%s: %v", name, err)
		}
	}
	reg := prometheus.NewRegistry()
	cfg := RotatorConfig{Keyring: kr, Source: src, Bootstrap: gkKey(8), Registry: reg}
	r, err := NewRotator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if r.grace != time.Hour || r.first != time.Minute || r.recheck != time.Minute {
		t.Fatalf("defaults: grace %v, first activation %v, recheck %v", r.grace, r.first, r.recheck)
	}
	if got := ringVersions(kr); len(got) != 2 || !bytes.Equal(kr.GetPrimaryKey(), gkKey(9)) {
		t.Fatalf("bootstrap key not added beside the keyring's primary: %d keys", len(got))
	}
	if _, err := NewRotator(cfg); err == nil {
		t.Fatal("second rotator registered the same metrics")
	}
}

// TestGossipRotatorRun drives Run on a manual clock: it applies at once,
// sleeps until Next, wakes on key messages, and retries after failures.
func TestGossipRotatorRun(t *testing.T) {
	clock := clock.NewManual(gkEpoch)
	boot := bytes.Repeat([]byte{0xb0}, 32)
	kr, _ := memberlist.NewKeyring(nil, boot)
	s := &gkScript{}
	r, err := NewRotator(RotatorConfig{
		Keyring: kr, Source: s.source, Bootstrap: boot, Grace: 30 * time.Second, FirstActivation: time.Minute,
		Recheck: 10 * time.Minute, Clock: clock, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	wake := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx, wake)
	}()
	// next waits until Run sleeps on one timer of want from now.
	next := func(want time.Duration) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			at, ok := clock.NextDeadline()
			if ok && clock.Waiters() == 1 && at.Sub(clock.Now()) == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("run sleeps until %v (%d timers, %v), want %v", at.Sub(clock.Now()), clock.Waiters(), ok, want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	next(10 * time.Minute) // nothing scheduled: the recheck bound

	s.add(1, gkEpoch, 0, 0) // a key message arrives
	wake <- struct{}{}
	next(time.Minute) // until the takeover
	if got := ringVersions(kr); !slices.Equal(got, []uint32{0, 1}) {
		t.Fatalf("after the wake: %v", got)
	}
	clock.Advance(time.Minute)
	next(30 * time.Second) // until the bootstrap key's removal
	if got := ringVersions(kr); !slices.Equal(got, []uint32{1, 0}) {
		t.Fatalf("after the takeover timer: %v", got)
	}
	s.mu.Lock()
	s.err = errors.New("keyring unreadable")
	s.mu.Unlock()
	clock.Advance(30 * time.Second)
	next(gossipRetryDelay) // failed: retry soon
	s.mu.Lock()
	s.err = nil
	s.mu.Unlock()
	clock.Advance(gossipRetryDelay)
	next(10 * time.Minute)
	if got := ringVersions(kr); !slices.Equal(got, []uint32{1}) {
		t.Fatalf("after the retry: %v", got)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if n := clock.Waiters(); n != 0 {
		t.Fatalf("%d timers left pending after Run returned", n)
	}
}

// TestGossipRotatorRunLoopRealClock runs three nodes' rotators in their run
// loops on the real clock (install 1.2 s ahead, old keys removed 2.4 s
// after the switch: long enough that a loaded CI machine running -race
// delivers every message sealed under the old key before it goes), with key messages waking them, through the bootstrap
// takeover and three rotations, while the nodes exchange messages. It
// reports how long after each scheduled instant every node had applied it.
func TestGossipRotatorRunLoopRealClock(t *testing.T) {
	const (
		install = 1200 * time.Millisecond
		remove  = 2400 * time.Millisecond
	)
	f := newGKFleet(t, 3, nil, 1500*time.Millisecond, 900*time.Millisecond)
	f.startAll()
	for _, n := range f.nodes {
		n.runLoop()
	}
	mon := f.monitor()
	stopTraffic := make(chan struct{})
	trafficDone := make(chan struct{})
	haltTraffic := sync.OnceFunc(func() { close(stopTraffic); <-trafficDone })
	t.Cleanup(haltTraffic) // before the nodes shut down, also when the test fails
	go func() {
		defer close(trafficDone)
		for i := 0; ; i++ {
			select {
			case <-stopTraffic:
				return
			case <-time.After(50 * time.Millisecond):
			}
			f.traffic(fmt.Sprint(i))
		}
	}()

	// waitPrimary polls until every node's primary is v and returns how
	// long after at the last one switched.
	waitPrimary := func(v uint32, at time.Time) time.Duration {
		t.Helper()
		var last time.Time
		for _, n := range f.nodes {
			for n.rot.State().Primary != v {
				if time.Since(at) > 10*time.Second {
					t.Fatalf("%s never made v%d primary: %+v", n.name, v, n.rot.State())
				}
				time.Sleep(2 * time.Millisecond)
			}
			if now := time.Now(); now.After(last) {
				last = now
			}
		}
		return max(last.Sub(at), 0)
	}
	policy := dkms.Policy{AllAgents: true, InstallGrace: install, RemoveGrace: remove}
	info, err := f.svc.CreateKey(f.ctx, "gossip", dkms.PurposeGossip, policy)
	if err != nil {
		t.Fatal(err)
	}
	f.deliver(1)
	lag := waitPrimary(1, info.Versions[0].ActivateAt.Add(f.first))
	t.Logf("takeover by v1: every node switched within %v of the scheduled instant", lag.Round(time.Millisecond))
	for range 3 {
		time.Sleep(150 * time.Millisecond)
		vi, err := f.svc.Rotate(f.ctx, "gossip")
		if err != nil {
			t.Fatal(err)
		}
		rotated := time.Now()
		f.deliver(vi.Version)
		installed := time.Since(rotated)
		lag := waitPrimary(vi.Version, vi.ActivateAt)
		converged := time.Since(rotated)
		testutil.WaitFor(t, 10*time.Second, "the old versions' removal", func() (bool, string) {
			for _, n := range f.nodes {
				if st := n.rot.State(); len(st.Versions) != 1 || st.Bootstrap {
					return false, fmt.Sprintf("%s holds %+v", n.name, st)
				}
			}
			return true, ""
		})
		t.Logf("v%d: delivered and installed on 3 nodes in %v; primary everywhere %v after ActivateAt (%v after the rotation); old keys removed %v after PrevRemoveAt",
			vi.Version, installed.Round(time.Millisecond), lag.Round(time.Millisecond), converged.Round(time.Millisecond),
			max(time.Since(vi.PrevRemoveAt), 0).Round(time.Millisecond))
	}
	haltTraffic()
	if c, detail := f.decryptFailures(); c > 0 {
		t.Fatalf("%d decryption failures:%s", c, detail)
	}
	f.checkDelivered()
	mon.finish(t, f)
}

// TestGossipRotatorRemovalDoesNotRaceDecryption runs overlapping rotations
// (a key removed while newer keys follow it in memberlist's keyring) while
// goroutines read the keyring as memberlist's decryption does. Under -race
// this fails if a removal shifts keys inside a slice GetKeys handed out;
// the primary must be installed at every instant.
func TestGossipRotatorRemovalDoesNotRaceDecryption(t *testing.T) {
	clock := clock.NewManual(gkEpoch)
	r, s, kr, _ := newScripted(t, clock, nil)
	s.add(1, gkEpoch, 0, 0)
	clock.Set(gkEpoch.Add(2 * time.Minute))
	if err := r.Apply(); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var missing atomic.Int64
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			for !stop.Load() {
				primary := kr.GetPrimaryKey()
				found := false
				for _, k := range kr.GetKeys() { // as memberlist's decryptPayload iterates
					found = found || bytes.Equal(k, primary)
				}
				if !found {
					missing.Add(1)
				}
				time.Sleep(20 * time.Microsecond)
			}
		})
	}
	// A version every 10 s, primary 20 s after creation, older ones removed
	// 15 s later: up to four versions installed, removals from the middle.
	for v := uint32(2); v < 60; v++ {
		s.add(v, clock.Now(), 20*time.Second, 15*time.Second)
		for range 2 {
			clock.Advance(5 * time.Second)
			if err := r.Apply(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(200 * time.Microsecond)
		}
		if n := len(kr.GetKeys()); n < 2 || n > 4 {
			t.Fatalf("v%d: %d keys installed", v, n)
		}
	}
	stop.Store(true)
	wg.Wait()
	if missing.Load() > 0 {
		t.Fatalf("a reader found the keyring without its primary %d times", missing.Load())
	}
}

// TestGossipKeySource: no keyring means no gossip key yet; an agent's
// keyring plans from its versions of the gossip key.
func TestGossipKeySource(t *testing.T) {
	src := GossipKeySource(func() *dkms.AgentKeys { return nil })
	if _, err := src(gkEpoch); !errors.Is(err, dkms.ErrUnknownKey) {
		t.Fatalf("no keyring: %v", err)
	}
	f := activeFleet(t, 1, gossipPolicy)
	n := f.nodes[0]
	plan, err := GossipKeySource(func() *dkms.AgentKeys { return n.keys })(f.clock.Now())
	if err != nil || plan.Primary != 1 || !slices.Equal(plan.Versions(), []uint32{1}) {
		t.Fatalf("plan from the agent's keyring: %+v, %v", plan, err)
	}
	var nilRot *Rotator
	if err := errors.New("x"); nilRot.JoinFailed(err) != err {
		t.Fatal("nil rotator rewrote a join error")
	}
}
