package agent

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/clock"
)

// TestClocklessBootMergesPeers: an agent switched off for three weeks
// boots with its wall clock in 1970 (no RTC, no NTP yet). It merges every
// op of its peers, judging drift against the clocks they report, while the
// ops of an agent whose clock runs an hour ahead of the fleet are refused
// (by it and by its peers) and counted by origin. Its own new writes are
// stamped with the fleet's time: they win over older writes of its peers.
func TestClocklessBootMergesPeers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newCluster(t)
	now := time.Now()
	put := func(a *Agent, k, v string) {
		t.Helper()
		if err := a.Put(ctx, "kv", k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	// Three weeks ago "board" ran with a good clock, then was switched off.
	c.setClock("board", clock.NewScaled(now.Add(-21*24*time.Hour), 1))
	put(c.start("board", nil, nil), "board-old", "1")
	c.get("board").Kill()
	// "fast" wrote alone with a clock an hour ahead.
	c.setClock("fast", clock.NewScaled(now.Add(time.Hour), 1))
	fast := c.start("fast", nil, nil)
	for i := 0; i < 3; i++ {
		put(fast, fmt.Sprint("fast-", i), "x")
	}
	fast.Kill()
	a0 := c.start("a0", nil, nil)
	a1 := c.start("a1", []string{a0.GossipAddr()}, nil)
	for i := 0; i < 5; i++ {
		put(a0, fmt.Sprint("a0-", i), "y")
		put(a1, fmt.Sprint("a1-", i), "z")
	}
	put(a0, "shared", "a0")
	fast = c.start("fast", []string{a0.GossipAddr()}, nil)
	// The board boots in 1970.
	c.setClock("board", clock.NewScaled(time.Unix(0, 0), 1)) // running from 1970
	board := c.start("board", []string{a0.GossipAddr()}, nil)
	fleet := []*Agent{a0, a1, board}
	waitFor(t, 20*time.Second, "the board merging its peers' ops", func() (bool, string) {
		if ok, why := allAlive(append(fleet, fast)); !ok {
			return false, why
		}
		if ok, why := sameState(fleet); !ok {
			return false, why
		}
		vv, err := board.Store().VersionVector(ctx)
		if err != nil || vv["a0"] != 6 || vv["a1"] != 5 || vv["board"] != 1 {
			return false, fmt.Sprintf("board holds %v (%v)", vv, err)
		}
		if n := metricSum(t, board.Registry(), "edgefleet_gossip_refused_ops_total", ""); n == 0 {
			return false, "board refused nothing yet"
		}
		return true, ""
	})
	for _, a := range fleet {
		vv, _ := a.Store().VersionVector(ctx)
		if vv["fast"] != 0 {
			t.Errorf("%s applied ops of an origin an hour ahead: %v", a.Name(), vv)
		}
	}
	if st := board.Stats(); st.RefusedOps == 0 || st.Rejected != 0 {
		t.Errorf("board stats %+v", st)
	}
	if got, all := metricSum(t, board.Registry(), "edgefleet_gossip_refused_ops_total", "fast"), metricSum(t, board.Registry(), "edgefleet_gossip_refused_ops_total", ""); got == 0 || got != all {
		t.Errorf("board refused %v ops of fast, %v in all: %s", got, all, refusedByOrigin(t, board))
	}
	if got := metricSum(t, board.Registry(), "edgefleet_clock_wall_sane", ""); got != 0 {
		t.Errorf("edgefleet_clock_wall_sane = %v on a board in 1970", got)
	}
	if got := metricSum(t, a0.Registry(), "edgefleet_clock_wall_sane", ""); got != 1 {
		t.Errorf("edgefleet_clock_wall_sane = %v on a good clock", got)
	}
	// The board's new write is stamped with the fleet's time: it wins.
	put(board, "shared", "board")
	waitFor(t, 10*time.Second, "the board's write winning", func() (bool, string) {
		for _, a := range fleet {
			e, ok, err := a.Store().Get(ctx, "kv", "shared")
			if err != nil || !ok || string(e.Value) != "board" {
				return false, fmt.Sprintf("%s: shared = %q %v", a.Name(), e.Value, err)
			}
		}
		return true, ""
	})
}

// refusedByOrigin lists the agent's refused ops by origin label.
func refusedByOrigin(t *testing.T, a *Agent) string {
	mfs, err := a.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		if mf.GetName() == "edgefleet_gossip_refused_ops_total" {
			for _, m := range mf.GetMetric() {
				fmt.Fprintf(&b, "%s=%v ", m.GetLabel()[0].GetValue(), m.GetCounter().GetValue())
			}
		}
	}
	return b.String()
}
