package uplink

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// Keyring is the agent's key material as the uplink uses it: the X-Wing
// key pair registered at enrollment, and the dkms keyring that receives
// the control plane's key messages. The agent's implementation keeps both
// sealed at rest under its device key (package agent, keys.go).
type Keyring interface {
	// XWingPublic is the agent's X-Wing public key, sent at enrollment;
	// the control plane seals key versions to it.
	XWingPublic() []byte
	// Open returns the keyring of the enrolled agent, checking key
	// messages against the pinned control-plane key. The uplink calls it
	// once it knows both; later calls return the same keyring.
	Open(ctx context.Context, agentID string, controlPlane *pqcrypto.VerifyingKey) (*dkms.AgentKeys, error)
}

// Keys returns the agent's opened keyring; nil before the agent is
// enrolled and its keyring opened, or without Deps.Keyring.
func (u *Uplink) Keys() *dkms.AgentKeys {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.keys
}

// openKeyring opens the keyring with the pinned key of id; it does nothing
// when it is open, or when no key is pinned yet.
func (u *Uplink) openKeyring(ctx context.Context, id *identity) (*dkms.AgentKeys, error) {
	if ak := u.Keys(); ak != nil || u.deps.Keyring == nil {
		return ak, nil
	}
	vk, err := id.verifyingKey()
	if err != nil || vk == nil {
		return nil, err
	}
	ak, err := u.deps.Keyring.Open(ctx, id.AgentID, vk)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeyring, err)
	}
	u.mu.Lock()
	u.keys = ak
	u.mu.Unlock()
	u.log.Info("agent keyring open", "agent_id", id.AgentID, "control_plane_key", vk.Fingerprint(), "keys", len(ak.Keys()))
	return ak, nil
}

// pinVerifyingKey fetches the control plane's key-message signing key
// for an agent that enrolled before it was part of the enrollment answer,
// and records it in identity.json. Trust comes from the mutual TLS
// connection to the server the agent enrolled with.
func (u *Uplink) pinVerifyingKey(ctx context.Context, client *cpapi.Client) (outcome, error) {
	var resp cpapi.VerifyingKeyResponse
	o, err := u.do(ctx, "keys", func(rctx context.Context) (string, error) {
		var err error
		resp, err = client.KeysVerifyingKey(rctx)
		return "", err
	})
	if o != outcomeOK {
		return o, err
	}
	vk, err := pqcrypto.ParseVerifyingKey(resp.PublicKey)
	if err != nil {
		return outcomeRejected, fmt.Errorf("uplink: the control plane's key-message signing key: %w", err)
	}
	u.mu.Lock()
	rec := u.id.identityRecord
	u.mu.Unlock()
	rec.KeysVerifyingKey = vk.Bytes()
	if err := writeIdentityRecord(u.idDir, rec); err != nil {
		return outcomeRejected, err
	}
	u.mu.Lock()
	u.id.KeysVerifyingKey = rec.KeysVerifyingKey
	u.mu.Unlock()
	u.log.Info("pinned the control plane's key-message signing key", "fingerprint", vk.Fingerprint())
	return outcomeOK, nil
}

// keyWatchLoop keeps the agent's keyring current. It pins the control
// plane's signing key if needed, opens the keyring, and long-polls GET
// /v1/agent/keys with wait = KeyWatchWait: the control plane answers as
// soon as the agent's key state changes, and the loop asks again at once,
// so a new key version reaches the keyring within a round trip of its
// creation rather than at the next heartbeat. Failures back off with
// jitter and respect the breaker (while it is not closed the loop asks
// without waiting, so a held request is never the breaker's probe); a
// sealed key service is asked again after a back-off; a control plane
// that does not know "wait" is asked every heartbeat interval instead.
func (u *Uplink) keyWatchLoop(ctx context.Context) {
	if !u.waitEnrolled(ctx) {
		return
	}
	client := u.agentClient()
	resume := false
	for {
		if !u.waitReady(ctx) {
			return
		}
		next, ok := u.keyWatchRound(ctx, client, resume)
		if !ok {
			return
		}
		resume = next > 0
		// After a failure, or between fetches without waiting, the next
		// acknowledged heartbeat ends the pause.
		u.mu.Lock()
		acked := u.hbAcked
		u.mu.Unlock()
		if next > 0 && !u.sleep(ctx, next, acked) {
			return
		}
	}
}

