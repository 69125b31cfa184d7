package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/crdt"
	"github.com/hashicorp/memberlist"
)

const (
	// recoveryWindow: see reconnectLoop.
	recoveryWindow  = 2 * time.Minute
	healBoostWindow = 10 * time.Second
	// reconcileMinInterval spaces member-view push/pulls (see reconcileMembers).
	reconcileMinInterval = 2 * time.Second
	applyBatchMsgs       = 64      // received messages merged in one store transaction
	applyBatchBytes      = 4 << 20 // and at most this many of their bytes
)

// applyLoop drains the inbound queue: it decodes messages, merges their
// deltas (a batch per store transaction) and acts on the rest.
func (a *Agent) applyLoop(ctx context.Context) {
	for {
		var first []byte
		select {
		case first = <-a.inbound:
		case <-ctx.Done():
			return
		}
		batch := [][]byte{first}
		size := len(first)
	fill:
		for len(batch) < applyBatchMsgs && size < applyBatchBytes {
			select {
			case b := <-a.inbound:
				batch = append(batch, b)
				size += len(b)
			default:
				break fill
			}
		}
		a.inBytes.Add(-int64(size))
		a.handleBatch(ctx, batch)
	}
}

// handleBatch processes received messages; it is the agent's whole
// inbound message handler (FuzzHandleMessage drives it).
func (a *Agent) handleBatch(ctx context.Context, raw [][]byte) {
	self := a.Name()
	msgs := make([]message, 0, len(raw))
	for _, b := range raw {
		m, err := decodeMessage(b)
		if err != nil {
			a.rejectMsg(err, "")
			continue
		}
		if m.From == self {
			a.rejectMsg(&decodeError{reason: reasonOwnName, err: fmt.Errorf("agent: message claims to come from this agent (%q): duplicate node name?", self)}, "")
			continue
		}
		msgs = append(msgs, m)
	}
	if len(msgs) == 0 {
		return
	}
	if err := a.mergeMessages(ctx, msgs); err != nil {
		if ctx.Err() != nil || errors.Is(err, crdt.ErrClosed) {
			return // shutting down
		}
		// The deltas stay missing (anti-entropy offers them again); the
		// requests and version vectors in the messages are still good.
		a.log.Error("merging received deltas", "err", err)
	}
	for _, m := range msgs {
		a.act(m)
	}
}

// mergeMessages merges the deltas of msgs in one transaction. When the
// batch is refused as bad input, each message is merged alone so only the
// bad ones are rejected (their deltas are cleared). Other errors (store
// closed, disk) are returned.
func (a *Agent) mergeMessages(ctx context.Context, msgs []message) error {
	s := a.Store()
	vv, err := s.VersionVector(ctx)
	if err != nil {
		return err
	}
	// Drop deltas the store already covers: gossip delivers most deltas
	// several times.
	var all []crdt.Delta
	for i := range msgs {
		kept := msgs[i].Deltas[:0:0]
		for _, d := range msgs[i].Deltas {
			if d.To > vv[d.Origin] {
				kept = append(kept, d)
			}
		}
		msgs[i].Deltas = kept
		all = append(all, kept...)
	}
	if len(all) == 0 {
		return nil
	}
	st, err := s.Merge(ctx, all)
	if err == nil {
		a.m.deltasApplied.Add(uint64(st.Applied))
		return nil
	}
	if !isBadInput(err) {
		return err
	}
	for i := range msgs {
		if len(msgs[i].Deltas) == 0 {
			continue
		}
		st, err := s.Merge(ctx, msgs[i].Deltas)
		switch {
		case err == nil:
			a.m.deltasApplied.Add(uint64(st.Applied))
		case isBadInput(err):
			a.rejectMsg(err, msgs[i].From)
			msgs[i].Deltas = nil
		default:
			return err
		}
	}
	return nil
}

func isBadInput(err error) bool {
	return errors.Is(err, crdt.ErrInvalidDelta) || errors.Is(err, crdt.ErrClockDrift)
}

func (a *Agent) rejectMsg(err error, from string) {
	reason := rejectReason(err)
	a.m.reject(reason)
	if from != "" {
		a.log.Warn("gossip rejected", "reason", reason, "from", from, "err", err)
	} else {
		a.log.Warn("gossip rejected", "reason", reason, "err", err)
	}
}

