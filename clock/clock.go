// Package clock is edgefleet's one source of time: a small Clock interface
// (now, one-shot timers, tickers) with the system clock, a manual twin that
// moves only when a test says so, and a scaled clock that runs faster than
// real time for the simulator. Every package that waits or reads the time
// takes a Clock (nil means Real); none calls time.Now, time.After or
// time.NewTicker for logic that a test or the simulator may want to drive.
//
// Request timeouts and other bounds on real network or disk time are not
// logic: they stay on the system clock (context deadlines), whatever Clock a
// component is given.
package clock

import (
	"context"
	"time"
)

// Clock is a time source.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a timer that fires once, d from now; d <= 0 fires at once.
	NewTimer(d time.Duration) Timer
	// NewTicker returns a ticker that fires every d (d must be positive).
	// Like time.Ticker it holds at most one pending tick: a slow reader
	// misses ticks rather than receiving a burst.
	NewTicker(d time.Duration) Ticker
}

// Timer is a one-shot timer of a Clock.
type Timer interface {
	// C delivers the clock's time once the timer fires.
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it did so
	// (false: it had fired or was stopped already).
	Stop() bool
}

// Ticker is a periodic timer of a Clock.
type Ticker interface {
	// C delivers the clock's time at every tick.
	C() <-chan time.Time
	// Stop turns the ticker off; no tick is delivered after it returns.
	Stop()
	// Reset changes the period to d (positive) from now.
	Reset(d time.Duration)
}

// Or returns c, or Real() when c is nil: a nil Clock means the system clock.
func Or(c Clock) Clock {
	if c == nil {
		return Real()
	}
	return c
}

// Sleep waits d on c, or until ctx ends; it returns ctx.Err() in that case.
func Sleep(ctx context.Context, c Clock, d time.Duration) error {
	t := c.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Since returns the time elapsed on c since t.
func Since(c Clock, t time.Time) time.Duration { return c.Now().Sub(t) }

// NowFunc adapts c to the func() time.Time that some libraries take.
func NowFunc(c Clock) func() time.Time { return c.Now }

// Real returns the system clock.
func Real() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time                   { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer   { return realTimer{time.NewTimer(d)} }
func (realClock) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

type realTicker struct{ t *time.Ticker }

func (t realTicker) C() <-chan time.Time   { return t.t.C }
func (t realTicker) Stop()                 { t.t.Stop() }
func (t realTicker) Reset(d time.Duration) { t.t.Reset(d) }
