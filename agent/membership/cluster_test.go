package membership

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// recordingData is a Data delegate that records what memberlist hands it.
type recordingData struct {
	mu     sync.Mutex
	msgs   []string
	joined []string
}

func (d *recordingData) NotifyMsg(b []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.msgs = append(d.msgs, string(b))
}
func (d *recordingData) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *recordingData) LocalState(join bool) []byte                { return nil }
func (d *recordingData) MergeRemoteState(buf []byte, join bool)     {}
func (d *recordingData) Joined(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.joined = append(d.joined, name)
}

func (d *recordingData) snapshot() (msgs, joined []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.msgs...), append([]string(nil), d.joined...)
}

type lockedTestRand struct {
	mu sync.Mutex
	r  *rand.Rand
}

func (l *lockedTestRand) IntN(n int) int   { l.mu.Lock(); defer l.mu.Unlock(); return l.r.IntN(n) }
func (l *lockedTestRand) Float64() float64 { l.mu.Lock(); defer l.mu.Unlock(); return l.r.Float64() }

func startTestCluster(t *testing.T, net *memberlist.MockNetwork, name string, seeds ...string) (*Cluster, *recordingData) {
	t.Helper()
	return startTestClusterOn(t, net.NewTransport(name), name, seeds...)
}

// startTestClusterOn starts a cluster on a transport made beforehand
// (MockNetwork.NewTransport must not run while other mock transports
// send).
func startTestClusterOn(t *testing.T, tr memberlist.Transport, name string, seeds ...string) (*Cluster, *recordingData) {
	t.Helper()
	c, err := New(Config{
		Name: name, Label: "test", Profile: ProfileTest, Meta: []byte(`{"id":"` + name + `"}`), Seeds: seeds,
		ReconnectInterval: time.Hour, ReconnectTimeout: time.Hour, JoinRetryInterval: time.Hour,
		Table: NewTable(name, nil), Transport: tr, Traffic: &Traffic{}, Counters: &Counters{},
		Reject: func(string) {}, Rand: &lockedTestRand{r: rand.New(rand.NewPCG(1, 2))},
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	d := &recordingData{}
	if err := c.Start(d); err != nil {
		c.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		c.Shutdown()
		<-done
		c.Wait()
	})
	c.JoinSeeds(context.Background(), 5*time.Second)
	return c, d
}

// TestClusterEventsAndData: a member that joins is recorded alive with
// its metadata and handed to the data delegate; SendTo reaches the other
// member's data delegate. (The mock network routes by name, so sending to
// a member not known yet, by address, is left to the agent's cluster
// tests.)
func TestClusterEventsAndData(t *testing.T) {
	var mock memberlist.MockNetwork
	a, da := startTestCluster(t, &mock, "a")
	b, db := startTestCluster(t, &mock, "b", a.Addr())
	for deadline := time.Now().Add(5 * time.Second); len(a.Alive()) != 1 || len(b.Alive()) != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("alive: a sees %v, b sees %v", a.Alive(), b.Alive())
		}
	}
	if p := a.Alive()[0]; p.Name != "b" || p.Addr != b.Addr() || p.State != StateAlive {
		t.Fatalf("a records %+v", p)
	}
	if ms := a.table.Members(); len(ms) != 2 || ms[1].Meta.ID != "b" {
		t.Fatalf("members %+v", ms)
	}
	if _, joined := da.snapshot(); len(joined) != 1 || joined[0] != "b" {
		t.Fatalf("a's data delegate heard of joins %v", joined)
	}
	if err := a.SendTo("b", "", []byte("by name")); err != nil {
		t.Fatal(err)
	}
	if err := a.SendTo("stranger", "", []byte("x")); err == nil {
		t.Fatal("sent to an unknown member without an address")
	}
	if err := b.SendTo("a", "", []byte("back")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mb, _ := db.snapshot()
		ma, _ := da.snapshot()
		if len(mb) == 1 && mb[0] == "by name" && len(ma) == 1 && ma[0] == "back" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b received %q, a received %q", mb, ma)
		}
	}
	if a.NumMembers() != 2 || a.Seeds() != nil || len(b.Seeds()) != 1 {
		t.Fatalf("members %d, seeds %v / %v", a.NumMembers(), a.Seeds(), b.Seeds())
	}
}