// keyWatchRound runs one fetch of the key watch and returns how long to
// pause before the next (an acknowledged heartbeat ends the pause early);
// ok is false when the uplink stops. After a pause (resume) the first
// fetch is answered at once, which confirms that the control plane
// answers again before a request is held. A failed fetch is asked again after
// the next acknowledged heartbeat, as when keys were fetched per
// heartbeat: the heartbeats probe the control plane, and the breaker
// counts one key failure per heartbeat round at most.
func (u *Uplink) keyWatchRound(ctx context.Context, client *cpapi.Client, resume bool) (next time.Duration, ok bool) {
	ak, o, err := u.prepareKeys(ctx, client)
	if o == outcomeOK && ak == nil {
		// The keyring cannot open (logged): try again later.
		return u.cfg.BackoffMax, true
	}
	wait := time.Duration(0)
	if o == outcomeOK {
		u.mu.Lock()
		off := u.watchOff
		u.mu.Unlock()
		state, _ := u.br.snapshot()
		watching := state == BreakerClosed && !off
		if watching && !resume {
			wait = u.cfg.KeyWatchWait
		}
		var rejected int
		u.mu.Lock()
		before := u.keyCursor
		u.mu.Unlock()
		start := time.Now() // system clock: how long the server held the request
		o, err, _, rejected = u.fetchKeys(ctx, client, ak, wait)
		u.mu.Lock()
		unchanged := u.keyCursor == before
		u.mu.Unlock()
		switch {
		case o == outcomeOK && rejected > 0:
			// Asking again at once would get the same messages.
			return u.cfg.BackoffMax, true
		case o == outcomeOK && wait == 0 && watching && rejected == 0:
			return 0, true // resumed: hold the next request
		case o == outcomeOK && wait == 0:
			return u.cfg.BackoffMax, true
		case o == outcomeOK && unchanged && time.Since(start) < wait/2:
			// Answered empty long before the wait ended (a server
			// shutting down, or a proxy cutting the request): pause.
			return u.cfg.BackoffMin, true
		case o == outcomeOK:
			return 0, true
		case o == outcomeRejected && wait > 0 && rejectsWait(err):
			u.mu.Lock()
			u.watchOff = true
			u.mu.Unlock()
			u.succeeded("keys", true)
			u.log.Warn("the control plane does not hold key requests (GET /v1/agent/keys?wait=); keys are fetched every heartbeat instead", "err", err)
			return 0, true
		case o == outcomeAborted:
			return u.cfg.BackoffMax, true
		}
	}
	u.keysFailed(o, err)
	switch o {
	case outcomeCanceled:
		return 0, false
	case outcomeBlocked:
		return 0, true
	}
	return u.cfg.BackoffMax, true
}

// rejectsWait reports a 400 refusing the "wait" parameter: a control plane
// older than the key watch.
func rejectsWait(err error) bool {
	var ae *cpapi.APIError
	return errors.As(err, &ae) && ae.Status == http.StatusBadRequest && strings.Contains(ae.Message, `"wait"`)
}

// prepareKeys pins the control plane's signing key if needed and opens the
// keyring. It returns outcomeOK with a nil keyring when the keyring cannot
// be opened (logged once, recorded in Status).
func (u *Uplink) prepareKeys(ctx context.Context, client *cpapi.Client) (*dkms.AgentKeys, outcome, error) {
	u.mu.Lock()
	id := u.id
	pinned := len(id.KeysVerifyingKey) > 0
	u.mu.Unlock()
	if !pinned {
		if o, err := u.pinVerifyingKey(ctx, client); o != outcomeOK {
			return nil, o, err
		}
	}
	ak, err := u.openKeyring(ctx, id)
	if err != nil {
		u.setError("keys", err)
		u.mu.Lock()
		first := !u.keyringFailed
		u.keyringFailed = true
		u.mu.Unlock()
		if first {
			u.log.Error("cannot open the agent keyring; retried every heartbeat interval, uploads that must be sealed wait", "err", err)
		}
		return nil, outcomeOK, nil
	}
	return ak, outcomeOK, nil
}

