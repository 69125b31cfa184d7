package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/edgefleet/edgefleet/agent/replication"
)

// streamCut fails every stream (TCP) dial to or from one address while on:
// push/pull and anti-entropy cannot reach that agent, gossip packets can.
type streamCut struct {
	addr atomic.Pointer[string]
}

func (s *streamCut) blocks(a, b string) bool {
	p := s.addr.Load()
	return p != nil && (a == *p || b == *p)
}

type cutTransport struct {
	memberlist.NodeAwareTransport
	cut  *streamCut
	self string
}

var errStreamCut = errors.New("test: streams cut")

func (t *cutTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.cut.blocks(t.self, addr) {
		return nil, errStreamCut
	}
	return t.NodeAwareTransport.DialTimeout(addr, timeout)
}

func (t *cutTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.cut.blocks(t.self, a.Addr) {
		return nil, errStreamCut
	}
	return t.NodeAwareTransport.DialAddressTimeout(a, timeout)
}

// TestWriteRelayedToAgentTheOriginCannotReach: a0 and a2 cannot exchange
// anything, and a2 takes no streams (no push/pull, no anti-entropy); only
// a1's gossip packets reach it. A write on a0 reaches a2 because a1 relays
// it, and (the control) does not when a1's relay is off.
func TestWriteRelayedToAgentTheOriginCannotReach(t *testing.T) {
	t.Parallel()
	for _, relay := range []bool{true, false} {
		t.Run(fmt.Sprintf("relay=%v", relay), func(t *testing.T) {
			t.Parallel()
			c := newCluster(t)
			cut := &streamCut{}
			c.wrap = func(tr memberlist.Transport, self string) memberlist.Transport {
				return &cutTransport{NodeAwareTransport: tr.(memberlist.NodeAwareTransport), cut: cut, self: self}
			}
			a0 := c.start("a0", nil, nil)
			a1 := c.start("a1", []string{a0.GossipAddr()}, func(cfg *Config) { cfg.Gossip.Relay = relay })
			a2 := c.start("a2", []string{a0.GossipAddr()}, nil)
			agents := []*Agent{a0, a1, a2}
			waitFor(t, 10*time.Second, "membership", func() (bool, string) { return allAlive(agents) })

			addr := a2.GossipAddr()
			cut.addr.Store(&addr)
			c.part.Split([]string{a0.GossipAddr()}, []string{addr})
			ctx := context.Background()
			if err := a0.Put(ctx, "kv", "far", []byte(`"from a0"`)); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "a1 holds a0's write", func() (bool, string) { return holds(a1, "far") })
			if relay {
				waitFor(t, 10*time.Second, "a2 holds a0's write, relayed by a1", func() (bool, string) { return holds(a2, "far") })
				if a1.Stats().Relayed == 0 {
					t.Fatal("a2 got the write, yet a1 relayed nothing")
				}
				return
			}
			// Control: the only path to a2 is a1's relay.
			time.Sleep(3 * time.Second)
			if ok, _ := holds(a2, "far"); ok {
				t.Fatal("a2 got the write without a relay: the test's cut leaves another path")
			}
		})
	}
}

func holds(a *Agent, key string) (bool, string) {
	_, ok, err := a.Store().Get(context.Background(), "kv", key)
	if err != nil {
		return false, err.Error()
	}
	return ok, a.Name() + " lacks " + key
}