// act performs what a merged message asks for.
func (a *Agent) act(m message) {
	peers := a.peers.Load()
	switch m.Type {
	case msgSyncReq:
		peers.SetVV(m.From, m.VV)
		a.shipper.enqueue(shipJob{peer: m.From, addr: m.Addr, vv: m.VV, respond: true})
		if m.Digest != peers.Digest() {
			a.reconcileMembers(m.From, m.Addr)
		}
	case msgSyncResp:
		peers.SetVV(m.From, m.VV)
		if m.PushBack {
			a.shipper.enqueue(shipJob{peer: m.From, vv: m.VV}) // push back what the responder lacks
		}
		a.syncer.heard(m.From, m.Last)
	case msgSyncData:
		a.syncer.heard(m.From, m.Last)
		if m.Last {
			a.pushBacks.done(m.From)
		}
	case msgState:
		peers.SetVV(m.From, m.VV)
		a.shipper.enqueue(shipJob{peer: m.From, vv: m.VV})
	case msgLeave:
		if peers.MarkLeaving(m.From) {
			a.log.Info("member is leaving", "member", m.From)
			if msg, err := encodeMessage(message{Type: msgLeave, From: m.From}, nil); err == nil {
				a.queueBroadcast(msg) // pass the intent on, once
			}
		}
	}
}

// announceAlive re-advertises this agent with a new incarnation (memberlist
// UpdateNode), at most once per healBoostWindow. When a partition heals,
// each side still holds the other dead at the incarnation it last saw, and
// memberlist only revives a member on a higher one, which the member makes
// only once it hears it was declared dead. Announcing as soon as the agent
// sees the other side again (a reconnect succeeded, a failed member came
// back) spares that round trip: the new incarnation spreads by gossip and
// by every push/pull of the reconnect loop.
func (a *Agent) announceAlive() {
	now := a.clk.Now().UnixNano()
	last := a.lastAnnounce.Load()
	if now-last < int64(healBoostWindow) || !a.lastAnnounce.CompareAndSwap(last, now) {
		return
	}
	ml := a.mlReady.Load()
	if ml == nil || !a.running.Load() {
		return
	}
	// Not on the caller's goroutine: memberlist may be holding its node
	// lock (NotifyJoin), and UpdateNode waits for the broadcast.
	go func() {
		if err := ml.UpdateNode(time.Second); err != nil {
			a.log.Debug("re-advertising after a heal", "err", err)
		}
	}()
}

// healing reports whether a failed member came back within
// healBoostWindow: the cluster is reassembling after a partition or outage.
func (a *Agent) healing() bool {
	return a.clk.Now().Sub(time.Unix(0, a.lastRevival.Load())) < healBoostWindow
}

// reconcileMembers runs a memberlist push/pull with a peer whose view of
// the alive members differs from this agent's, in the background. It is
// for the steady state (an announcement that never reached one agent):
// while members are down or coming back, views differ for a while anyway
// and the reconnect loop is at work, so it stays out of the way; and it
// runs at most once per reconcileMinInterval.
func (a *Agent) reconcileMembers(peer, addr string) {
	if a.healing() || a.peers.Load().Count(StateDead) > 0 {
		return
	}
	now := a.clk.Now().UnixNano()
	last := a.lastReconcile.Load()
	if now-last < int64(reconcileMinInterval) || !a.lastReconcile.CompareAndSwap(last, now) {
		return
	}
	if node, ok := a.peers.Load().Lookup(peer); ok {
		addr = net.JoinHostPort(node.Addr.String(), strconv.Itoa(int(node.Port)))
	}
	if addr == "" {
		return
	}
	select {
	case a.rejoins <- struct{}{}:
	default:
		return
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer func() { <-a.rejoins }()
		ml := a.mlReady.Load()
		if ml == nil || !a.running.Load() {
			return
		}
		if _, err := ml.Join([]string{addr}); err != nil {
			a.log.Debug("member reconciliation failed", "peer", peer, "err", err)
			return
		}
		a.m.memberSyncs.Add(1)
	}()
}

