package provider

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/edgefleet/edgefleet/greensched"
)

// trace serves carbon-intensity traces (one series per zone) as if they
// were live: Current is the trace's point in force at the clock's time,
// Forecast the trace's points in the range (a perfect forecast).
type trace struct {
	series map[string]greensched.Series
}

// ReadTraceFile reads a trace CSV (the format of ../shared/data/carbon,
// see greensched.ReadTrace) for zone, times in UTC.
func ReadTraceFile(path, zone string) (greensched.Series, error) {
	f, err := os.Open(path)
	if err != nil {
		return greensched.Series{}, fmt.Errorf("provider: trace of zone %q: %w", zone, err)
	}
	defer f.Close()
	s, _, err := greensched.ReadTrace(f, zone, time.UTC)
	if err != nil {
		return greensched.Series{}, fmt.Errorf("provider: trace %s: %w", path, err)
	}
	return s, nil
}

func (tr *trace) name() string { return KindTrace }

func (tr *trace) get(zone string) (greensched.Series, error) {
	s, ok := tr.series[zone]
	if !ok {
		return s, &FetchError{Reason: ReasonUnknownZone, Err: fmt.Errorf("no trace for this zone")}
	}
	return s, nil
}

func (tr *trace) current(_ context.Context, zone string, now time.Time) (greensched.Point, error) {
	s, err := tr.get(zone)
	if err != nil {
		return greensched.Point{}, err
	}
	p, ok := inForce(s, now)
	if !ok {
		end := s.Points[len(s.Points)-1].Time.Add(s.Step)
		return greensched.Point{}, &FetchError{Reason: ReasonOutsideTrace,
			Err: fmt.Errorf("%s is outside the trace (%s to %s)", rfc3339(now), rfc3339(s.Points[0].Time), rfc3339(end))}
	}
	return p, nil
}

func (tr *trace) forecast(_ context.Context, zone string, _, from, to time.Time) (greensched.Series, []greensched.Point, error) {
	s, err := tr.get(zone)
	if err != nil {
		return s, nil, err
	}
	if len(s.Between(from, to).Points) == 0 {
		return greensched.Series{}, nil, &FetchError{Reason: ReasonOutsideTrace,
			Err: fmt.Errorf("no trace point from %s to %s", rfc3339(from), rfc3339(to))}
	}
	return s, nil, nil
}

// ranged: a trace is one fixed series.
func (tr *trace) ranged() bool { return false }
