package agent

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// mlMembers lists the members the agent's memberlist holds alive or
// suspect.
func mlMembers(a *Agent) []string {
	a.mu.Lock()
	c := a.cluster
	a.mu.Unlock()
	var out []string
	for _, n := range c.Memberlist().Members() {
		out = append(out, n.Name)
	}
	slices.Sort(out)
	return out
}

// TestRevokedAgentIsRefusedEverywhere: three agents gossip; one of the
// others is cut off from the control plane. The third is decommissioned:
// both remaining agents learn the signed revocation list (the cut-off one
// from its peer, through replicated state), drop the revoked node from
// memberlist, and an op it writes afterwards reaches neither, while what
// it wrote before stays.
func TestRevokedAgentIsRefusedEverywhere(t *testing.T) {
	cp := startKeysCP(t)
	ctx := t.Context()
	var cut atomic.Bool
	cutDeps := Deps{Logger: testLogger(t), Rand: seededRand("rev-b"), UplinkWrapTransport: func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if cut.Load() {
				return nil, errors.New("uplink cut by the test")
			}
			return rt.RoundTrip(r)
		})
	}}
	a := startAgent(t, cp.agentConfig(t, "rev-a"), Deps{Logger: testLogger(t), Rand: seededRand("rev-a")})
	cfgB := cp.agentConfig(t, "rev-b")
	cfgB.Gossip.Join = []string{a.GossipAddr()}
	b := startAgent(t, cfgB, cutDeps)
	cfgX := cp.agentConfig(t, "rev-x")
	cfgX.Gossip.Join = []string{a.GossipAddr()}
	x := startAgent(t, cfgX, Deps{Logger: testLogger(t), Rand: seededRand("rev-x")})
	agents := []*Agent{a, b, x}
	waitFor(t, 30*time.Second, "enrolled, keyed and gossiping", func() (bool, string) {
		for _, y := range agents {
			if gossipLatest(y) != 1 || len(y.Members()) != 3 {
				return false, fmt.Sprintf("%s not ready: gossip v%d, %d members", y.Name(), gossipLatest(y), len(y.Members()))
			}
		}
		return allAlive(agents)
	})
	if err := x.Put(ctx, "kv", "before", []byte(`"kept"`)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the op written before the revocation replicates", func() (bool, string) {
		for _, y := range []*Agent{a, b} {
			if _, ok, _ := y.Store().Get(ctx, "kv", "before"); !ok {
				return false, y.Name() + " lacks it"
			}
		}
		return true, ""
	})
	cut.Store(true)
	// Once a heartbeat failed, the held key request is aborted too.
	waitFor(t, 10*time.Second, "the uplink notices the cut", func() (bool, string) {
		return strings.Contains(b.Uplink().Status().LastError, "cut by the test"), b.Uplink().Status().LastError
	})
	if _, err := cp.admin.Decommission(ctx, x.Uplink().Status().AgentID); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	waitFor(t, 30*time.Second, "both live agents refuse the revoked node", func() (bool, string) {
		for _, y := range []*Agent{a, b} {
			if r := y.Revocations(); r == nil || !r.Revoked("rev-x") {
				return false, y.Name() + " has not adopted the list"
			}
			if m := mlMembers(y); slices.Contains(m, "rev-x") {
				return false, fmt.Sprintf("%s's memberlist still holds rev-x: %v", y.Name(), m)
			}
		}
		return true, ""
	})
	t.Logf("revoked node refused everywhere %.1fs after the decommission", time.Since(revoked).Seconds())
	if n := metricSum(t, b.Registry(), "agent_revocation_lists_adopted_total", "peers"); n < 1 {
		t.Fatalf("the cut-off agent adopted %v lists from peers", n)
	}
	if err := x.Put(ctx, "kv", "after", []byte(`"injected"`)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // many sync intervals and gossip rounds
	for _, y := range []*Agent{a, b} {
		if _, ok, _ := y.Store().Get(ctx, "kv", "after"); ok {
			t.Fatalf("%s accepted an op the revoked node wrote after its revocation", y.Name())
		}
		if _, ok, _ := y.Store().Get(ctx, "kv", "before"); !ok {
			t.Fatalf("%s lost the op written before the revocation", y.Name())
		}
	}
	if ok, why := allAlive([]*Agent{a, b}); !ok {
		t.Fatalf("the live agents split: %s", why)
	}
}