// announceLeave tells peers this agent is leaving gracefully, so they
// record it as left rather than failed when memberlist reports it gone:
// directly to a few live peers, and by gossip.
func (a *Agent) announceLeave() {
	msg, err := encodeMessage(message{Type: msgLeave, From: a.Name()}, nil)
	if err != nil {
		a.log.Error("encoding leave intent", "err", err)
		return
	}
	a.queueBroadcast(msg)
	alive := a.peers.Load().WithState(StateAlive)
	done := make(chan struct{}, 3)
	sent := 0
	for ; sent < 3 && len(alive) > 0; sent++ {
		j := a.randIntN(len(alive))
		name := alive[j].Name
		alive = append(alive[:j], alive[j+1:]...)
		go func() {
			if err := a.sendTo(name, msg); err != nil {
				a.log.Debug("sending leave intent", "peer", name, "err", err)
			}
			done <- struct{}{}
		}()
	}
	timeout := time.After(time.Second) // an unreachable peer must not hold up the leave
	for ; sent > 0; sent-- {
		select {
		case <-done:
		case <-timeout:
			return
		}
	}
}

// sendTo sends one message reliably (a memberlist stream) to a member.
func (a *Agent) sendTo(name string, msg []byte) error {
	return a.sendToAddr(name, "", msg)
}

// sendToAddr is sendTo with a fallback address ("ip:port") for a sender
// this agent does not know yet (its join has not reached us).
func (a *Agent) sendToAddr(name, addr string, msg []byte) error {
	node, ok := a.peers.Load().Lookup(name)
	if !ok {
		host, port, err := net.SplitHostPort(addr)
		p, perr := strconv.Atoi(port)
		if addr == "" || err != nil || perr != nil || net.ParseIP(host) == nil {
			return fmt.Errorf("agent: unknown member %q", name)
		}
		node = &memberlist.Node{Name: name, Addr: net.ParseIP(host), Port: uint16(p)}
	}
	ml := a.mlReady.Load()
	if ml == nil {
		return ErrNotRunning
	}
	return ml.SendReliable(node, msg)
}

// syncer runs this agent's anti-entropy requests one at a time: it sends
// its version vector to the next queued peer and waits until that peer has
// sent everything it lacks before asking the next, so that a burst of joins
// (a partition healing, a restart) fetches each missing op about once
// instead of once per peer. It gives up on a peer that stays silent for
// SyncTimeout (a large answer keeps the round alive chunk by chunk).
type syncer struct {
	now      func() time.Time
	mu       sync.Mutex
	queue    []string
	queued   map[string]time.Time // when each queued peer was queued
	waiting  string
	kick     chan struct{}
	doneCh   chan struct{}
	activity chan struct{}
}

func newSyncer(now func() time.Time) *syncer {
	return &syncer{
		now:      now,
		queued:   map[string]time.Time{},
		kick:     make(chan struct{}, 1),
		doneCh:   make(chan struct{}, 1),
		activity: make(chan struct{}, 1),
	}
}

