package uplink

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
)

// Committed implements ingest.Sink: a commit that wrote an outbox batch
// wakes the uploader. It never blocks.
func (u *Uplink) Committed(c ingest.Commit) {
	if c.Seq == 0 {
		return
	}
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// roundResult is how an upload round ended.
type roundResult struct {
	outcome outcome // worst outcome: OK, or what stopped the round
	err     error
	full    bool // claimed UploadBatches and delivered them all: more may be waiting
}

// uploadLoop delivers the outbox: a round claims up to UploadBatches
// batches and sends them one by one; rounds follow each other while the
// outbox is full, then every UploadInterval or commit, and with back-off
// after failures.
func (u *Uplink) uploadLoop(ctx context.Context) {
	if !u.waitEnrolled(ctx) {
		return
	}
	failures := 0
	var next time.Duration
	var wake <-chan struct{}
	var last time.Time // start of the last round
	var drained func() // with DeferUpload: the granted upload's end, until the outbox is empty
	defer func() {
		if drained != nil {
			drained()
		}
	}()
	for {
		if next > 0 {
			if !u.sleep(ctx, next, wake) {
				return
			}
			// Woken by a commit: the commits of the linger go together.
			if wait := u.cfg.UploadLinger - u.clock.Now().Sub(last); wake != nil && wait > 0 && !u.sleep(ctx, wait, nil) {
				return
			}
		}
		if !u.waitReady(ctx) {
			return
		}
		if u.deps.DeferUpload != nil && drained == nil {
			pending, ok := u.outboxPending(ctx)
			if !ok {
				return
			}
			if !pending {
				next, wake = u.cfg.UploadInterval, u.wake
				continue
			}
			done, err := u.deps.DeferUpload(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				u.log.Warn("upload deferral failed; uploading now", "err", err)
				done = func() {}
			}
			drained = done
			if !u.waitReady(ctx) {
				return
			}
		}
		last = u.clock.Now()
		res := u.uploadRound(ctx)
		if drained != nil && res.outcome == outcomeOK && !res.full {
			// The outbox is empty: the bulk upload is over; the next
			// readings wait for the next start.
			drained()
			drained = nil
		}
		switch res.outcome {
		case outcomeCanceled:
			return
		case outcomeBlocked:
			next, wake = 0, nil
		case outcomeOK:
			failures = 0
			u.setWaiting("")
			next, wake = u.cfg.UploadInterval, u.wake
			if res.full {
				next = 0
			}
		case outcomeWaiting:
			// No telemetry key: a key fetch that brings one wakes the
			// loop, as commits do.
			failures = 0
			next, wake = u.cfg.UploadInterval, u.wake
		case outcomeSealed:
			// The control plane is up but cannot open envelopes: back off
			// without counting against the breaker.
			failures++
			next, wake = u.backoff(failures), nil
			u.log.Debug("control plane key service sealed; uploads wait", "retry_in", next)
		case outcomeUnauthorized:
			u.refused("upload", res.err)
			next, wake = u.cfg.BackoffMax, nil
		default:
			failures++
			next, wake = u.backoff(failures), u.br.closedChan()
			switch {
			case res.outcome == outcomeRejected && batchConflict(res.err):
				// Logged with its identity by conflict.
			case res.outcome == outcomeRejected:
				u.log.Error("control plane refused an upload; the batch stays in the outbox", "err", res.err, "retry_in", next)
			case failures == 1:
				u.log.Warn("upload failed; retrying with back-off", "err", res.err, "retry_in", next)
			default:
				u.log.Debug("upload failed", "attempt", failures, "err", res.err, "retry_in", next)
			}
		}
	}
}

// outboxPending reports whether a batch waits in the outbox (claimed and
// released at once); ok is false when ctx ended.
func (u *Uplink) outboxPending(ctx context.Context) (pending, ok bool) {
	batches, err := u.deps.Outbox.ClaimOutbox(ctx, 1, u.lease)
	if err != nil {
		if ctx.Err() != nil {
			return false, false
		}
		u.setError("upload", fmt.Errorf("uplink: claim outbox: %w", err))
		return true, true // let the round find and report it
	}
	if len(batches) == 0 {
		return false, true
	}
	u.release(ctx, batches[0].Seq)
	return true, true
}

// detached returns a context for outbox bookkeeping that outlives a
// stopping loop, so deliveries are recorded and leases released.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}

// uploadRound claims and sends one round of outbox batches. A batch the
// control plane refuses (4xx) is released and the round goes on; any
// other failure releases the rest of the round and ends it.
func (u *Uplink) uploadRound(ctx context.Context) roundResult {
	var ak *dkms.AgentKeys
	if u.cfg.Seals() {
		var err error
		if ak, err = u.sealer(); err != nil {
			u.setWaiting(strings.TrimPrefix(err.Error(), ErrNoTelemetryKey.Error()+": "))
			return roundResult{outcome: outcomeWaiting, err: err}
		}
	}
	// One batch claimed at a time: only the batch being sent is held in
	// memory (a batch decodes to up to 1,000 readings by default).
	res := roundResult{outcome: outcomeOK}
	client := u.agentClient()
	for range u.cfg.UploadBatches {
		batches, err := u.deps.Outbox.ClaimOutbox(ctx, 1, u.lease)
		if err != nil {
			if ctx.Err() != nil {
				return roundResult{outcome: outcomeCanceled}
			}
			err = fmt.Errorf("uplink: claim outbox: %w", err)
			u.setError("upload", err)
			return roundResult{outcome: outcomeFailed, err: err}
		}
		if len(batches) == 0 {
			return res
		}
		b := batches[0]
		o, err := u.sendBatch(ctx, client, ak, b)
		switch o {
		case outcomeOK:
			continue
		case outcomeRejected:
			// Kept leased: offered again when the lease ends, while the
			// other batches go on.
			u.setError("upload", err)
			res.outcome, res.err = outcomeRejected, err
			continue
		}
		// Failed, refused, sealed, blocked or stopping: give it back.
		switch o {
		case outcomeSealed:
			u.setWaiting("the control plane's key service is sealed")
		case outcomeCanceled, outcomeBlocked:
		default:
			u.setError("upload", err)
		}
		u.release(ctx, b.Seq)
		return roundResult{outcome: o, err: err}
	}
	// Every claim found a batch: more may be waiting.
	res.full = res.outcome == outcomeOK
	return res
}

func (u *Uplink) release(ctx context.Context, seqs ...int64) {
	dctx, cancel := detached(ctx)
	defer cancel()
	if err := u.deps.Outbox.ReleaseOutbox(dctx, seqs...); err != nil {
		u.log.Warn("could not release outbox batches; they are offered again when their lease ends",
			"batches", len(seqs), "lease", u.lease, "err", err)
	}
}

// sendBatch uploads one outbox batch (in parts when it is large), sealed
// with ak unless it is nil, and acknowledges it in the outbox.
func (u *Uplink) sendBatch(ctx context.Context, client *cpapi.Client, ak *dkms.AgentKeys, b ingest.OutboxBatch) (outcome, error) {
	conv := convertBatch(b)
	accepted, dup := 0, false
	agentID := ""
	if ak != nil {
		agentID = ak.ID()
	}
	for _, part := range conv.parts {
		data, err := u.enc.Encode(part)
		if err != nil {
			return outcomeRejected, fmt.Errorf("uplink: outbox batch %d: %w", b.Seq, err)
		}
		if ak != nil {
			// Sealed anew on every attempt, under the primary version held
			// now; the control plane recognizes a retry by epoch and
			// batch_seq.
			env, err := ak.Encrypt(ctx, cpapi.TelemetryKeyName, data, cpapi.TelemetryAAD(agentID, part.Epoch, part.BatchSeq))
			clear(data)
			if err != nil {
				return outcomeWaiting, fmt.Errorf("uplink: sealing outbox batch %d: %w", b.Seq, err)
			}
			data = env
		}
		var res cpapi.IngestResult
		o, err := u.do(ctx, "upload", func(rctx context.Context) (string, error) {
			var err error
			if ak != nil {
				res, err = client.UploadTelemetrySealed(rctx, agentID, part.Epoch, part.BatchSeq, data)
			} else {
				res, err = client.UploadTelemetryEncoded(rctx, data)
			}
			if err == nil && res.Duplicate {
				return "duplicate", nil
			}
			return "", err
		})
		if o != outcomeOK {
			if err != nil {
				err = fmt.Errorf("uplink: outbox batch %d (epoch %s batch_seq %d): %w", b.Seq, part.Epoch, part.BatchSeq, err)
			}
			if batchConflict(err) {
				u.conflict(b, part, err)
			}
			return o, err
		}
		accepted += res.Accepted
		dup = dup || res.Duplicate
	}
	dctx, cancel := detached(ctx)
	_, err := u.deps.Outbox.AckOutbox(dctx, b.Seq)
	cancel()
	if err != nil {
		// Delivered but still in the outbox: it is sent again after its
		// lease and the control plane recognizes it.
		u.log.Warn("could not acknowledge a delivered outbox batch", "seq", b.Seq, "err", err)
	}
	skipped := 0
	for reason, n := range conv.skipped {
		u.m.skipped.WithLabelValues(reason).Add(float64(n))
		skipped += n
	}
	u.m.batches.Inc()
	u.m.readings.Add(float64(accepted))
	u.mu.Lock()
	u.upBatches++
	u.upReadings += int64(accepted)
	if dup {
		u.dupBatches++
	}
	u.skipped += int64(skipped)
	u.lastUpload = u.clock.Now()
	u.mu.Unlock()
	if len(conv.parts) > 0 {
		u.succeeded("upload", true)
	}
	return outcomeOK, nil
}

// batchConflict reports the control plane's answer to a batch whose
// identity it stored before with other readings (409,
// cpapi.ErrBatchConflict).
func batchConflict(err error) bool {
	var ae *cpapi.APIError
	return errors.As(err, &ae) && ae.Status == http.StatusConflict && strings.HasPrefix(ae.Message, cpapi.ErrBatchConflict.Error())
}

// conflict records a batch refused as a conflict: it stays in the
// outbox, leased (offered again when the lease ends) and never
// acknowledged, so nothing it holds is lost; the refusal is logged with
// its reason and counted.
func (u *Uplink) conflict(b ingest.OutboxBatch, part cpapi.TelemetryBatch, err error) {
	u.m.conflicts.Inc()
	u.mu.Lock()
	u.conflicts++
	u.mu.Unlock()
	u.log.Error("control plane refused an outbox batch: it holds other readings under the same identity; the batch stays in the outbox",
		"seq", b.Seq, "epoch", part.Epoch, "batch_seq", part.BatchSeq, "readings", len(part.Readings), "err", err)
}
