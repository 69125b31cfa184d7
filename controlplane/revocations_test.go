package controlplane

import (
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
)

// TestDecommissionIssuesSignedRevocationList: a decommission wakes held key
// requests, whose answer carries the revocation list signed with the
// key-message key and naming the agent (id and node name); later answers,
// changed or not, carry it too; before any decommission there is none.
func TestDecommissionIssuesSignedRevocationList(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	ctx := e.ctx()
	a := e.enrollPQ("rv-a", nil, 71)
	x := e.enrollPQ("rv-x", nil, 72)
	a.fetch(t, ctx)
	x.fetch(t, ctx)
	if resp, err := a.client.KeyMessages(ctx, a.cursor); err != nil || resp.Revocations != nil {
		t.Fatalf("a list before any revocation: %d bytes, %v", len(resp.Revocations), err)
	}
	res := a.watch(ctx, time.Minute)
	e.waitHeld(1)
	if _, err := e.admin.Decommission(ctx, x.id); err != nil {
		t.Fatal(err)
	}
	var r watchResult
	select {
	case r = <-res:
	case <-time.After(30 * time.Second):
		t.Fatal("held request not answered after the decommission")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	check := func(raw []byte) {
		t.Helper()
		l, err := dkms.ParseRevocationList(raw)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Verify(a.cpKey); err != nil {
			t.Fatal(err)
		}
		if l.Version != 1 || l.Agents[0].ID != x.id || l.Agents[0].Name != "rv-x" || !l.Names()["rv-x"] {
			t.Fatalf("list %+v", l)
		}
	}
	check(r.resp.Revocations)
	a.cursor = r.resp.Cursor
	resp, err := a.client.KeyMessages(ctx, a.cursor)
	if err != nil {
		t.Fatal(err)
	}
	check(resp.Revocations)
}

// gossipVersionState is the state of one gossip key version.
func gossipVersionState(t *testing.T, e *keyEnv, v uint32) dkms.State {
	t.Helper()
	k, err := e.srv.KeyService().Key(e.ctx(), cpapi.GossipKeyName)
	if err != nil {
		t.Fatal(err)
	}
	for _, vi := range k.Versions {
		if vi.Version == v {
			return vi.State
		}
	}
	t.Fatalf("no gossip version %d", v)
	return 0
}

// TestRevocationRetiresOldGossipKeyOnceLiveAgentsConfirm: the gossip
// rotation of a revocation retires the versions before it as soon as the
// new one is active and every live agent confirmed holding it, not a
// remove grace (an hour) later; a live agent that has not confirmed holds
// it up.
func TestRevocationRetiresOldGossipKeyOnceLiveAgentsConfirm(t *testing.T) {
	// Agents stay online across the clock's jumps unless they fall silent
	// for 10 minutes.
	e := newKeyEnv(t, func(c *Config) {
		c.Keys.DevUnseal = true
		c.StaleAfter, c.OfflineAfter = 10*time.Minute, 20*time.Minute
	})
	ctx := e.ctx()
	a := e.enrollPQ("rt-a", nil, 81)
	b := e.enrollPQ("rt-b", nil, 82)
	x := e.enrollPQ("rt-x", nil, 83)
	for _, p := range []*pqAgent{a, b, x} {
		p.fetch(t, ctx)
		p.fetch(t, ctx) // confirms gossip v1
	}
	if _, err := e.admin.Decommission(ctx, x.id); err != nil {
		t.Fatal(err)
	}
	if st := gossipVersionState(t, e, 1); st != dkms.StateDecryptOnly {
		t.Fatalf("gossip v1 after the revocation: %s", st)
	}
	beat := func(p *pqAgent) {
		t.Helper()
		if _, err := p.client.Heartbeat(ctx, cpapi.Heartbeat{Version: "1"}); err != nil {
			t.Fatal(err)
		}
	}
	// a receives v2 and confirms it (its next request starts from it).
	a.fetch(t, ctx)
	a.fetch(t, ctx)
	// The new version becomes active; both live agents are online.
	e.clock.Advance(dkms.DefaultGossipInstallGrace + revocationRemoveMargin + time.Second)
	beat(a)
	beat(b)
	a.fetch(t, ctx)
	time.Sleep(200 * time.Millisecond) // the check runs in the background
	time.Sleep(200 * time.Millisecond)
	if st := gossipVersionState(t, e, 1); st != dkms.StateDecryptOnly {
		t.Fatalf("v1 %s before b confirmed v2\n%s", st, e.logs.String())
	}
	// b fetches v2 and confirms it: v1 is retired.
	b.fetch(t, ctx)
	b.fetch(t, ctx)
	for deadline := time.Now().Add(10 * time.Second); gossipVersionState(t, e, 1) != dkms.StateRetired; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("v1 still %s after every live agent confirmed v2", gossipVersionState(t, e, 1))
		}
	}
	// a's next fetch brings the retirement (state only, no key material).
	resp, err := a.client.KeyMessages(ctx, a.cursor)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, raw := range resp.Messages {
		m, err := dkms.ParseKeyMessage(raw)
		if err != nil {
			t.Fatal(err)
		}
		if m.Key == cpapi.GossipKeyName && m.Version == 1 && m.State == dkms.StateRetired && m.Envelope == nil {
			found = true
		}
	}
	if !found {
		t.Fatalf("a was not sent the retirement of gossip v1 (%d messages)", len(resp.Messages))
	}
}
