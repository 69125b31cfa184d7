package crdt

import (
	"fmt"
	"sync"
	"time"
)

// Timestamp is a hybrid logical clock reading: the upper 48 bits hold
// wall-clock milliseconds since the Unix epoch, the lower 16 bits a logical
// counter that orders events within the same millisecond. Timestamps compare
// as plain integers.
type Timestamp uint64

const (
	logicalBits = 16
	logicalMask = 1<<logicalBits - 1
	// maxWallMillis keeps every Timestamp below 1<<63 so it fits SQLite's
	// signed 64-bit integers (the year 6429 is far enough).
	maxWallMillis = 1<<47 - 1
	// maxTimestamp is the largest Timestamp accepted from outside.
	maxTimestamp = Timestamp(1<<63 - 1)
)

// DefaultMaxDrift is the maximum drift used when Options.MaxDrift is zero.
const DefaultMaxDrift = time.Minute

// timestampFromMillis builds a Timestamp with a zero logical counter.
func timestampFromMillis(ms int64) Timestamp {
	if ms < 0 {
		ms = 0
	}
	if ms > maxWallMillis {
		ms = maxWallMillis
	}
	return Timestamp(ms) << logicalBits
}

// Millis returns the wall-clock part in milliseconds since the Unix epoch.
func (t Timestamp) Millis() int64 { return int64(t >> logicalBits) }

// Time returns the wall-clock part of t, in UTC.
func (t Timestamp) Time() time.Time { return time.UnixMilli(t.Millis()).UTC() }

// Logical returns the logical counter of t.
func (t Timestamp) Logical() uint16 { return uint16(t & logicalMask) }

// String formats t as RFC 3339 time with milliseconds, then "+" and the
// logical counter.
func (t Timestamp) String() string {
	return fmt.Sprintf("%s+%d", t.Time().Format("2006-01-02T15:04:05.000Z07:00"), t.Logical())
}

// Clock is a hybrid logical clock. Its readings are strictly increasing,
// stay close to the wall clock, never go below the last reading it was
// created with (the persisted one, so it never goes backwards across
// restarts), and are pushed past every remote timestamp it observes. Remote
// timestamps further ahead of the wall clock than the maximum drift are
// rejected, so one replica with a broken clock cannot drag the others into
// the future. Clock is safe for concurrent use.
type Clock struct {
	mu       sync.Mutex
	wall     func() time.Time
	maxDrift time.Duration
	last     Timestamp
}

// NewClock returns a clock reading wall (nil means time.Now), rejecting
// remote timestamps more than maxDrift ahead of it (zero or negative means
// DefaultMaxDrift) and never returning a reading at or below last.
func NewClock(wall func() time.Time, maxDrift time.Duration, last Timestamp) *Clock {
	if wall == nil {
		wall = time.Now
	}
	if maxDrift <= 0 {
		maxDrift = DefaultMaxDrift
	}
	return &Clock{wall: wall, maxDrift: maxDrift, last: last}
}

func (c *Clock) physical() Timestamp { return timestampFromMillis(c.wall().UnixMilli()) }

// Now returns a new timestamp, strictly greater than every timestamp this
// clock returned or observed before. When the wall clock stands still or
// goes backwards the logical counter advances (carrying into the
// millisecond part when it overflows).
func (c *Clock) Now() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.physical()
	if t <= c.last {
		t = c.last + 1
	}
	c.last = t
	return t
}

// Observe merges a timestamp received from another replica and returns a new
// local timestamp greater than both it and every earlier reading. A remote
// timestamp more than the maximum drift ahead of the local wall clock is
// rejected with an error wrapping ErrClockDrift and leaves the clock as it
// was.
func (c *Clock) Observe(remote Timestamp) (Timestamp, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	phys := c.physical()
	if err := c.checkDriftLocked(remote, phys); err != nil {
		return 0, err
	}
	t := phys
	if t <= c.last {
		t = c.last + 1
	}
	if t <= remote {
		t = remote + 1
	}
	c.last = t
	return t, nil
}

// CheckDrift reports, without changing the clock, whether remote would be
// rejected by Observe.
func (c *Clock) CheckDrift(remote Timestamp) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.checkDriftLocked(remote, c.physical())
}

func (c *Clock) checkDriftLocked(remote, phys Timestamp) error {
	if remote > maxTimestamp {
		return fmt.Errorf("%w: remote timestamp %d out of range", ErrClockDrift, uint64(remote))
	}
	ahead := time.Duration(remote.Millis()-phys.Millis()) * time.Millisecond
	if ahead > c.maxDrift {
		return fmt.Errorf("%w: remote timestamp %s is %s ahead of local wall clock (limit %s)",
			ErrClockDrift, remote, ahead, c.maxDrift)
	}
	return nil
}

// Last returns the latest timestamp the clock returned or observed.
func (c *Clock) Last() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}
