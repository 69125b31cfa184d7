package provider

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/greensched"
)

// guard is the Provider that New returns: it caches a source's answers per
// zone and falls back to the last good data when the source fails (see
// the package comment).
type guard struct {
	src source
	clk clock.Clock
	ttl time.Duration
	log *slog.Logger
	m   *Metrics

	mu    sync.Mutex
	zones map[string]*zoneState
}

// zoneState is what a guard keeps of one zone.
type zoneState struct {
	// fetch serialises the fetches of the zone, so that callers arriving
	// together share one request.
	fetch sync.Mutex

	cur    greensched.Point // last good current reading
	curAt  time.Time        // when it was fetched
	hasCur bool

	fc           Forecast  // last good forecast
	fcFrom, fcTo time.Time // the range it was fetched for
	fcAt         time.Time
	hasFc        bool
}

func newGuard(src source, clk clock.Clock, ttl time.Duration, log *slog.Logger, m *Metrics) *guard {
	return &guard{src: src, clk: clock.Or(clk), ttl: ttl, log: log, m: m, zones: map[string]*zoneState{}}
}

func (g *guard) Name() string { return g.src.name() }

func (g *guard) zone(zone string) *zoneState {
	g.mu.Lock()
	defer g.mu.Unlock()
	st, ok := g.zones[zone]
	if !ok {
		st = &zoneState{}
		g.zones[zone] = st
	}
	return st
}

func (g *guard) fresh(at, now time.Time) bool { return g.ttl > 0 && now.Sub(at) < g.ttl }

// Current implements Provider.
func (g *guard) Current(ctx context.Context, zone string) (Reading, error) {
	if zone == "" {
		return Reading{}, errors.New("provider: current: empty zone")
	}
	st := g.zone(zone)
	st.fetch.Lock()
	defer st.fetch.Unlock()
	now := g.clk.Now()
	r := Reading{Zone: zone, Source: g.Name()}
	if st.hasCur && g.fresh(st.curAt, now) {
		r.Point = st.cur
		return r, nil
	}
	g.m.Requests.WithLabelValues(g.Name(), "current").Inc()
	p, err := g.src.current(ctx, zone, now)
	if err == nil {
		st.cur, st.curAt, st.hasCur = p, now, true
		r.Point = p
		return r, nil
	}
	err = fetchErr(g.Name(), "current", zone, err)
	reason := g.failed(err)
	r.Stale, r.Reason = true, reason
	if p, ok := forecastAt(st, now); ok {
		r.Point = p
		g.fellBack(zone, "current", "last good forecast", reason, err)
		return r, nil
	}
	if st.hasCur {
		r.Point = st.cur
		g.fellBack(zone, "current", "last good reading", reason, err)
		return r, nil
	}
	return Reading{}, fmt.Errorf("%w; %w", err, ErrNoData)
}

// forecastAt returns the last good forecast's point in force at t, if the
// forecast covers t.
func forecastAt(st *zoneState, t time.Time) (greensched.Point, bool) {
	if !st.hasFc {
		return greensched.Point{}, false
	}
	return inForce(st.fc.Series, t)
}

// Forecast implements Provider.
func (g *guard) Forecast(ctx context.Context, zone string, from, to time.Time) (Forecast, error) {
	if zone == "" {
		return Forecast{}, errors.New("provider: forecast: empty zone")
	}
	if !from.Before(to) {
		return Forecast{}, fmt.Errorf("provider: forecast of zone %q: empty range %s to %s", zone, rfc3339(from), rfc3339(to))
	}
	st := g.zone(zone)
	st.fetch.Lock()
	defer st.fetch.Unlock()
	now := g.clk.Now()
	// A fresh forecast answers any range of a source whose forecast does
	// not depend on the range, else the ranges within the one fetched.
	covered := !g.src.ranged() || (!from.Before(st.fcFrom) && !to.After(st.fcTo))
	if st.hasFc && g.fresh(st.fcAt, now) && covered {
		if f, ok := cut(st.fc, from, to); ok {
			return f, nil
		}
	}
	g.m.Requests.WithLabelValues(g.Name(), "forecast").Inc()
	s, opt, err := g.src.forecast(ctx, zone, now, from, to)
	if err == nil {
		s.Zone = zone
		if verr := s.Validate(); verr != nil { // sources check; this guards against a bug
			err = &FetchError{Reason: ReasonBadData, Err: verr}
		}
	}
	if err == nil {
		full := Forecast{Zone: zone, Source: g.Name(), Series: s, Optimal: opt, FetchedAt: now}
		st.fc, st.fcFrom, st.fcTo, st.fcAt, st.hasFc = full, from, to, now, true
		if f, ok := cut(full, from, to); ok {
			return f, nil
		}
		err = errEmpty("no forecast point from " + rfc3339(from) + " to " + rfc3339(to))
	}
	err = fetchErr(g.Name(), "forecast", zone, err)
	reason := g.failed(err)
	if st.hasFc {
		if f, ok := cut(st.fc, from, to); ok {
			f.Stale, f.Reason = true, reason
			g.fellBack(zone, "forecast", "last good forecast", reason, err)
			return f, nil
		}
	}
	return Forecast{}, fmt.Errorf("%w; %w", err, ErrNoData)
}

// cut returns f with its points in [from, to), false when there is none.
func cut(f Forecast, from, to time.Time) (Forecast, bool) {
	f.Series = f.Series.Between(from, to)
	return f, len(f.Series.Points) > 0
}

// failed counts a failed fetch and returns its reason.
func (g *guard) failed(err error) string {
	reason := reasonOf(err)
	g.m.Failures.WithLabelValues(g.Name(), reason).Inc()
	return reason
}

// fellBack logs and counts an answer from the last good data.
func (g *guard) fellBack(zone, op, from, reason string, err error) {
	g.m.Fallbacks.WithLabelValues(g.Name(), reason).Inc()
	g.log.Warn("carbon provider failed; using last good data",
		"provider", g.Name(), "zone", zone, "op", op, "reason", reason, "fallback", from, "err", err)
}
