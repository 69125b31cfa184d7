package clock

import (
	"sync"
	"time"
)

// NewScaled returns a Clock that runs factor times faster than real time
// from start: Now is start + factor × (real time elapsed), and a timer of d
// fires after d/factor of real time. The simulator uses it to play an
// hour-long outage in a minute (factor 60). factor must be positive.
func NewScaled(start time.Time, factor float64) Clock {
	if !(factor > 0) {
		panic("clock: NewScaled: factor must be positive")
	}
	return &scaled{start: start, base: time.Now(), factor: factor}
}

type scaled struct {
	start  time.Time
	base   time.Time // real time at start (monotonic)
	factor float64
}

func (c *scaled) Now() time.Time {
	return c.start.Add(time.Duration(float64(time.Since(c.base)) * c.factor))
}

func (c *scaled) real(d time.Duration) time.Duration { return time.Duration(float64(d) / c.factor) }

func (c *scaled) NewTimer(d time.Duration) Timer {
	t := &scaledTimer{ch: make(chan time.Time, 1)}
	t.t = time.AfterFunc(c.real(d), func() {
		select {
		case t.ch <- c.Now():
		default:
		}
	})
	return t
}

func (c *scaled) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	t := &scaledTicker{c: c, ch: make(chan time.Time, 1), stop: make(chan struct{})}
	t.start(d)
	return t
}

type scaledTimer struct {
	t  *time.Timer
	ch chan time.Time
}

func (t *scaledTimer) C() <-chan time.Time { return t.ch }
func (t *scaledTimer) Stop() bool          { return t.t.Stop() }

// scaledTicker forwards a real ticker's ticks with the scaled time.
type scaledTicker struct {
	c    *scaled
	ch   chan time.Time
	mu   sync.Mutex
	tk   *time.Ticker
	stop chan struct{}
}

func (t *scaledTicker) start(d time.Duration) {
	tk := time.NewTicker(t.c.real(d))
	stop := make(chan struct{})
	t.mu.Lock()
	t.tk, t.stop = tk, stop
	t.mu.Unlock()
	go func() {
		for {
			select {
			case <-tk.C:
				select {
				case t.ch <- t.c.Now():
				default:
				}
			case <-stop:
				return
			}
		}
	}()
}

func (t *scaledTicker) C() <-chan time.Time { return t.ch }

func (t *scaledTicker) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.tk != nil {
		t.tk.Stop()
		close(t.stop)
		t.tk = nil
	}
}

func (t *scaledTicker) Reset(d time.Duration) {
	t.Stop()
	t.start(d)
}
