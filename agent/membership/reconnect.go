package membership

import (
	"context"
	"net"
	"strconv"
	"time"

	"github.com/edgefleet/edgefleet/clock"
)

// announceAlive re-advertises this agent with a new incarnation (memberlist
// UpdateNode), at most once per healBoostWindow. When a partition heals,
// each side still holds the other dead at the incarnation it last saw, and
// memberlist only revives a member on a higher one, which the member makes
// only once it hears it was declared dead. Announcing as soon as the agent
// sees the other side again (a reconnect succeeded, a failed member came
// back) spares that round trip: the new incarnation spreads by gossip and
// by every push/pull of the reconnect loop.
func (c *Cluster) announceAlive() {
	now := c.clock.Now().UnixNano()
	last := c.lastAnnounce.Load()
	if now-last < int64(healBoostWindow) || !c.lastAnnounce.CompareAndSwap(last, now) {
		return
	}
	ml := c.ml.Load()
	if ml == nil || !c.active.Load() {
		return
	}
	// Not on the caller's goroutine: memberlist may be holding its node
	// lock (NotifyJoin), and UpdateNode waits for the broadcast.
	go func() {
		if err := ml.UpdateNode(time.Second); err != nil {
			c.log.Debug("re-advertising after a heal", "err", err)
		}
	}()
}

// healing reports whether a failed member came back within
// healBoostWindow: the cluster is reassembling after a partition or outage.
func (c *Cluster) healing() bool {
	return c.clock.Now().Sub(time.Unix(0, c.lastRevival.Load())) < healBoostWindow
}

// Reconcile runs a memberlist push/pull with a peer whose view of the
// alive members differs from this agent's, in the background. It is for
// the steady state (an announcement that never reached one agent): while
// members are down or coming back, views differ for a while anyway and
// the reconnect loop is at work, so it stays out of the way; and it runs
// at most once per reconcileMinInterval.
func (c *Cluster) Reconcile(peer, addr string) {
	if c.healing() || c.table.Count(StateDead) > 0 {
		return
	}
	now := c.clock.Now().UnixNano()
	last := c.lastReconcile.Load()
	if now-last < int64(reconcileMinInterval) || !c.lastReconcile.CompareAndSwap(last, now) {
		return
	}
	if node, ok := c.table.Lookup(peer); ok {
		addr = net.JoinHostPort(node.Addr.String(), strconv.Itoa(int(node.Port)))
	}
	if addr == "" {
		return
	}
	select {
	case c.rejoins <- struct{}{}:
	default:
		return
	}
	ml := c.ml.Load()
	if ml == nil || !c.active.Load() {
		<-c.rejoins
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() { <-c.rejoins }()
		if _, err := ml.Join([]string{addr}); err != nil {
			c.log.Debug("member reconciliation failed", "peer", peer, "err", err)
			return
		}
		c.cfg.Counters.MemberSyncs.Add(1)
	}()
}

// jitter returns d randomized by ±frac.
func (c *Cluster) jitter(d time.Duration, frac float64) time.Duration {
	return time.Duration(float64(d) * (1 + frac*(2*c.rnd.Float64()-1)))
}

// reconnectLoop retries members that failed (not those that left), as
// Serf does: every reconnect interval (±25%) it joins one random failed
// member, and forgets members failed longer than the reconnect timeout.
// For healBoostWindow after a failed member came back (a partition
// healing), it runs twice as often: each join is a push/pull that
// carries the other side's refutations, which is how both sides learn
// that the members they declared dead are alive.
// While the cluster is recovering (a failed member came back in the last
// recoveryWindow) or the chosen member failed within the last
// recoveryWindow, it always tries, so that after a partition heals every
// agent finds every member again within an interval or two. Otherwise it
// tries with probability failed/alive, as Serf does, so a large fleet does
// not keep dialing a device that is simply switched off.
func (c *Cluster) reconnectLoop(ctx context.Context) {
	for {
		interval := c.cfg.ReconnectInterval
		if c.healing() {
			interval /= 2 // a partition is healing: find the rest of the fleet fast
		}
		if clock.Sleep(ctx, c.clock, c.jitter(interval, 0.25)) != nil {
			return
		}
		for _, name := range c.table.Reap(c.cfg.ReconnectTimeout) {
			c.log.Info("forgetting member", "member", name)
		}
		failed := c.table.WithState(StateDead)
		if len(failed) == 0 {
			continue
		}
		target := failed[c.rnd.IntN(len(failed))]
		now := c.clock.Now()
		recovering := now.Sub(time.Unix(0, c.lastRevival.Load())) < recoveryWindow || now.Sub(target.Since) < recoveryWindow
		if p := float64(len(failed)) / float64(max(c.table.Count(StateAlive), 1)); !recovering && c.rnd.Float64() > p {
			continue
		}
		select {
		case c.rejoins <- struct{}{}:
		default:
			continue // enough attempts in flight
		}
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer func() { <-c.rejoins }()
			ml := c.ml.Load()
			if ml == nil || ctx.Err() != nil {
				return
			}
			if _, err := ml.Join([]string{target.Addr}); err != nil {
				c.log.Debug("reconnect failed", "member", target.Name, "addr", target.Addr, "err", err)
				return
			}
			c.cfg.Counters.Reconnects.Add(1)
			c.log.Info("reconnected to failed member", "member", target.Name, "addr", target.Addr)
			c.announceAlive()
			// The first exchange makes both sides refute the other's view
			// of them (each still holds the other dead at the same
			// incarnation); a second one, once the refutations exist,
			// carries them across and revives both views.
			if clock.Sleep(ctx, c.clock, c.cfg.ReconnectInterval/4) != nil {
				return
			}
			if !c.healing() && c.table.StateOf(target.Name) == StateDead {
				if _, err := ml.Join([]string{target.Addr}); err != nil {
					c.log.Debug("reconnect follow-up failed", "member", target.Name, "err", err)
				}
			}
		}()
	}
}

// seedLoop retries the seeds while this agent has no live peer.
func (c *Cluster) seedLoop(ctx context.Context) {
	for clock.Sleep(ctx, c.clock, c.jitter(c.cfg.JoinRetryInterval, 0.2)) == nil {
		seeds := c.Seeds()
		if len(seeds) == 0 || len(c.table.WithState(StateAlive)) > 0 {
			continue
		}
		ml := c.ml.Load()
		if ml == nil {
			continue
		}
		if n, err := ml.Join(seeds); err != nil {
			c.log.Debug("seeds still unreachable", "seeds", seeds, "err", c.cfg.JoinFailed(err))
		} else {
			c.log.Info("joined cluster", "seeds_reached", n)
		}
	}
}
