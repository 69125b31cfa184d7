package controlplane

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// watchResult is what a WatchKeyMessages call in the background returned.
type watchResult struct {
	resp cpapi.AgentKeysResponse
	err  error
	at   time.Time
}

func (a *pqAgent) watch(ctx context.Context, wait time.Duration) <-chan watchResult {
	out := make(chan watchResult, 1)
	cursor := a.cursor
	go func() {
		resp, err := a.client.WatchKeyMessages(ctx, cursor, wait)
		out <- watchResult{resp: resp, err: err, at: time.Now()}
	}()
	return out
}

// waitHeld waits until the server holds n key requests.
func (e *keyEnv) waitHeld(n int64) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for e.srv.keys.watch.held.Load() != n {
		if time.Now().After(deadline) {
			e.t.Fatalf("held key requests: %v, want %v", e.srv.keys.watch.held.Load(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestKeysWatchAnswersAtTheRotation(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	ctx := e.ctx()
	a := e.enrollPQ("w1", nil, 61)
	// Without a cursor the answer comes at once, whatever the wait.
	if resp, err := a.client.WatchKeyMessages(ctx, "", time.Minute); err != nil || len(resp.Messages) != 2 {
		t.Fatalf("first watch: %d messages, %v; want the 2 built-in keys at once", len(resp.Messages), err)
	}
	a.fetch(t, ctx)

	res := a.watch(ctx, time.Minute)
	e.waitHeld(1)
	// A change to a key the agent may not hold wakes the request, which
	// keeps waiting.
	if _, err := e.admin.CreateKey(ctx, cpapi.CreateKeyRequest{Name: "cp-only"}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-res:
		t.Fatalf("answered after an unrelated change: %d messages, %v", len(r.resp.Messages), r.err)
	case <-time.After(50 * time.Millisecond):
	}
	rotated := time.Now()
	if _, err := e.admin.RotateKey(ctx, cpapi.GossipKeyName); err != nil {
		t.Fatal(err)
	}
	var r watchResult
	select {
	case r = <-res:
	case <-time.After(30 * time.Second):
		t.Fatal("held request not answered after the rotation")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Logf("held request answered %v after the rotation call began (round trip of the rotation included)", r.at.Sub(rotated))
	if len(r.resp.Messages) != 2 || r.resp.Cursor == a.cursor {
		t.Fatalf("after the rotation: %d messages (want 2: the new primary and the old one, decrypt-only), cursor changed %v",
			len(r.resp.Messages), r.resp.Cursor != a.cursor)
	}
	for _, m := range r.resp.Messages {
		if _, err := a.keys.Accept(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	e.waitHeld(0)
	if strings.Contains(e.logs.String(), "cannot extend") {
		t.Fatalf("the held request kept the server's timeouts:\n%s", e.logs.String())
	}
}

func TestKeysWatchTimesOutEmpty(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	ctx := e.ctx()
	a := e.enrollPQ("w2", nil, 62)
	a.fetch(t, ctx)
	start := time.Now()
	resp, err := a.client.WatchKeyMessages(ctx, a.cursor, 150*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Messages) != 0 || resp.Cursor != a.cursor {
		t.Fatalf("at the end of the wait: %d messages, same cursor %v", len(resp.Messages), resp.Cursor == a.cursor)
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Fatalf("answered after %v, before the wait ended", el)
	}
	e.waitHeld(0)
}

func TestKeysWatchFreedWhenTheClientGoesAway(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	a := e.enrollPQ("w3", nil, 63)
	a.fetch(t, e.ctx())
	ctx, cancel := context.WithCancel(e.ctx())
	res := a.watch(ctx, 4*time.Minute)
	e.waitHeld(1)
	cancel()
	r := <-res
	if !errors.Is(r.err, context.Canceled) {
		t.Fatalf("canceled watch returned %v", r.err)
	}
	// The server lets go of the request (its handler returns).
	e.waitHeld(0)
}

func TestKeysWatchReleasedAtShutdown(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	a := e.enrollPQ("w4", nil, 64)
	a.fetch(t, e.ctx())
	res := a.watch(e.ctx(), 4*time.Minute)
	e.waitHeld(1)
	start := time.Now()
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil || len(r.resp.Messages) != 0 {
		t.Fatalf("at shutdown: %d messages, %v; want an empty answer", len(r.resp.Messages), r.err)
	}
	t.Logf("Close with a held request took %v", time.Since(start))
}

func TestKeysWatchWaitValidated(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	a := e.enrollPQ("w5", nil, 65)
	for _, w := range []string{"6m", "-1s", "soon", "10"} {
		status, msg := e.rawRequest("GET", "/v1/agent/keys?wait="+w, "", nil, nil, &a.cert)
		if status != http.StatusBadRequest || !strings.Contains(msg, "wait") {
			t.Errorf("wait=%s: %d %s; want 400 naming wait", w, status, msg)
		}
	}
	status, msg := e.rawRequest("GET", "/v1/agent/keys?wait=1s&wait=2s", "", nil, nil, &a.cert)
	if status != http.StatusBadRequest || !strings.Contains(msg, "wait") {
		t.Errorf("wait twice: %d %s", status, msg)
	}
	if _, err := a.client.WatchKeyMessages(e.ctx(), "", cpapi.MaxKeyWatchWait+time.Second); !errors.Is(err, cpapi.ErrBadRequest) {
		t.Errorf("client with wait above the maximum: %v", err)
	}
	for _, w := range []string{"0", "0s", "5m"} {
		if status, msg := e.rawRequest("GET", "/v1/agent/keys?wait="+w, "", nil, nil, &a.cert); status != http.StatusOK {
			t.Errorf("wait=%s without a cursor: %d %s", w, status, msg)
		}
	}
}
