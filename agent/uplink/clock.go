package uplink

import (
	"slices"
	"sync"
	"time"
)

// Clock is the uplink's time source: heartbeat and upload intervals,
// back-off, the circuit breaker's cooldown and the times in Status. It is
// injected so tests and the simulator can compress time. Request timeouts
// are not measured on it: they bound real network time.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a timer that fires once, d from now.
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer of a Clock.
type Timer interface {
	// C delivers the clock's time once the timer fires.
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it did so
	// (false: it had fired or was stopped already).
	Stop() bool
}

// RealClock returns the system clock.
func RealClock() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// ManualClock is a Clock that moves only when told (Advance, Set). Its
// timers fire during the Advance that reaches their deadline. It is safe
// for concurrent use.
type ManualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*manualTimer
}

// NewManualClock returns a ManualClock reading start.
func NewManualClock(start time.Time) *ManualClock { return &ManualClock{now: start} }

// Now returns the clock's time.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer firing when the clock reaches Now()+d; d <= 0
// fires at once.
func (c *ManualClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &manualTimer{c: c, at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
		return t
	}
	c.timers = append(c.timers, t)
	return t
}

// Advance moves the clock forward by d and fires, in deadline order, every
// timer that is due.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.setLocked(c.now.Add(d))
	c.mu.Unlock()
}

// Set moves the clock to t (never backwards) and fires due timers.
func (c *ManualClock) Set(t time.Time) {
	c.mu.Lock()
	if t.After(c.now) {
		c.setLocked(t)
	}
	c.mu.Unlock()
}

func (c *ManualClock) setLocked(t time.Time) {
	c.now = t
	slices.SortStableFunc(c.timers, func(a, b *manualTimer) int { return a.at.Compare(b.at) })
	keep := c.timers[:0]
	for _, tm := range c.timers {
		if tm.at.After(t) {
			keep = append(keep, tm)
			continue
		}
		tm.ch <- tm.at // buffered, fires once
	}
	clear(c.timers[len(keep):])
	c.timers = keep
}

// Waiters returns the number of timers that have not fired or been
// stopped: tests use it to see that the uplink's loops are waiting.
func (c *ManualClock) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// NextDeadline returns the earliest pending timer deadline, and false
// when no timer is pending.
func (c *ManualClock) NextDeadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.timers) == 0 {
		return time.Time{}, false
	}
	at := c.timers[0].at
	for _, t := range c.timers[1:] {
		if t.at.Before(at) {
			at = t.at
		}
	}
	return at, true
}

type manualTimer struct {
	c  *ManualClock
	at time.Time
	ch chan time.Time
}

func (t *manualTimer) C() <-chan time.Time { return t.ch }

func (t *manualTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	for i, x := range t.c.timers {
		if x == t {
			t.c.timers = slices.Delete(t.c.timers, i, i+1)
			return true
		}
	}
	return false
}

// NewScaledClock returns a Clock that runs factor times faster than real
// time from start: Now is start + factor × (real time elapsed), and a
// timer of d fires after d/factor of real time. The simulator uses it to
// play an hour-long outage in a minute (factor 60). factor must be
// positive.
func NewScaledClock(start time.Time, factor float64) Clock {
	if !(factor > 0) {
		panic("uplink: NewScaledClock: factor must be positive")
	}
	return &scaledClock{start: start, base: time.Now(), factor: factor}
}

type scaledClock struct {
	start  time.Time
	base   time.Time // real time at start (monotonic)
	factor float64
}

func (c *scaledClock) Now() time.Time {
	return c.start.Add(time.Duration(float64(time.Since(c.base)) * c.factor))
}

func (c *scaledClock) NewTimer(d time.Duration) Timer {
	t := &scaledTimer{ch: make(chan time.Time, 1)}
	t.t = time.AfterFunc(time.Duration(float64(d)/c.factor), func() {
		select {
		case t.ch <- c.Now():
		default:
		}
	})
	return t
}

type scaledTimer struct {
	t  *time.Timer
	ch chan time.Time
}

func (t *scaledTimer) C() <-chan time.Time { return t.ch }
func (t *scaledTimer) Stop() bool          { return t.t.Stop() }
