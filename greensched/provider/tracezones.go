package provider

import (
	"context"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/greensched"
)

// NewTraceZones returns a provider answering from traces replayed on a
// simulated clock (greensched.TraceZones): Current is the zone's trace
// point in force at opts.Clock's time mapped onto the trace, Forecast the
// trace over the range, times in simulated time. It is what a simulated
// fleet's agents and control plane use (edgectl sim --carbon); its name
// and metric label are "trace". ttl as NewTrace.
func NewTraceZones(opts Options, ttl time.Duration, tz *greensched.TraceZones) (Provider, error) {
	if tz == nil {
		return nil, fmt.Errorf("provider: trace zones: none given")
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return newGuard(traceZones{tz}, opts.Clock, ttl, opts.Logger, opts.Metrics), nil
}

type traceZones struct{ tz *greensched.TraceZones }

func (traceZones) name() string { return KindTrace }

func (s traceZones) current(_ context.Context, zone string, now time.Time) (greensched.Point, error) {
	p, err := s.tz.Now(zone, now)
	if err != nil {
		return p, &FetchError{Reason: ReasonOutsideTrace, Err: err}
	}
	return p, nil
}

func (s traceZones) forecast(_ context.Context, zone string, _, from, to time.Time) (greensched.Series, []greensched.Point, error) {
	f, err := s.tz.Forecast(zone, from, to)
	if err != nil {
		return f, nil, &FetchError{Reason: ReasonOutsideTrace, Err: err}
	}
	return f, nil, nil
}

// ranged: the answer is the range asked.
func (traceZones) ranged() bool { return true }
