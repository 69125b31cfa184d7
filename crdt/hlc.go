package crdt

import (
	"fmt"
	"log/slog"
	"sort"
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
// stay close to the reference time (below), never go below the last reading
// it was created with (the persisted one, so it never goes backwards across
// restarts), and are pushed past every remote timestamp it observes. Remote
// timestamps further ahead of the reference time than the maximum drift are
// rejected, so one replica with a broken clock cannot drag the others into
// the future. Clock is safe for concurrent use.
//
// The reference time is the local wall clock while it is sane. It is known
// wrong when it reads before ClockConfig.MinWall (a board without a
// real-time clock boots in 1970), when it is behind the clock's last
// reading by more than the maximum drift (it went backwards, or the board
// was switched off and lost its time), or when it disagrees by more than
// the maximum drift with the median of its own reading and the fleet's
// (ClockConfig.Fleet). While it is wrong the reference is the lower median
// of the fleet's clocks, or without any the last reading; once the wall
// clock is sane again it is the reference again. Each change is logged.
type Clock struct {
	mu       sync.Mutex
	wall     func() time.Time
	fleet    func() []time.Time
	minWall  time.Time
	maxDrift time.Duration
	log      *slog.Logger
	last     Timestamp
	source   ClockSource // of the latest reference, to log changes
}

// ClockSource names what a clock's reference time comes from.
type ClockSource string

// Reference time sources.
const (
	SourceWall  ClockSource = "wall"  // the local wall clock, sane
	SourceFleet ClockSource = "fleet" // the wall clock is wrong: the median of peers' clocks
	SourceLast  ClockSource = "last"  // the wall clock is wrong and no peer clock is known: the last reading
)

// ClockConfig configures a Clock.
type ClockConfig struct {
	// Wall is the local wall clock; nil means time.Now.
	Wall func() time.Time
	// MaxDrift is how far ahead of the reference time a remote timestamp
	// may be, and how far the wall clock may stray before it is judged
	// wrong; zero or negative means DefaultMaxDrift.
	MaxDrift time.Duration
	// Last is the last reading (persisted): readings stay above it.
	Last Timestamp
	// Fleet returns readings of live peers' clocks, each as of now (aged
	// on the local monotonic clock since it was received), from peers
	// whose own wall clock is sane; nil means none are known.
	Fleet func() []time.Time
	// MinWall: wall clock readings before it are known wrong (no real-time
	// clock, not synchronised yet). Zero means no such bound.
	MinWall time.Time
	// Logger receives the warnings about a wrong wall clock; nil discards.
	Logger *slog.Logger
}

// Reference is a clock's reference time and where it comes from.
type Reference struct {
	Time   time.Time
	Source ClockSource
	Wall   time.Time // the local wall clock's reading
	Peers  int       // peer clock readings known
	Reason string    // why the wall clock is wrong; "" when it is sane
}

// Sane reports whether the reference is the local wall clock.
func (r Reference) Sane() bool { return r.Source == SourceWall }

// NewClock returns a clock reading wall (nil means time.Now), rejecting
// remote timestamps more than maxDrift ahead of it (zero or negative means
// DefaultMaxDrift) and never returning a reading at or below last. It
// knows no fleet: see NewClockConfig.
func NewClock(wall func() time.Time, maxDrift time.Duration, last Timestamp) *Clock {
	return NewClockConfig(ClockConfig{Wall: wall, MaxDrift: maxDrift, Last: last})
}

// NewClockConfig returns a clock configured by cfg.
func NewClockConfig(cfg ClockConfig) *Clock {
	if cfg.Wall == nil {
		cfg.Wall = time.Now
	}
	if cfg.MaxDrift <= 0 {
		cfg.MaxDrift = DefaultMaxDrift
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Clock{wall: cfg.Wall, fleet: cfg.Fleet, minWall: cfg.MinWall, maxDrift: cfg.MaxDrift,
		log: cfg.Logger, last: cfg.Last, source: SourceWall}
}

// Reference returns the clock's reference time now.
func (c *Clock) Reference() Reference {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.referenceLocked()
}

func (c *Clock) referenceLocked() Reference {
	wall := c.wall()
	var peers []time.Time
	if c.fleet != nil {
		peers = c.fleet()
	}
	r := Reference{Time: wall, Source: SourceWall, Wall: wall, Peers: len(peers)}
	switch {
	case !c.minWall.IsZero() && wall.Before(c.minWall):
		r.Reason = fmt.Sprintf("wall clock reads before %s (no real-time clock, not synchronised)", c.minWall.UTC().Format(time.DateOnly))
	case time.Duration(c.last.Millis()-wall.UnixMilli())*time.Millisecond > c.maxDrift:
		r.Reason = fmt.Sprintf("wall clock is behind the last timestamp %s by more than %s", c.last, c.maxDrift)
	case len(peers) > 0:
		if off := wall.Sub(selfMedian(wall, peers)); off > c.maxDrift || off < -c.maxDrift {
			dir := "ahead of"
			if off < 0 {
				off, dir = -off, "behind"
			}
			r.Reason = fmt.Sprintf("wall clock is %s %s the median of its own and %d peers' clocks", off, dir, len(peers))
		}
	}
	if r.Reason != "" {
		if len(peers) > 0 {
			r.Time, r.Source = lowerMedian(peers), SourceFleet
		} else {
			r.Time, r.Source = c.last.Time(), SourceLast
		}
	}
	if r.Source != c.source {
		switch r.Source {
		case SourceWall:
			c.log.Info("crdt: local wall clock is sane again; judging clock drift against it",
				"wall", wall, "previous_source", string(c.source))
		case SourceFleet:
			c.log.Warn("crdt: local wall clock is wrong; judging clock drift against the median of peers' clocks",
				"reason", r.Reason, "wall", wall, "reference", r.Time, "peers", len(peers))
		case SourceLast:
			c.log.Warn("crdt: local wall clock is wrong and no peer clock is known yet; judging clock drift against the last timestamp",
				"reason", r.Reason, "wall", wall, "reference", r.Time)
		}
		c.source = r.Source
	}
	return r
}

// selfMedian is the median of wall and peers; of an even count, the middle
// reading nearer to wall (a tie keeps the local clock).
func selfMedian(wall time.Time, peers []time.Time) time.Time {
	all := append([]time.Time{wall}, peers...)
	sortTimes(all)
	n := len(all)
	if n%2 == 1 {
		return all[n/2]
	}
	lo, hi := all[n/2-1], all[n/2]
	if wall.Sub(lo) <= hi.Sub(wall) {
		return lo
	}
	return hi
}

// lowerMedian is the median of ts; of an even count the lower middle one
// (a reference too low refuses ops that anti-entropy offers again later; one
// too high would let a fast clock in for good).
func lowerMedian(ts []time.Time) time.Time {
	s := append([]time.Time(nil), ts...)
	sortTimes(s)
	return s[(len(s)-1)/2]
}

func sortTimes(ts []time.Time) {
	sort.Slice(ts, func(i, j int) bool { return ts[i].Before(ts[j]) })
}

func (c *Clock) physicalLocked() (Timestamp, Reference) {
	r := c.referenceLocked()
	return timestampFromMillis(r.Time.UnixMilli()), r
}

// Now returns a new timestamp, strictly greater than every timestamp this
// clock returned or observed before. When the reference time stands still
// or goes backwards the logical counter advances (carrying into the
// millisecond part when it overflows).
func (c *Clock) Now() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	t, _ := c.physicalLocked()
	if t <= c.last {
		t = c.last + 1
	}
	c.last = t
	return t
}

// Observe merges a timestamp received from another replica and returns a new
// local timestamp greater than both it and every earlier reading. A remote
// timestamp more than the maximum drift ahead of the reference time is
// rejected with an error wrapping ErrClockDrift and leaves the clock as it
// was.
func (c *Clock) Observe(remote Timestamp) (Timestamp, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	phys, ref := c.physicalLocked()
	if err := c.checkDrift(remote, ref); err != nil {
		return 0, err
	}
	return c.observeLocked(remote, phys), nil
}

// observeChecked is Observe of a timestamp already checked against Limit.
func (c *Clock) observeChecked(remote Timestamp) Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	phys, _ := c.physicalLocked()
	return c.observeLocked(remote, phys)
}

