package uplink

import (
	"context"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// The device watch: the agent follows the control plane's changes of
// device identities (GET /v1/agent/devices, a long poll as the key
// watch's) and hands each batch to Deps.Devices, which writes them into
// replicated state. The cursor (the sequence number of the last change
// applied) lives in memory: after a restart the agent asks from 0 again,
// and applying a change already in replicated state writes nothing.

// DeviceSink applies the control plane's device identity changes.
type DeviceSink interface {
	// ApplyControlPlaneDevices applies changes in order. An error leaves
	// the cursor where it was: the same changes come again.
	ApplyControlPlaneDevices(ctx context.Context, changes []cpapi.DeviceIdentity) error
}

// deviceWatchLoop runs the device watch until ctx ends.
func (u *Uplink) deviceWatchLoop(ctx context.Context) {
	if !u.waitEnrolled(ctx) {
		return
	}
	client := u.agentClient()
	cursor, fetched := int64(0), false
	for {
		if !u.waitReady(ctx) {
			return
		}
		wait := time.Duration(0)
		if state, _ := u.br.snapshot(); state == BreakerClosed && fetched {
			wait = u.cfg.KeyWatchWait
		}
		var resp cpapi.AgentDevicesResponse
		start := time.Now() // system clock: how long the server held the request
		wctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		u.mu.Lock()
		u.deviceAbort, u.deviceDone = cancel, done
		u.mu.Unlock()
		o, err := u.doFor(wctx, "devices", wait+u.cfg.RequestTimeout, func(rctx context.Context) (string, error) {
			var err error
			resp, err = client.WatchDevices(rctx, cursor, wait)
			return "", err
		})
		u.mu.Lock()
		u.deviceAbort, u.deviceDone = nil, nil
		acked := u.hbAcked
		u.mu.Unlock()
		cancel()
		close(done)
		next := time.Duration(0)
		switch o {
		case outcomeOK:
			if len(resp.Changes) > 0 {
				if err := u.deps.Devices.ApplyControlPlaneDevices(ctx, resp.Changes); err != nil {
					u.setError("devices", err)
					u.log.Warn("applying device identity changes from the control plane failed; asked again after a back-off", "err", err, "changes", len(resp.Changes))
					next = u.cfg.BackoffMax
					break
				}
				u.log.Info("device identities from the control plane applied", "changes", len(resp.Changes), "seq", resp.Seq)
			}
			u.succeeded("devices", true)
			if resp.Seq == cursor && len(resp.Changes) == 0 && wait > 0 && time.Since(start) < wait/2 {
				next = u.cfg.BackoffMin // answered long before the wait ended
			}
			cursor, fetched = resp.Seq, true
		case outcomeCanceled:
			if ctx.Err() != nil {
				return
			}
			next = u.cfg.BackoffMax
		case outcomeBlocked:
		case outcomeUnauthorized:
			u.refused("devices", err)
			next = u.cfg.BackoffMax
		default:
			u.setError("devices", err)
			u.log.Debug("device identity fetch failed; retried after a back-off", "err", err)
			next = u.cfg.BackoffMax
		}
		if next > 0 && !u.sleep(ctx, next, acked) {
			return
		}
	}
}
