package controlplane

import (
	"bytes"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
)

// relayOf fetches every page of the relay as agent a.
func relayOf(t *testing.T, a *pqAgent) []cpapi.AgentKeysRelayEntry {
	t.Helper()
	var out []cpapi.AgentKeysRelayEntry
	after := ""
	for range 100 {
		resp, err := a.client.KeyRelay(t.Context(), after)
		if err != nil {
			t.Fatalf("agent %s: relay: %v", a.id, err)
		}
		out = append(out, resp.Entries...)
		if resp.Cursor == "" {
			return out
		}
		after = resp.Cursor
	}
	t.Fatal("relay pages never end")
	return nil
}

func relayRecipients(t *testing.T, es []cpapi.AgentKeysRelayEntry) []string {
	t.Helper()
	var out []string
	for _, e := range es {
		m, err := dkms.ParseKeyMessage(e.Message)
		if err != nil {
			t.Fatalf("relayed message: %v", err)
		}
		if m.AgentID != e.RecipientAgentID {
			t.Fatalf("entry for %s carries a message for %s", e.RecipientAgentID, m.AgentID)
		}
		out = append(out, e.RecipientAgentID+"/"+m.Key+"/v"+string(rune('0'+m.Version)))
	}
	return out
}

func TestKeyRelayHandsLaggingAgentsMessagesToPeers(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true; c.HeartbeatInterval = 10 * time.Second })
	ctx := e.ctx()
	a := e.enrollPQ("relay-a", nil, 31)
	b := e.enrollPQ("relay-b", nil, 32)
	c := e.enrollPQ("relay-c", nil, 33)
	e.createKey("fleet", &cpapi.KeyPolicy{AllAgents: true})
	for _, x := range []*pqAgent{a, b, c} {
		x.fetch(t, ctx)
	}
	if got := relayOf(t, a); len(got) != 0 {
		t.Fatalf("nobody is behind, relay answered %v", relayRecipients(t, got))
	}

	// A rotation that a and b fetch, c does not.
	if _, err := e.admin.RotateKey(ctx, "fleet"); err != nil {
		t.Fatal(err)
	}
	a.fetch(t, ctx)
	b.fetch(t, ctx)
	if got := relayOf(t, a); len(got) != 0 {
		t.Fatalf("a change younger than a heartbeat interval is relayed: %v", relayRecipients(t, got))
	}
	e.clock.Advance(11 * time.Second)
	got := relayOf(t, a)
	if r := relayRecipients(t, got); len(r) != 1 || r[0] != c.id+"/fleet/v2" {
		t.Fatalf("relay for a: %v, want c's fleet v2 only", r)
	}
	t.Logf("relayed key message: %d bytes (%d as base64 in JSON)", len(got[0].Message), (len(got[0].Message)+2)/3*4)
	// Every relaying agent gets the same bytes (built once, cached).
	fromB := relayOf(t, b)
	if len(fromB) != 1 || !bytes.Equal(fromB[0].Message, got[0].Message) {
		t.Fatal("b is relayed other bytes than a")
	}
	// The relaying agent cannot use it; the recipient can.
	if _, err := a.keys.Accept(ctx, got[0].Message); !errors.Is(err, dkms.ErrNotForThisAgent) {
		t.Fatalf("relaying agent accepting c's message: %v", err)
	}
	if res, err := c.keys.Accept(ctx, got[0].Message); err != nil || !res.Changed {
		t.Fatalf("recipient accepting the relayed message: %+v %v", res, err)
	}
	if _, err := c.keys.Accept(ctx, got[0].Message); !errors.Is(err, dkms.ErrReplay) {
		t.Fatalf("second acceptance: %v", err)
	}
	// The caller never gets its own messages from the relay.
	if got := relayOf(t, c); len(got) != 0 {
		t.Fatalf("relay for the lagging agent itself: %v", relayRecipients(t, got))
	}

	// Two more rotations: only the newest version travels.
	for range 2 {
		if _, err := e.admin.RotateKey(ctx, "fleet"); err != nil {
			t.Fatal(err)
		}
	}
	a.fetch(t, ctx)
	b.fetch(t, ctx)
	e.clock.Advance(11 * time.Second)
	if r := relayRecipients(t, relayOf(t, b)); len(r) != 1 || r[0] != c.id+"/fleet/v4" {
		t.Fatalf("relay after two more rotations: %v", r)
	}
	// Once c fetches for itself it is no longer behind.
	c.fetch(t, ctx)
	if got := relayOf(t, a); len(got) != 0 {
		t.Fatalf("c caught up, relay still answers %v", relayRecipients(t, got))
	}

	// An agent enrolled since the start that never fetched is behind for
	// everything changed since the start.
	d := e.enrollPQ("relay-d", nil, 34)
	if _, err := e.admin.RotateKey(ctx, "fleet"); err != nil {
		t.Fatal(err)
	}
	for _, x := range []*pqAgent{a, b, c} {
		x.fetch(t, ctx)
	}
	e.clock.Advance(11 * time.Second)
	if r := relayRecipients(t, relayOf(t, a)); len(r) != 1 || r[0] != d.id+"/fleet/v5" {
		t.Fatalf("relay with a never-seen agent: %v", r)
	}
}