// enqueue schedules a request to peer (once, however often it is asked).
func (s *syncer) enqueue(peer string) {
	s.mu.Lock()
	if _, ok := s.queued[peer]; !ok {
		s.queued[peer] = s.now()
		s.queue = append(s.queue, peer)
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// next pops the next peer to ask and when it was queued.
func (s *syncer) next() (string, time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 {
		return "", time.Time{}, false
	}
	p := s.queue[0]
	s.queue = s.queue[1:]
	at := s.queued[p]
	delete(s.queued, p)
	s.waiting = p
	for _, ch := range []chan struct{}{s.doneCh, s.activity} {
		select { // discard signals left over from an earlier round
		case <-ch:
		default:
		}
	}
	return p, at, true
}

// heard reports an answer from peer; last marks its final message.
func (s *syncer) heard(peer string, last bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waiting != peer {
		return
	}
	ch := s.activity
	if last {
		s.waiting = ""
		ch = s.doneCh
	}
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (a *Agent) syncLoop(ctx context.Context) {
	for {
		select {
		case <-a.syncer.kick:
		case <-ctx.Done():
			return
		}
		for {
			peer, queuedAt, ok := a.syncer.next()
			if !ok {
				break
			}
			if a.peerHasNothingNew(ctx, peer, queuedAt) {
				a.m.syncSkipped.Add(1)
				continue
			}
			if err := a.requestSync(ctx, peer); err != nil {
				a.log.Debug("sync request failed", "peer", peer, "err", err)
				continue
			}
			if !a.awaitRound(ctx, peer) {
				return
			}
		}
	}
}

// awaitRound waits for peer to finish answering, or to stay silent for
// SyncTimeout; it returns false when ctx ends.
func (a *Agent) awaitRound(ctx context.Context, peer string) bool {
	timer := time.NewTimer(a.cfg.Gossip.SyncTimeout)
	defer timer.Stop()
	for {
		select {
		case <-a.syncer.doneCh:
			a.m.syncRounds.Add(1)
			return true
		case <-a.syncer.activity:
			timer.Reset(a.cfg.Gossip.SyncTimeout)
		case <-timer.C:
			a.log.Debug("sync round timed out", "peer", peer)
			return true
		case <-ctx.Done():
			return false
		}
	}
}

// peerHasNothingNew reports whether peer reported its version vector
// after since and this agent already holds everything in it: asking it
// would fetch nothing. This is what keeps a healed partition from costing
// one exchange per pair of agents: the peers that ask this agent first
// have told it what they hold.
func (a *Agent) peerHasNothingNew(ctx context.Context, peer string, since time.Time) bool {
	theirs, at, ok := a.peers.Load().ReportedVV(peer)
	if !ok || at.Before(since) {
		return false
	}
	ours, err := a.Store().VersionVector(ctx)
	return err == nil && !holdsMore(theirs, ours)
}

func (a *Agent) requestSync(ctx context.Context, peer string) error {
	vv, err := a.Store().VersionVector(ctx)
	if err != nil {
		return err
	}
	msg, err := encodeMessage(message{Type: msgSyncReq, From: a.Name(), Addr: a.GossipAddr(),
		Digest: a.peers.Load().Digest(), VV: vv}, nil)
	if err != nil {
		return err
	}
	return a.sendTo(peer, msg)
}

// periodicSyncLoop asks one random live peer every sync interval (±20%).
func (a *Agent) periodicSyncLoop(ctx context.Context) {
	for {
		select {
		case <-time.After(a.jitter(a.cfg.Gossip.SyncInterval, 0.2)):
		case <-ctx.Done():
			return
		}
		alive := a.peers.Load().WithState(StateAlive)
		if len(alive) == 0 {
			continue
		}
		a.syncer.enqueue(alive[a.randIntN(len(alive))].Name)
	}
}

// shipJob ships to peer the deltas its version vector lacks; respond marks
// the answer to a sync request, which starts with this agent's own version
// vector and always ends with a message flagged last.
type shipJob struct {
	peer    string
	addr    string // where to send if peer is not (yet) a known member
	vv      crdt.VersionVector
	respond bool
}

// shipper queues ship jobs, one per peer: a newer job for a queued peer
// replaces the older one's version vector (the newer report is closer to
// what the peer holds). shipWorkers jobs run at once, never two for the
// same peer.
type shipper struct {
	mu     sync.Mutex
	order  []string
	jobs   map[string]shipJob
	active map[string]bool
	kick   chan struct{}
}

// shipWorkers is how many peers are shipped to at once.
const shipWorkers = 4

func newShipper() *shipper {
	return &shipper{jobs: map[string]shipJob{}, active: map[string]bool{}, kick: make(chan struct{}, shipWorkers)}
}

func (s *shipper) enqueue(j shipJob) {
	s.mu.Lock()
	if old, ok := s.jobs[j.peer]; ok {
		j.respond = j.respond || old.respond
		if j.addr == "" {
			j.addr = old.addr
		}
	} else {
		s.order = append(s.order, j.peer)
	}
	s.jobs[j.peer] = j
	s.mu.Unlock()
	s.wake()
}

func (s *shipper) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// next pops the oldest job whose peer is not being shipped to.
func (s *shipper) next() (shipJob, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, p := range s.order {
		if s.active[p] {
			continue
		}
		s.order = append(s.order[:i:i], s.order[i+1:]...)
		j := s.jobs[p]
		delete(s.jobs, p)
		s.active[p] = true
		return j, true
	}
	return shipJob{}, false
}

func (s *shipper) finish(peer string) {
	s.mu.Lock()
	delete(s.active, peer)
	pending := len(s.order) > 0
	s.mu.Unlock()
	if pending {
		s.wake()
	}
}

func (a *Agent) shipLoop(ctx context.Context) {
	var wg sync.WaitGroup
	for i := 0; i < shipWorkers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-a.shipper.kick:
				case <-ctx.Done():
					return
				}
				for ctx.Err() == nil {
					j, ok := a.shipper.next()
					if !ok {
						break
					}
					if err := a.ship(ctx, j); err != nil && ctx.Err() == nil {
						a.log.Debug("shipping deltas failed", "peer", j.peer, "err", err)
					}
					a.shipper.finish(j.peer)
				}
			}
		}()
	}
	wg.Wait()
}

