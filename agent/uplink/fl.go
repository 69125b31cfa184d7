package uplink

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/privacy"
)

// Federated learning: the agent long-polls its round task (GET
// /v1/agent/fl/task, as the key watch), trains from the task's global
// weights on its own stored readings (Deps.FL), and posts the update
// Δ = w_local − w_global as float32, sealed under the telemetry data key
// with cpapi.FLUpdateAAD (bound to the agent, job, round and attempt) and
// signed over the sealed bytes with the key of its client certificate,
// the identity the control plane knows it by. An agent that is offline or
// behind NAT while a round runs simply asks again later and joins the
// round open then. A statistics task (round 0) is answered, by the same
// path, with the examples' per-feature count, sum and sum of squares; a
// task with local differential privacy has its delta clipped and noised
// here, before it is sealed, with noise the control plane cannot predict
// (seeded from the operating system, not from the task).

// FLTrainer trains a round task on the agent's data.
type FLTrainer interface {
	// Train runs a local training job from the task's global weights and
	// returns Δ = w_local − w_global (fedlearn.Weights.Flatten order) and
	// the number of training examples.
	Train(ctx context.Context, task cpapi.FLTask) (delta []float32, examples int, err error)
	// Stats returns the per-feature count, sum and sum of squares of the
	// raw features of the examples Train would use, and their number.
	Stats(ctx context.Context, task cpapi.FLTask) (stats fedlearn.FeatureStats, examples int, err error)
}

// flDoneKeep bounds the remembered finished tasks.
const flDoneKeep = 64

func (u *Uplink) flLoop(ctx context.Context) {
	if !u.waitEnrolled(ctx) {
		return
	}
	client := u.agentClient()
	cursor, asked := "", false
	var done []string // keys of tasks answered, newest last
	var pending *flPending
	for {
		if !u.waitReady(ctx) {
			return
		}
		if pending != nil {
			if !u.flSend(ctx, client, pending) {
				if !u.sleep(ctx, u.cfg.BackoffMin, nil) {
					return
				}
				continue
			}
			pending = nil
		}
		wait := time.Duration(0)
		if state, _ := u.br.snapshot(); state == BreakerClosed && asked {
			wait = u.cfg.KeyWatchWait
		}
		var resp cpapi.FLTaskResponse
		start := time.Now()
		o, err := u.doFor(ctx, "fl", wait+u.cfg.RequestTimeout, func(rctx context.Context) (string, error) {
			var err error
			resp, err = client.WatchFLTask(rctx, cursor, wait)
			return "", err
		})
		next := time.Duration(0)
		switch o {
		case outcomeOK:
			if resp.Cursor == cursor && wait > 0 && time.Since(start) < wait/2 {
				next = u.cfg.BackoffMin
			}
			cursor, asked = resp.Cursor, true
			if t := resp.Task; t != nil && !slices.Contains(done, t.Step()) {
				pending = u.flTask(ctx, client, *t)
				done = append(done, t.Step())
				if len(done) > flDoneKeep {
					done = done[1:]
				}
				// Ask at once: the task is answered, the cursor changes.
				cursor = ""
			}
		case outcomeCanceled:
			if ctx.Err() != nil {
				return
			}
			next = u.cfg.BackoffMin
		case outcomeBlocked:
		case outcomeUnauthorized:
			u.refused("fl", err)
			next = u.cfg.BackoffMax
		default:
			u.setError("fl", err)
			next = u.cfg.BackoffMax
		}
		if next > 0 && !u.sleep(ctx, next, nil) {
			return
		}
	}
}

// flPending is a sealed update not delivered yet (the control plane was
// unreachable): it is sent again before the next ask, until the task's
// deadline.
type flPending struct {
	task     cpapi.FLTask
	env, sig []byte
}

// flTask trains one task and uploads its update; failures are logged (the
// round counts the agent as failed and goes on). It returns the update
// when it could not be delivered for want of a control plane.
func (u *Uplink) flTask(ctx context.Context, client *cpapi.Client, t cpapi.FLTask) *flPending {
	log := u.log.With("fl_job", t.Job, "round", t.Round, "attempt", t.Attempt)
	if err := t.Validate(); err != nil {
		log.Warn("fl round task refused; this agent sits the round out", "err", err)
		return nil
	}
	if t.SecAgg != nil {
		return u.flSecAgg(ctx, client, t)
	}
	tctx := ctx
	if !t.Deadline.IsZero() {
		var cancel context.CancelFunc
		tctx, cancel = context.WithDeadline(ctx, t.Deadline)
		defer cancel()
	}
	upd := cpapi.FLUpdate{Job: t.Job, Round: t.Round, Attempt: t.Attempt}
	if t.Stats() {
		log.Info("fl statistics task received; summarising the examples")
		st, examples, err := u.deps.FL.Stats(tctx, t)
		if err != nil {
			log.Warn("fl feature statistics failed; this agent sits the round out", "err", err)
			return nil
		}
		upd.Stats, upd.Examples = &st, examples
	} else {
		log.Info("fl round task received; training")
		delta, examples, ok := u.flTrain(tctx, t, log)
		if !ok {
			return nil
		}
		upd.Delta, upd.Examples = delta, examples
	}
	return u.flSeal(ctx, client, t, upd, log)
}

