package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
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
