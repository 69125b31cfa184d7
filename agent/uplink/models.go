package uplink

import (
	"context"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// The model watch: the agent learns from the control plane which model
// versions it should serve (GET /v1/agent/models, a long poll as the key
// watch's), fetches each one its runtime does not serve yet (sealed to the
// agent's X-Wing key), opens it, checks the control plane's signature and
// the digest the assignment names, and hands the signed file to
// Deps.Models. A model from the control plane that the assignments no
// longer name (the agent was relabelled, the deployment was undeployed)
// is removed (Deps.Models.Remove); models the runtime did not receive
// from the control plane are left alone.

// modelWatchLoop runs the model watch until ctx ends. It waits for the
// keyring (the key watch opens it), since model files are sealed to the
// agent's key.
func (u *Uplink) modelWatchLoop(ctx context.Context) {
	if !u.waitEnrolled(ctx) {
		return
	}
	client := u.agentClient()
	for {
		if !u.waitReady(ctx) {
			return
		}
		next, ok := u.modelRound(ctx, client)
		if !ok {
			return
		}
		u.mu.Lock()
		acked := u.hbAcked
		u.mu.Unlock()
		if next > 0 && !u.sleep(ctx, next, acked) {
			return
		}
	}
}

// modelRound asks for the assignments once (held up to KeyWatchWait when
// the previous round installed everything and the breaker is closed),
// installs what is missing, and returns how long to pause before the next
// round; ok is false when the uplink stops.
func (u *Uplink) modelRound(ctx context.Context, client *cpapi.Client) (next time.Duration, ok bool) {
	ak := u.Keys()
	if ak == nil {
		return u.cfg.BackoffMin, true
	}
	u.mu.Lock()
	cursor := u.modelCursor
	u.mu.Unlock()
	wait := time.Duration(0)
	if state, _ := u.br.snapshot(); state == BreakerClosed && cursor != "" {
		wait = u.cfg.KeyWatchWait
	}
	var resp cpapi.AgentModelsResponse
	start := time.Now() // system clock: how long the server held the request
	// abortWatch (a heartbeat failed at the network level) cancels the
	// held request, as the key watch's.
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	u.mu.Lock()
	u.modelAbort, u.modelDone = cancel, done
	u.mu.Unlock()
	o, err := u.doFor(wctx, "models", wait+u.cfg.RequestTimeout, func(rctx context.Context) (string, error) {
		var err error
		resp, err = client.WatchModels(rctx, cursor, wait)
		return "", err
	})
	u.mu.Lock()
	u.modelAbort, u.modelDone = nil, nil
	u.mu.Unlock()
	cancel()
	close(done)
	switch o {
	case outcomeOK:
	case outcomeCanceled:
		if ctx.Err() != nil {
			return 0, false
		}
		// Aborted: ask again after the next acknowledged heartbeat.
		return u.cfg.BackoffMax, true
	case outcomeBlocked:
		return 0, true
	case outcomeUnauthorized:
		u.refused("models", err)
		return u.cfg.BackoffMax, true
	default:
		u.setError("models", err)
		u.log.Debug("model assignments fetch failed; retried after a back-off", "err", err)
		return u.cfg.BackoffMax, true
	}
	if resp.Cursor == cursor {
		if wait > 0 && time.Since(start) < wait/2 {
			// Answered long before the wait ended (a server shutting
			// down, a proxy cutting the request): pause.
			return u.cfg.BackoffMin, true
		}
		return 0, true
	}
	if err := u.installAssignments(ctx, client, ak, resp.Assignments); err != nil {
		u.setError("models", err)
		u.log.Warn("model install failed; the models serving now keep serving, and the install is tried again after a back-off", "err", err)
		return u.cfg.BackoffMax, true
	}
	u.succeeded("models", true)
	u.mu.Lock()
	u.modelCursor = resp.Cursor
	u.mu.Unlock()
	return 0, true
}

// installAssignments removes the models from the control plane that the
// assignments no longer name, then fetches and installs every assignment
// the runtime does not serve. It stops at the first failure. Models that
// did not come from the control plane (InstalledModel.FromControlPlane)
// are left alone.
func (u *Uplink) installAssignments(ctx context.Context, client *cpapi.Client, ak *dkms.AgentKeys, as []cpapi.ModelAssignment) error {
	assigned := map[string]bool{}
	for _, a := range as {
		assigned[a.Name] = true
	}
	type served struct{ name, version, digest string }
	serving := map[served]bool{}
	for _, m := range u.deps.Models.Installed() {
		if m.FromControlPlane && !assigned[m.Name] {
			if err := u.deps.Models.Remove(ctx, m.Name); err != nil {
				return fmt.Errorf("uplink: removing model %s, no longer assigned: %w", m.Name, err)
			}
			u.log.Info("model removed: no longer assigned to this agent", "model", m.Name, "version", m.Version)
			continue
		}
		serving[served{m.Name, m.Version, m.Digest}] = true
	}
	var missing []cpapi.ModelAssignment
	for _, a := range as {
		if !serving[served{a.Name, a.Version, a.Digest}] {
			missing = append(missing, a)
		}
	}
	if len(missing) > 0 && u.deps.DeferModelUpdate != nil {
		u.log.Info("model update waits for its start (green.update_window)", "models", len(missing))
		done, err := u.deps.DeferModelUpdate(ctx)
		if err != nil {
			return fmt.Errorf("uplink: deferring the model update: %w", err)
		}
		defer done()
	}
	for _, a := range missing {
		var env []byte
		o, err := u.do(ctx, "models", func(rctx context.Context) (string, error) {
			var err error
			env, err = client.FetchAssignedModel(rctx, a.Name, a.Version)
			return "", err
		})
		if o != outcomeOK {
			return fmt.Errorf("uplink: fetching model %s version %s: %w", a.Name, a.Version, err)
		}
		file, err := ak.OpenSealed(env, cpapi.ModelAAD(ak.ID(), a.Name, a.Version))
		if err != nil {
			return fmt.Errorf("uplink: model %s version %s: %w", a.Name, a.Version, err)
		}
		f, err := fedlearn.Verify(file, ak.ControlPlaneKey())
		if err != nil {
			return fmt.Errorf("uplink: model %s version %s: %w", a.Name, a.Version, err)
		}
		if f.Name != a.Name || f.Version != a.Version || f.DigestHex() != a.Digest {
			return fmt.Errorf("uplink: model file is %s version %s digest %s, the assignment names %s version %s digest %s",
				f.Name, f.Version, f.DigestHex(), a.Name, a.Version, a.Digest)
		}
		if err := u.deps.Models.Install(ctx, file); err != nil {
			return fmt.Errorf("uplink: installing model %s version %s: %w", a.Name, a.Version, err)
		}
		u.log.Info("model installed", "model", a.Name, "version", a.Version, "digest", a.Digest, "selector", a.Selector)
	}
	return nil
}