// TestQuietAfterHeal: with the relay on, after a partition with writes on
// both sides heals and the fleet holds one state, replication sends no
// deltas at all while nothing is written: no relayed or own deltas, no
// anti-entropy chunks. A relay that passed deltas on again and again, or
// anti-entropy that shipped the same ops every round, would show here.
func TestQuietAfterHeal(t *testing.T) {
	t.Parallel()
	c := newCluster(t)
	agents := c.startN(4)
	waitFor(t, 10*time.Second, "membership", func() (bool, string) { return allAlive(agents) })
	for _, a := range agents {
		if !a.cfg.Gossip.Relay {
			t.Fatalf("%s: relay off by default", a.Name())
		}
	}
	c.part.Split([]string{agents[0].GossipAddr(), agents[1].GossipAddr()}, []string{agents[2].GossipAddr(), agents[3].GossipAddr()})
	ctx := context.Background()
	for i, a := range agents {
		for k := 0; k < 20; k++ {
			if err := a.Put(ctx, "kv", fmt.Sprintf("k%d-%d", i, k%5), []byte(fmt.Sprintf(`%d`, k))); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(2 * time.Second)
	c.part.Heal()
	waitFor(t, 20*time.Second, "one state after heal", func() (bool, string) {
		if ok, why := allAlive(agents); !ok {
			return false, why
		}
		return sameState(agents)
	})
	// The last relays and broadcasts drain.
	waitFor(t, 10*time.Second, "gossip queues empty", func() (bool, string) {
		for _, a := range agents {
			if st := a.Stats(); st.BroadcastsQueued > 0 || st.RelayQueued > 0 {
				return false, fmt.Sprintf("%s: %d own, %d relayed queued", a.Name(), st.BroadcastsQueued, st.RelayQueued)
			}
		}
		return true, ""
	})
	stats := func() (out []Stats) {
		for _, a := range agents {
			out = append(out, a.Stats())
		}
		return out
	}
	// One state is not yet one delta log: an agent can hold the final
	// values and still lack superseded ops its peers ship on the next
	// round. Wait for equal version vectors too.
	waitFor(t, 10*time.Second, "equal version vectors", func() (bool, string) {
		first, err := agents[0].Store().VersionVector(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, a := range agents[1:] {
			vv, err := a.Store().VersionVector(ctx)
			if err != nil {
				return false, err.Error()
			}
			if !maps.Equal(first, vv) {
				return false, fmt.Sprintf("%s holds %v, %s holds %v", agents[0].Name(), first, a.Name(), vv)
			}
		}
		return true, ""
	})
	// A sync request built before the vectors met may still be answered
	// with deltas. Start the window after two sync intervals with no chunk
	// sent; anti-entropy that shipped every round never gets there.
	quiet := stats()
	quietSince, lastSender := time.Now(), "none yet"
	waitFor(t, 15*time.Second, "two sync intervals without anti-entropy chunks", func() (bool, string) {
		now := stats()
		for i := range agents {
			if now[i].SyncChunksSent != quiet[i].SyncChunksSent {
				quiet, quietSince = now, time.Now()
				lastSender = agents[i].Name()
				return false, lastSender + " sent a chunk"
			}
		}
		return time.Since(quietSince) >= 2*agents[0].cfg.Gossip.SyncInterval, "last chunk sent by " + lastSender
	})
	before := stats()
	time.Sleep(3 * time.Second) // six sync intervals
	after := stats()
	for i, a := range agents {
		b, e := before[i], after[i]
		t.Logf("%s: quiet window sent %v -> %v", a.Name(), b.ReplicationBytesSent, e.ReplicationBytesSent)
		if d := e.SyncChunksSent - b.SyncChunksSent; d != 0 {
			t.Errorf("%s sent %d anti-entropy chunks of deltas in 3 quiet seconds", a.Name(), d)
		}
		if d := e.Relayed - b.Relayed; d != 0 {
			t.Errorf("%s relayed %d deltas in 3 quiet seconds", a.Name(), d)
		}
		for _, kind := range []string{replication.SentDeltas, replication.SentRelay, replication.SentSyncData} {
			if d := e.ReplicationBytesSent[kind] - b.ReplicationBytesSent[kind]; d != 0 {
				t.Errorf("%s sent %d bytes of %s in 3 quiet seconds", a.Name(), d, kind)
			}
		}
		if e.ReplicationBytesSent[replication.SentSyncReq] == b.ReplicationBytesSent[replication.SentSyncReq] && e.ReplicationBytesSent[replication.SentSyncResp] == b.ReplicationBytesSent[replication.SentSyncResp] {
			t.Errorf("%s: no anti-entropy exchange in 3 s: the counters measure nothing", a.Name())
		}
	}
}
