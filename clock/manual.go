package clock

import (
	"slices"
	"sync"
	"time"
)

// Manual is a Clock that moves only when told (Advance, Set). Its timers
// and tickers fire during the Advance or Set that reaches their deadline,
// in deadline order. It is safe for concurrent use.
type Manual struct {
	mu      sync.Mutex
	now     time.Time
	waiters []*manualWaiter
}

// NewManual returns a Manual clock reading start.
func NewManual(start time.Time) *Manual { return &Manual{now: start} }

// manualWaiter is a pending timer (period 0) or ticker (period > 0).
type manualWaiter struct {
	c      *Manual
	at     time.Time
	period time.Duration
	ch     chan time.Time
}

// Now returns the clock's time.
func (c *Manual) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// NewTimer returns a timer firing when the clock reaches Now()+d; d <= 0
// fires at once.
func (c *Manual) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &manualWaiter{c: c, at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		w.ch <- c.now
		return manualTimer{w}
	}
	c.waiters = append(c.waiters, w)
	return manualTimer{w}
}

// NewTicker returns a ticker firing every d of the clock's time.
func (c *Manual) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	w := &manualWaiter{c: c, at: c.now.Add(d), period: d, ch: make(chan time.Time, 1)}
	c.waiters = append(c.waiters, w)
	return manualTicker{w}
}

// Advance moves the clock forward by d and fires every timer and tick that
// is due, in deadline order.
func (c *Manual) Advance(d time.Duration) {
	c.mu.Lock()
	c.setLocked(c.now.Add(d))
	c.mu.Unlock()
}

// Set moves the clock to t (never backwards) and fires what is due.
func (c *Manual) Set(t time.Time) {
	c.mu.Lock()
	if t.After(c.now) {
		c.setLocked(t)
	}
	c.mu.Unlock()
}

func (c *Manual) setLocked(t time.Time) {
	c.now = t
	for {
		slices.SortStableFunc(c.waiters, func(a, b *manualWaiter) int { return a.at.Compare(b.at) })
		if len(c.waiters) == 0 || c.waiters[0].at.After(t) {
			return
		}
		w := c.waiters[0]
		select { // buffered: a tick nobody took is dropped, as with time.Ticker
		case w.ch <- w.at:
		default:
		}
		if w.period > 0 {
			w.at = w.at.Add(w.period)
			continue
		}
		c.waiters = slices.Delete(c.waiters, 0, 1)
	}
}

func (c *Manual) remove(w *manualWaiter) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, x := range c.waiters {
		if x == w {
			c.waiters = slices.Delete(c.waiters, i, i+1)
			return true
		}
	}
	return false
}

// Waiters returns the number of timers and tickers that are pending: tests
// use it to see that a loop is waiting.
func (c *Manual) Waiters() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiters)
}

// NextDeadline returns the earliest pending deadline, and false when
// nothing is pending.
func (c *Manual) NextDeadline() (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.waiters) == 0 {
		return time.Time{}, false
	}
	at := c.waiters[0].at
	for _, w := range c.waiters[1:] {
		if w.at.Before(at) {
			at = w.at
		}
	}
	return at, true
}

type manualTimer struct{ w *manualWaiter }

func (t manualTimer) C() <-chan time.Time { return t.w.ch }
func (t manualTimer) Stop() bool          { return t.w.c.remove(t.w) }

type manualTicker struct{ w *manualWaiter }

func (t manualTicker) C() <-chan time.Time { return t.w.ch }
func (t manualTicker) Stop()               { t.w.c.remove(t.w) }

func (t manualTicker) Reset(d time.Duration) {
	if d <= 0 {
		panic("clock: non-positive interval for Ticker.Reset")
	}
	c := t.w.c
	c.mu.Lock()
	defer c.mu.Unlock()
	t.w.period = d
	t.w.at = c.now.Add(d)
	if !slices.Contains(c.waiters, t.w) {
		c.waiters = append(c.waiters, t.w)
	}
}