func (c *Clock) observeLocked(remote, phys Timestamp) Timestamp {
	t := phys
	if t <= c.last {
		t = c.last + 1
	}
	if t <= remote {
		t = remote + 1
	}
	c.last = t
	return t
}

// CheckDrift reports, without changing the clock, whether remote would be
// rejected by Observe.
func (c *Clock) CheckDrift(remote Timestamp) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.checkDrift(remote, c.referenceLocked())
}

// Limit returns the reference time now and the largest remote timestamp
// Observe accepts against it.
func (c *Clock) Limit() (Reference, Timestamp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ref := c.referenceLocked()
	return ref, timestampFromMillis(ref.Time.Add(c.maxDrift).UnixMilli()) | logicalMask
}

func (c *Clock) checkDrift(remote Timestamp, ref Reference) error {
	if remote > maxTimestamp {
		return fmt.Errorf("%w: remote timestamp %d out of range", ErrClockDrift, uint64(remote))
	}
	ahead := time.Duration(remote.Millis()-ref.Time.UnixMilli()) * time.Millisecond
	if ahead > c.maxDrift {
		return fmt.Errorf("%w: remote timestamp %s is %s ahead of the %s clock (limit %s)",
			ErrClockDrift, remote, ahead, ref.Source, c.maxDrift)
	}
	return nil
}

// Last returns the latest timestamp the clock returned or observed.
func (c *Clock) Last() Timestamp {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}
