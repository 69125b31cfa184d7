package uplink

import (
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/clock"
)

// Breaker states, as reported in Status.Breaker and (as numbers) by the
// edgefleet_uplink_breaker_state gauge.
const (
	BreakerClosed   = "closed"    // requests flow (gauge 0)
	BreakerHalfOpen = "half-open" // one probe request is let through (gauge 1)
	BreakerOpen     = "open"      // requests are refused locally until the cooldown ends (gauge 2)
)

// breaker is a circuit breaker shared by every request of one uplink:
// closed until threshold consecutive failures, then open for cooldown
// (requests are refused without touching the network), then half-open:
// one probe goes through; its success closes the breaker, its failure
// opens it again for another cooldown.
type breaker struct {
	threshold int
	cooldown  time.Duration
	clock     clock.Clock
	onChange  func(from, to string, failures int)

	mu       sync.Mutex
	state    string
	failures int // consecutive
	openedAt time.Time
	probing  bool          // half-open: the probe is in flight
	closedCh chan struct{} // closed (and replaced) when the breaker closes
}

func newBreaker(threshold int, cooldown time.Duration, clock clock.Clock, onChange func(from, to string, failures int)) *breaker {
	return &breaker{threshold: threshold, cooldown: cooldown, clock: clock, onChange: onChange,
		state: BreakerClosed, closedCh: make(chan struct{})}
}

// allow asks to send a request. When it may not, it returns the time at
// which to ask again (the end of the cooldown; while a probe is in
// flight, a cooldown from now) and a channel closed when the breaker
// closes, whichever comes first.
func (b *breaker) allow() (ok bool, retryAt time.Time, closed <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock.Now()
	switch b.state {
	case BreakerClosed:
		return true, time.Time{}, nil
	case BreakerOpen:
		if end := b.openedAt.Add(b.cooldown); now.Before(end) {
			return false, end, b.closedCh
		}
		b.setLocked(BreakerHalfOpen)
		b.probing = true
		return true, time.Time{}, nil
	default: // half-open
		if b.probing {
			return false, now.Add(b.cooldown), b.closedCh
		}
		b.probing = true
		return true, time.Time{}, nil
	}
}

// ready reports, without taking it, whether allow would grant a request;
// when not, like allow, when to ask again and a channel closed when the
// breaker closes.
func (b *breaker) ready() (ok bool, retryAt time.Time, closed <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.clock.Now()
	switch b.state {
	case BreakerClosed:
		return true, time.Time{}, nil
	case BreakerOpen:
		if end := b.openedAt.Add(b.cooldown); now.Before(end) {
			return false, end, b.closedCh
		}
		return true, time.Time{}, nil
	default:
		if b.probing {
			return false, now.Add(b.cooldown), b.closedCh
		}
		return true, time.Time{}, nil
	}
}

// success records a request the server answered (any answer that shows it
// is up, including refusals).
func (b *breaker) success() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures = 0
	b.probing = false
	if b.state != BreakerClosed {
		b.setLocked(BreakerClosed)
	}
}

// failure records a request that failed for want of a working server.
func (b *breaker) failure() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failures++
	b.probing = false
	switch {
	case b.state == BreakerHalfOpen,
		b.state == BreakerClosed && b.failures >= b.threshold:
		b.openedAt = b.clock.Now()
		b.setLocked(BreakerOpen)
	}
}

// abort gives back a permission that was not used (the request was not
// sent, or the uplink is stopping).
func (b *breaker) abort() {
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}

func (b *breaker) setLocked(to string) {
	from := b.state
	b.state = to
	if to == BreakerClosed {
		close(b.closedCh)
		b.closedCh = make(chan struct{})
	}
	if b.onChange != nil {
		b.onChange(from, to, b.failures)
	}
}

// closedChan returns a channel closed the next time the breaker closes
// (after it opened): the control plane answered again.
func (b *breaker) closedChan() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closedCh
}

// snapshot returns the state and the count of consecutive failures.
func (b *breaker) snapshot() (string, int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state, b.failures
}

func breakerGauge(state string) float64 {
	switch state {
	case BreakerHalfOpen:
		return 1
	case BreakerOpen:
		return 2
	}
	return 0
}
