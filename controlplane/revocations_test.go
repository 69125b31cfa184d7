package controlplane

import (
	"testing"
	"time"

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
