package uplink

import (
	"context"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/buildinfo"
)

func (u *Uplink) setServerInterval(seconds float64) {
	d := time.Duration(seconds * float64(time.Second))
	d = min(max(d, 100*time.Millisecond), time.Hour)
	u.mu.Lock()
	u.serverInterval = d
	u.mu.Unlock()
}

// heartbeatInterval is the configured interval, else the server's, else 10s.
func (u *Uplink) heartbeatInterval() time.Duration {
	if u.cfg.HeartbeatInterval > 0 {
		return u.cfg.HeartbeatInterval
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.serverInterval > 0 {
		return u.serverInterval
	}
	return 10 * time.Second
}

func (u *Uplink) heartbeatBody() cpapi.Heartbeat {
	var hb cpapi.Heartbeat
	if u.deps.Status != nil {
		hb = u.deps.Status()
	}
	bi := buildinfo.Get()
	if hb.Name == "" {
		hb.Name = u.name
	}
	if hb.Version == "" {
		hb.Version = bi.Version
	}
	if hb.OS == "" {
		hb.OS = bi.OS
	}
	if hb.Arch == "" {
		hb.Arch = bi.Arch
	}
	return hb
}

// heartbeatLoop reports the agent every heartbeat interval, backing off
// while the control plane fails.
func (u *Uplink) heartbeatLoop(ctx context.Context) {
	if !u.waitEnrolled(ctx) {
		return
	}
	client := u.agentClient()
	failures := 0
	for {
		if !u.waitReady(ctx) {
			return
		}
		hb := u.heartbeatBody()
		var resp cpapi.HeartbeatResponse
		o, err := u.do(ctx, "heartbeat", func(rctx context.Context) (string, error) {
			var err error
			resp, err = client.Heartbeat(rctx, hb)
			return "", err
		})
		var next time.Duration
		var wake <-chan struct{} // the breaker closing ends a back-off early
		switch o {
		case outcomeCanceled:
			return
		case outcomeBlocked:
			continue
		case outcomeOK:
			if failures > 0 {
				u.log.Info("heartbeats resumed", "after_failures", failures)
			}
			failures = 0
			if resp.HeartbeatIntervalSeconds > 0 {
				u.setServerInterval(resp.HeartbeatIntervalSeconds)
			}
			u.mu.Lock()
			u.heartbeats++
			u.lastHB = u.clock.Now()
			u.mu.Unlock()
			u.succeeded("heartbeat", true)
			u.heartbeatKeys(ctx, client)
			next = u.heartbeatInterval()
		case outcomeUnauthorized:
			u.refused("heartbeat", err)
			next = u.cfg.BackoffMax
		default:
			failures++
			if o == outcomeFailed {
				u.abortWatch()
			}
			u.setError("heartbeat", err)
			next = u.backoff(failures)
			wake = u.br.closedChan()
			switch {
			case o == outcomeRejected:
				u.log.Error("control plane refused the heartbeat", "err", err, "retry_in", next)
			case failures == 1:
				u.log.Warn("heartbeat failed; retrying with back-off", "err", err, "retry_in", next)
			default:
				u.log.Debug("heartbeat failed", "attempt", failures, "err", err, "retry_in", next)
			}
		}
		if !u.sleep(ctx, next, wake) {
			return
		}
	}
}