// flTrain trains a task and privatises the delta under local DP; false
// means the agent sits the round out (logged).
func (u *Uplink) flTrain(ctx context.Context, t cpapi.FLTask, log *slog.Logger) ([]float32, int, bool) {
	delta, examples, err := u.deps.FL.Train(ctx, t)
	if err != nil {
		log.Warn("fl local training failed; this agent sits the round out", "err", err)
		return nil, 0, false
	}
	if d := t.DP; d != nil {
		if delta, err = privatize(delta, d); err != nil {
			log.Warn("fl update not privatised; this agent sits the round out", "err", err)
			return nil, 0, false
		}
	}
	return delta, examples, true
}

// flSeal seals, signs and sends an update; it returns the update when it
// could not be delivered for want of a control plane.
func (u *Uplink) flSeal(ctx context.Context, client *cpapi.Client, t cpapi.FLTask, upd cpapi.FLUpdate, log *slog.Logger) *flPending {
	env, sig, err := u.sealFLUpdate(ctx, upd)
	if err != nil {
		log.Warn("fl update not sealed", "err", err)
		return nil
	}
	p := &flPending{task: t, env: env, sig: sig}
	if u.flSend(ctx, client, p) {
		return nil
	}
	return p
}

// flSend uploads a sealed update; it reports whether the update is
// settled (accepted, refused, or past its deadline).
func (u *Uplink) flSend(ctx context.Context, client *cpapi.Client, p *flPending) bool {
	t := p.task
	log := u.log.With("fl_job", t.Job, "round", t.Round, "attempt", t.Attempt)
	o, err := u.do(ctx, "fl", func(rctx context.Context) (string, error) {
		_, err := client.UploadFLUpdate(rctx, t, p.env, p.sig)
		return "", err
	})
	switch {
	case o == outcomeOK:
		log.Info("fl update accepted", "bytes", len(p.env))
		return true
	case o == outcomeRejected || o == outcomeUnauthorized:
		log.Warn("fl update refused", "err", err)
		return true
	case !t.Deadline.IsZero() && u.clock.Now().After(t.Deadline):
		log.Warn("fl update not delivered before the round's deadline", "err", err)
		return true
	}
	log.Info("fl update not delivered yet; sent again", "err", err)
	return false
}

// privatize is local differential privacy (fedlearn/privacy.Local): delta
// clipped to L2 norm d.Clip, then Gaussian noise of σ = z·C on every value,
// drawn from a source seeded by the operating system.
func privatize(delta []float32, d *cpapi.FLTaskDP) ([]float32, error) {
	v := make([]float64, len(delta))
	for i, x := range delta {
		v[i] = float64(x)
	}
	l := privacy.Local{Clip: d.Clip, NoiseMultiplier: d.NoiseMultiplier}
	out, _, err := l.Privatize(v)
	if err != nil {
		return nil, fmt.Errorf("uplink: %w", err)
	}
	return out, nil
}

// sealFLUpdate encodes, seals and signs an update.
func (u *Uplink) sealFLUpdate(ctx context.Context, upd cpapi.FLUpdate) (env, sig []byte, err error) {
	ak := u.Keys()
	if ak == nil {
		return nil, nil, errors.New("uplink: no keyring to seal the update with")
	}
	u.mu.Lock()
	id := u.id
	u.mu.Unlock()
	if id == nil {
		return nil, nil, errors.New("uplink: not enrolled")
	}
	pt := cpapi.EncodeFLUpdate(upd)
	env, err = ak.Encrypt(ctx, cpapi.TelemetryKeyName, pt, cpapi.FLUpdateAAD(ak.ID(), upd.Job, upd.Round, upd.Attempt))
	clear(pt)
	if err != nil {
		return nil, nil, fmt.Errorf("uplink: sealing the fl update: %w", err)
	}
	signer, ok := id.cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("uplink: the identity key %T cannot sign", id.cert.PrivateKey)
	}
	d := sha256.Sum256(env)
	var opts crypto.SignerOpts = crypto.SHA256
	if _, ok := signer.Public().(ed25519.PublicKey); ok {
		opts = crypto.Hash(0)
	}
	if sig, err = signer.Sign(rand.Reader, d[:], opts); err != nil {
		return nil, nil, fmt.Errorf("uplink: signing the fl update: %w", err)
	}
	return env, sig, nil
}