func TestKeyRelayPagesAndRefusals(t *testing.T) {
	old := relayPageSize
	relayPageSize = 1
	t.Cleanup(func() { relayPageSize = old })
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true; c.HeartbeatInterval = 10 * time.Second })
	ctx := e.ctx()
	a := e.enrollPQ("page-a", nil, 41)
	b := e.enrollPQ("page-b", nil, 42)
	e.createKey("k1", &cpapi.KeyPolicy{AllAgents: true})
	e.createKey("k2", &cpapi.KeyPolicy{AllAgents: true})
	a.fetch(t, ctx)
	b.fetch(t, ctx)
	for _, k := range []string{"k1", "k2"} {
		if _, err := e.admin.RotateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	a.fetch(t, ctx)
	e.clock.Advance(11 * time.Second)
	p1, err := a.client.KeyRelay(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(p1.Entries) != 1 || p1.Cursor == "" {
		t.Fatalf("page 1: %d entries, cursor %q", len(p1.Entries), p1.Cursor)
	}
	p2, err := a.client.KeyRelay(ctx, p1.Cursor)
	if err != nil {
		t.Fatal(err)
	}
	if len(p2.Entries) != 1 || p2.Cursor != "" {
		t.Fatalf("page 2 (the last): %d entries, cursor %q", len(p2.Entries), p2.Cursor)
	}
	if r := append(relayRecipients(t, p1.Entries), relayRecipients(t, p2.Entries)...); r[0] != b.id+"/k1/v2" || r[1] != b.id+"/k2/v2" {
		t.Fatalf("pages: %v", r)
	}

	// Agent identity only: a bearer token is refused, bad queries named.
	if st, body := e.rawRequest("GET", "/v1/agent/keys/relay", e.adminToken, nil, nil, nil); st != http.StatusUnauthorized {
		t.Fatalf("relay with an admin token: %d %s", st, body)
	}
	if st, body := e.rawRequest("GET", "/v1/agent/keys/relay?limit=5", "", nil, nil, &a.cert); st != http.StatusBadRequest || !strings.Contains(body, "limit") {
		t.Fatalf("unknown parameter: %d %s", st, body)
	}
	if st, body := e.rawRequest("GET", "/v1/agent/keys/relay?after=nonsense", "", nil, nil, &a.cert); st != http.StatusBadRequest || !strings.Contains(body, "after") {
		t.Fatalf("bad cursor: %d %s", st, body)
	}
	if st, body := e.rawRequest("GET", "/v1/agent/keys/relay?after="+strings.Repeat("x/", 400), "", nil, nil, &a.cert); st != http.StatusBadRequest {
		t.Fatalf("long cursor: %d %s", st, body)
	}
}