// fetchKeys fetches the key messages that are new since the last accepted
// cursor, held by the control plane up to wait when there are none, and
// accepts them. A message that is refused leaves the cursor where it was,
// so the next fetch asks again. KeysChanged runs after a fetch that
// accepted at least one message.
func (u *Uplink) fetchKeys(ctx context.Context, client *cpapi.Client, ak *dkms.AgentKeys, wait time.Duration) (o outcome, err error, accepted, rejected int) {
	u.mu.Lock()
	cursor := u.keyCursor
	u.mu.Unlock()
	var resp cpapi.AgentKeysResponse
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	u.mu.Lock()
	u.watchAbort, u.watchDone = cancel, done
	u.mu.Unlock()
	o, err = u.doFor(wctx, "keys", wait+u.cfg.RequestTimeout, func(rctx context.Context) (string, error) {
		var err error
		resp, err = client.WatchKeyMessages(rctx, cursor, wait)
		return "", err
	})
	u.mu.Lock()
	u.watchAbort, u.watchDone = nil, nil
	u.mu.Unlock()
	if o == outcomeCanceled && ctx.Err() == nil {
		return outcomeAborted, err, 0, 0
	}
	if o != outcomeOK {
		return o, err, 0, 0
	}
	if len(resp.Revocations) > 0 && u.deps.Revocations != nil {
		u.deps.Revocations(ctx, resp.Revocations)
	}
	var firstErr error
	for _, raw := range resp.Messages {
		if _, err := ak.Accept(ctx, raw); err != nil {
			rejected++
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		accepted++
	}
	u.mu.Lock()
	u.lastKeyFetch = u.clock.Now()
	u.keysSealed = false
	u.keyConflict = false
	if rejected == 0 {
		u.keyCursor = resp.Cursor
	}
	u.mu.Unlock()
	if rejected > 0 {
		err := fmt.Errorf("uplink: %d of %d key messages refused (fetched again after a back-off): %w", rejected, len(resp.Messages), firstErr)
		u.setError("keys", err)
		u.log.Warn("key messages refused; the key cursor stays, so they are fetched again", "refused", rejected, "accepted", accepted, "err", firstErr)
	} else {
		u.succeeded("keys", true)
	}
	if accepted > 0 {
		u.log.Debug("key messages accepted", "accepted", accepted)
		if u.deps.KeysChanged != nil {
			u.deps.KeysChanged()
		}
		u.wakeUploader()
	}
	return outcomeOK, nil, accepted, rejected
}

// outcomeAborted: abortWatch ended the key request.
const outcomeAborted outcome = -2

// abortWatch cancels the key, model and device requests in flight, if
// any, and waits until they have returned. A heartbeat that failed at the network level suggests
// the connection is gone: a request held on it could sit there until
// KeyWatchWait + RequestTimeout. The key watch then waits for the next
// acknowledged heartbeat (or backoff_max) before it asks again, so an
// outage is probed by the heartbeats alone.
func (u *Uplink) abortWatch() {
	u.mu.Lock()
	held := []struct {
		abort func()
		done  chan struct{}
	}{{u.watchAbort, u.watchDone}, {u.modelAbort, u.modelDone}, {u.deviceAbort, u.deviceDone}}
	u.mu.Unlock()
	for _, h := range held {
		if h.abort != nil {
			h.abort()
			<-h.done
		}
	}
}

// heartbeatKeys runs after each acknowledged heartbeat: once the key
// watch has fetched the agent's own keys, it fetches a page of the key
// relay. The agent's own keys come from the key watch loop only.
func (u *Uplink) heartbeatKeys(ctx context.Context, client *cpapi.Client) {
	u.mu.Lock()
	close(u.hbAcked)
	u.hbAcked = make(chan struct{})
	u.mu.Unlock()
	u.mu.Lock()
	fetched := u.keys != nil && u.keyCursor != ""
	u.mu.Unlock()
	if fetched {
		u.relayRound(ctx, client)
	}
}

// relayRound fetches one page of the key relay (messages for other agents
// that are behind) and hands it to Deps.KeyRelay. Pages are walked one
// per round; after the last, the next round starts over. Failures are
// logged at debug level only: the relay helps others, and the next round
// asks again.
func (u *Uplink) relayRound(ctx context.Context, client *cpapi.Client) {
	if u.deps.KeyRelay == nil {
		return
	}
	u.mu.Lock()
	after := u.relayCursor
	u.mu.Unlock()
	var resp cpapi.AgentKeysRelayResponse
	o, err := u.do(ctx, "keys", func(rctx context.Context) (string, error) {
		var err error
		resp, err = client.KeyRelay(rctx, after)
		return "", err
	})
	if o != outcomeOK {
		u.mu.Lock()
		u.relayCursor = ""
		u.mu.Unlock()
		u.log.Debug("key relay fetch failed; asked again next round", "err", err)
		return
	}
	u.mu.Lock()
	u.relayCursor = resp.Cursor
	u.mu.Unlock()
	if len(resp.Entries) > 0 {
		u.deps.KeyRelay(ctx, resp.Entries)
	}
}

// keysFailed records a key fetch that did not succeed.
func (u *Uplink) keysFailed(o outcome, err error) {
	switch o {
	case outcomeCanceled, outcomeBlocked:
	case outcomeSealed:
		u.mu.Lock()
		u.keysSealed = true
		u.mu.Unlock()
		u.log.Debug("control plane key service sealed; keys are fetched again after a back-off", "err", err)
	case outcomeUnauthorized:
		u.refused("keys", err)
	case outcomeRejected:
		u.setError("keys", err)
		var ae *cpapi.APIError
		if errors.As(err, &ae) && ae.Status == http.StatusConflict {
			u.mu.Lock()
			first := !u.keyConflict
			u.keyConflict = true
			u.mu.Unlock()
			if first {
				u.log.Error("the control plane holds no X-Wing key for this agent (it enrolled without one), so it sends it no keys "+
					"and sealed uploads wait: enroll the agent again, or set control_plane.seal_telemetry: false", "err", err)
			}
			return
		}
		u.log.Error("control plane refused the key fetch", "err", err)
	default:
		u.setError("keys", err)
		u.log.Debug("key fetch failed; retried after a back-off", "err", err)
	}
}

func (u *Uplink) wakeUploader() {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// sealer returns the keyring to seal uploads with, or why uploads wait.
func (u *Uplink) sealer() (*dkms.AgentKeys, error) {
	u.mu.Lock()
	ak, sealed, conflict := u.keys, u.keysSealed, u.keyConflict
	u.mu.Unlock()
	var why string
	switch {
	case ak == nil:
		why = "the agent keyring is not open yet (it opens once the agent is enrolled and the control plane's signing key is pinned)"
	default:
		if _, err := ak.PrimaryDataKey(cpapi.TelemetryKeyName); err == nil {
			return ak, nil
		}
		switch {
		case conflict:
			why = "the control plane holds no X-Wing key for this agent (enrolled without one): enroll it again, or set control_plane.seal_telemetry: false"
		case sealed:
			why = "the control plane's key service is sealed"
		default:
			why = "the control plane has not sent it yet"
		}
	}
	return nil, fmt.Errorf("%w: %s", ErrNoTelemetryKey, why)
}

// setWaiting records why uploads wait ("" when they flow), logging the
// change.
func (u *Uplink) setWaiting(why string) {
	u.mu.Lock()
	prev := u.waiting
	u.waiting = why
	u.mu.Unlock()
	switch {
	case why != "" && prev == "":
		u.log.Info("uploads wait in the outbox", "reason", why)
	case why == "" && prev != "":
		u.log.Info("uploads resume", "waited_for", prev)
	}
}

// keyVersions maps each key the agent holds to its primary version.
func keyVersions(ak *dkms.AgentKeys) map[string]uint32 {
	if ak == nil {
		return nil
	}
	out := map[string]uint32{}
	for _, k := range ak.Keys() {
		out[k.Name] = k.Primary
	}
	return out
}

// VerifyingKey is the control plane's pinned ML-DSA-65 key (the one that
// signs key messages and model files); nil before the agent is enrolled
// and has pinned it.
func (u *Uplink) VerifyingKey() *pqcrypto.VerifyingKey {
	u.mu.Lock()
	var rec identityRecord
	if u.id != nil {
		rec = u.id.identityRecord
	}
	u.mu.Unlock()
	vk, err := rec.verifyingKey()
	if err != nil {
		return nil
	}
	return vk
}
