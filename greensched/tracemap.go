package greensched

import (
	"fmt"
	"math"
	"sort"
	"time"
)

// TimeMap maps a simulation's clock onto a trace's time: the moment
// SimStart is TraceStart, and every simulated duration d is Scale × d of
// trace time (Scale 3600: a simulated second plays an hour of the trace).
type TimeMap struct {
	SimStart   time.Time
	TraceStart time.Time
	Scale      float64
}

// Validate checks that Scale is a finite positive number.
func (m TimeMap) Validate() error {
	if !(m.Scale > 0) || math.IsInf(m.Scale, 0) {
		return fmt.Errorf("greensched: time map: scale %v must be a finite number > 0", m.Scale)
	}
	return nil
}

// Trace is the trace time of simulated time t.
func (m TimeMap) Trace(t time.Time) time.Time {
	return m.TraceStart.Add(time.Duration(float64(t.Sub(m.SimStart)) * m.Scale))
}

// Sim is the simulated time of trace time t (the inverse of Trace).
func (m TimeMap) Sim(t time.Time) time.Time {
	return m.SimStart.Add(time.Duration(float64(t.Sub(m.TraceStart)) / m.Scale))
}

// TraceZones answers carbon intensity for zones replaying traces on a
// simulated clock: the trace of each zone (by Series.Zone) read through a
// TimeMap. It is what a simulated fleet needs to ask "how green is zone Z
// now" and "what is the forecast until then" with its own clock; the
// forecast is the trace itself (perfect). Safe for concurrent use (it is
// read-only).
type TraceZones struct {
	m     TimeMap
	zones map[string]Series
}

// NewTraceZones checks the map and the series (one per zone, each valid
// and not empty).
func NewTraceZones(m TimeMap, series ...Series) (*TraceZones, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	tz := &TraceZones{m: m, zones: map[string]Series{}}
	for _, s := range series {
		if s.Zone == "" || len(s.Points) == 0 {
			return nil, fmt.Errorf("greensched: trace zones: a series needs a zone and points (zone %q, %d points)", s.Zone, len(s.Points))
		}
		if _, dup := tz.zones[s.Zone]; dup {
			return nil, fmt.Errorf("greensched: trace zones: two series for zone %q", s.Zone)
		}
		if err := s.Validate(); err != nil {
			return nil, err
		}
		tz.zones[s.Zone] = s
	}
	return tz, nil
}

// Zones lists the zones, sorted.
func (tz *TraceZones) Zones() []string {
	out := make([]string, 0, len(tz.zones))
	for z := range tz.zones {
		out = append(out, z)
	}
	sort.Strings(out)
	return out
}

// Map is the time map.
func (tz *TraceZones) Map() TimeMap { return tz.m }

func (tz *TraceZones) series(zone string) (Series, error) {
	s, ok := tz.zones[zone]
	if !ok {
		return s, fmt.Errorf("greensched: trace zones: no trace for zone %q", zone)
	}
	return s, nil
}

// Now returns the intensity of zone in force at simulated time t: the
// trace's latest point at or before Trace(t), with its time mapped back to
// simulated time. Before the trace's first point, or more than two steps
// after its last, it is an error.
func (tz *TraceZones) Now(zone string, t time.Time) (Point, error) {
	s, err := tz.series(zone)
	if err != nil {
		return Point{}, err
	}
	at := tz.m.Trace(t)
	i := sort.Search(len(s.Points), func(i int) bool { return s.Points[i].Time.After(at) }) - 1
	if i < 0 || at.Sub(s.Points[i].Time) > 2*max(s.Step, time.Second) {
		return Point{}, fmt.Errorf("greensched: trace zones: zone %q: simulated %s is trace time %s, outside the trace (%s to %s)", zone,
			t.Format(time.RFC3339), at.Format(time.DateTime), s.Points[0].Time.Format(time.DateTime), s.Points[len(s.Points)-1].Time.Format(time.DateTime))
	}
	p := s.Points[i]
	return Point{Time: tz.m.Sim(p.Time), Intensity: p.Intensity}, nil
}

// Forecast returns zone's trace over simulated [from, to), times mapped
// to simulated time, Step the trace's step in simulated time (at least
// 1ns). A span with no trace point is an error.
func (tz *TraceZones) Forecast(zone string, from, to time.Time) (Series, error) {
	if err := checkSpan(from, to); err != nil {
		return Series{}, err
	}
	s, err := tz.series(zone)
	if err != nil {
		return Series{}, err
	}
	in := s.Between(tz.m.Trace(from), tz.m.Trace(to))
	if len(in.Points) == 0 {
		return Series{}, fmt.Errorf("greensched: trace zones: zone %q: no trace point between simulated %s and %s", zone, from.Format(time.RFC3339), to.Format(time.RFC3339))
	}
	out := Series{Zone: zone, Step: max(time.Duration(float64(s.Step)/tz.m.Scale), 1), Points: make([]Point, len(in.Points))}
	for i, p := range in.Points {
		out.Points[i] = Point{Time: tz.m.Sim(p.Time), Intensity: p.Intensity}
	}
	return out, nil
}