// holdsMore reports whether a holder of vv has ops a holder of own lacks.
func holdsMore(vv, own crdt.VersionVector) bool {
	for origin, seq := range vv {
		if seq > own[origin] {
			return true
		}
	}
	return false
}

// pushBackGate lets one requester at a time push back what this agent
// lacks. When a burst of peers asks at once (a partition heals, this agent
// restarts), all their requests are answered with the same stale version
// vector; if each of them pushed back, this agent would receive the same
// ops from every one. It asks the first; what remains missing afterwards
// comes with the next answer or its own requests.
type pushBackGate struct {
	mu    sync.Mutex
	peer  string
	until time.Time
}

// claim reserves the push-back for peer until now+ttl, unless another
// peer holds it.
func (g *pushBackGate) claim(peer string, now time.Time, ttl time.Duration) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.peer != "" && g.peer != peer && now.Before(g.until) {
		return false
	}
	g.peer, g.until = peer, now.Add(ttl)
	return true
}

// done releases the push-back held by peer (its last message arrived).
func (g *pushBackGate) done(peer string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.peer == peer {
		g.peer = ""
	}
}

// ship sends peer the deltas it lacks, in chunks of at most MaxChunkBytes,
// advancing a copy of its version vector after each chunk until nothing is
// missing. It never sends more than the difference.
func (a *Agent) ship(ctx context.Context, j shipJob) error {
	s := a.Store()
	self := a.Name()
	var own crdt.VersionVector
	pushBack := false
	if j.respond {
		var err error
		if own, err = s.VersionVector(ctx); err != nil {
			return err
		}
		a.m.syncRounds.Add(1)
		pushBack = holdsMore(j.vv, own) && a.pushBacks.claim(j.peer, a.clk.Now(), a.cfg.Gossip.SyncTimeout)
	}
	vv := j.vv.Clone()
	if vv == nil {
		vv = crdt.VersionVector{}
	}
	chunk := a.cfg.Gossip.MaxChunkBytes
	cur, err := s.DeltasSince(ctx, vv, chunk)
	if err != nil {
		return err
	}
	first := true
	for {
		var next []crdt.Delta
		last := true
		if len(cur) > 0 {
			before := maps.Clone(vv)
			vv.Advance(cur)
			if !maps.Equal(before, vv) { // guard: a range that does not advance would repeat forever
				if next, err = s.DeltasSince(ctx, vv, chunk); err != nil {
					return err
				}
				last = len(next) == 0
			}
		}
		var m message
		switch {
		case first && j.respond:
			m = message{Type: msgSyncResp, From: self, VV: own, Last: last, PushBack: pushBack, Deltas: cur}
		case len(cur) == 0:
			return nil // nothing to push
		default:
			m = message{Type: msgSyncData, From: self, Last: last, Deltas: cur}
		}
		msg, err := encodeMessage(m, nil)
		if err != nil {
			return err
		}
		if err := a.sendToAddr(j.peer, j.addr, msg); err != nil {
			return err
		}
		if len(cur) > 0 {
			a.m.chunksSent.Add(1)
		}
		if last {
			return nil
		}
		first = false
		cur = next
	}
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
func (a *Agent) reconnectLoop(ctx context.Context) {
	for {
		interval := a.cfg.Gossip.ReconnectInterval
		if a.healing() {
			interval /= 2 // a partition is healing: find the rest of the fleet fast
		}
		select {
		case <-time.After(a.jitter(interval, 0.25)):
		case <-ctx.Done():
			return
		}
		peers := a.peers.Load()
		for _, name := range peers.Reap(a.cfg.Gossip.ReconnectTimeout) {
			a.log.Info("forgetting member", "member", name)
		}
		failed := peers.WithState(StateDead)
		if len(failed) == 0 {
			continue
		}
		target := failed[a.randIntN(len(failed))]
		now := a.clk.Now()
		recovering := now.Sub(time.Unix(0, a.lastRevival.Load())) < recoveryWindow || now.Sub(target.Since) < recoveryWindow
		if p := float64(len(failed)) / float64(max(peers.Count(StateAlive), 1)); !recovering && a.randFloat() > p {
			continue
		}
		select {
		case a.rejoins <- struct{}{}:
		default:
			continue // enough attempts in flight
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer func() { <-a.rejoins }()
			ml := a.mlReady.Load()
			if ml == nil || ctx.Err() != nil {
				return
			}
			if _, err := ml.Join([]string{target.Addr}); err != nil {
				a.log.Debug("reconnect failed", "member", target.Name, "addr", target.Addr, "err", err)
				return
			}
			a.m.reconnects.Add(1)
			a.log.Info("reconnected to failed member", "member", target.Name, "addr", target.Addr)
			a.announceAlive()
			// The first exchange makes both sides refute the other's view
			// of them (each still holds the other dead at the same
			// incarnation); a second one, once the refutations exist,
			// carries them across and revives both views.
			select {
			case <-time.After(a.cfg.Gossip.ReconnectInterval / 4):
			case <-ctx.Done():
				return
			}
			if !a.healing() && a.peers.Load().StateOf(target.Name) == StateDead {
				if _, err := ml.Join([]string{target.Addr}); err != nil {
					a.log.Debug("reconnect follow-up failed", "member", target.Name, "err", err)
				}
			}
		}()
	}
}

// seedLoop retries the seeds while this agent has no live peer.
func (a *Agent) seedLoop(ctx context.Context) {
	for {
		select {
		case <-time.After(a.jitter(a.cfg.Gossip.JoinRetryInterval, 0.2)):
		case <-ctx.Done():
			return
		}
		seeds := a.seeds()
		if len(seeds) == 0 || len(a.peers.Load().WithState(StateAlive)) > 0 {
			continue
		}
		ml := a.mlReady.Load()
		if ml == nil {
			continue
		}
		if n, err := ml.Join(seeds); err != nil {
			a.log.Debug("seeds still unreachable", "seeds", seeds, "err", a.gossipKeys.JoinFailed(err))
		} else {
			a.log.Info("joined cluster", "seeds_reached", n)
		}
	}
}

// compactLoop compacts the store every compaction interval. Removals
// (tombstones) are compacted up to the pointwise minimum of the version
// vectors of every member that has not left, once every such member has
// reported one; superseded ops always (see crdt.Store.Compact). Members are
// forgotten after gossip.reconnect_timeout (72 h), well before the
// tombstone TTL (7 days) lets a removal go.
func (a *Agent) compactLoop(ctx context.Context) {
	for {
		select {
		case <-time.After(a.jitter(a.cfg.State.CompactionInterval, 0.1)):
		case <-ctx.Done():
			return
		}
		if err := a.compact(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("compaction failed", "err", err)
		}
	}
}

func (a *Agent) compact(ctx context.Context) error {
	s := a.Store()
	vv, err := s.VersionVector(ctx)
	if err != nil {
		return err
	}
	stable, ok := a.peers.Load().StableVV(vv)
	if !ok {
		// Superseded history can always go; removals wait until every
		// member has reported what it holds.
		a.log.Debug("compacting superseded ops only: not every member has reported its version vector")
		stable = crdt.VersionVector{}
	}
	st, err := s.Compact(ctx, stable, a.clk.Now())
	if err != nil {
		return err
	}
	if st.OpsRemoved > 0 || st.TombstonesRemoved > 0 {
		a.log.Info("compacted state", "ops_removed", st.OpsRemoved, "tombstones_removed", st.TombstonesRemoved)
	}
	return nil
}

var _ memberlist.Broadcast = deltaBroadcast(nil)
