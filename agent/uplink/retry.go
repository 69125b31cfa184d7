package uplink

import (
	"context"
	"time"
)

// backoff returns the wait after the n-th consecutive failure (n >= 1): a
// uniformly random duration in [BackoffMin, min(BackoffMax,
// BackoffMin×2^(n-1))].
func (u *Uplink) backoff(n int) time.Duration {
	lo, hi := u.cfg.BackoffMin, u.cfg.BackoffMax
	if n < 1 {
		n = 1
	}
	if n-1 < 40 {
		if c := lo << (n - 1); c > 0 && c < hi {
			hi = c
		}
	}
	if hi <= lo {
		return lo
	}
	u.randMu.Lock()
	defer u.randMu.Unlock()
	return lo + time.Duration(u.rnd.Int64N(int64(hi-lo)+1))
}

// sleep waits d on the clock. wake, if not nil, ends the wait early. It
// returns false when ctx ends first.
func (u *Uplink) sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := u.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	case <-wake:
		return true
	}
}

// waitReady waits until the breaker would let a request through; false
// when ctx ends first.
func (u *Uplink) waitReady(ctx context.Context) bool {
	for {
		ok, retryAt, closed := u.br.ready()
		if ok {
			return true
		}
		t := u.clock.NewTimer(retryAt.Sub(u.clock.Now()))
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C():
		case <-closed:
		}
		t.Stop()
	}
}

func (u *Uplink) waitEnrolled(ctx context.Context) bool {
	select {
	case <-u.enrolledCh:
		return true
	case <-ctx.Done():
		return false
	}
}

// outcomeBlocked: the breaker refused the request; nothing was sent.
const outcomeBlocked outcome = -1

// do sends one request through the breaker, bounded by RequestTimeout,
// and records its metrics. fn returns a result label replacing "ok" on
// success ("" keeps it).
func (u *Uplink) do(ctx context.Context, op string, fn func(context.Context) (string, error)) (outcome, error) {
	return u.doFor(ctx, op, u.cfg.RequestTimeout, fn)
}

// doFor is do bounded by timeout instead of RequestTimeout.
func (u *Uplink) doFor(ctx context.Context, op string, timeout time.Duration, fn func(context.Context) (string, error)) (outcome, error) {
	if ok, _, _ := u.br.allow(); !ok {
		return outcomeBlocked, ErrBreakerOpen
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	start := time.Now() // system clock: the request's real duration, for the metric
	label, err := fn(rctx)
	cancel()
	u.m.seconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
	o := classify(ctx, err)
	switch o {
	case outcomeOK, outcomeRejected, outcomeUnauthorized, outcomeSealed:
		u.br.success()
	case outcomeFailed:
		u.br.failure()
	default:
		u.br.abort()
	}
	if o != outcomeOK || label == "" {
		label = o.String()
	}
	u.m.requests.WithLabelValues(op, label).Inc()
	return o, err
}
