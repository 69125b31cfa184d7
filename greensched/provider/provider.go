// Package provider fetches grid carbon intensity for greensched from a CSV
// trace or from an online service: the Carbon Aware SDK Web API,
// Electricity Maps (API v3) or WattTime (API v3). Unlike greensched, which
// is pure, this package does network and disk I/O.
//
// Every provider answers two questions for a zone: the intensity now
// (Current) and a forecast over a time range (Forecast), in gCO2eq/kWh.
// New wraps each one in the same guard:
//
//   - Timeouts: every HTTP request is bounded by Config.Timeout on the
//     system clock (a bound on real network time, not scheduling logic).
//   - Caching: answers are kept per zone for Config.CacheTTL on the
//     injected clock. A provider's whole forecast (Electricity Maps,
//     WattTime, a trace) answers every range; the Carbon Aware SDK's,
//     scoped to the range asked, answers the ranges within it.
//   - Outages: a fetch that fails (timeout, network error, HTTP 401, 403,
//     429, 5xx or any other non-success status, garbage or truncated JSON,
//     no data, values that are not finite and non-negative) is counted in
//     edgefleet_carbon_provider_failures_total{provider,reason} and logged at
//     warning level; the answer is then the last good forecast (Current: its
//     point at the time asked; else the last good current reading), marked
//     Stale with the Reason, and counted in
//     edgefleet_carbon_provider_fallbacks_total{provider,reason}. With no
//     last good data the call returns an error (ErrNoData wrapping the
//     fetch error): never a crash, never a silent zero.
//
// Units. Carbon Aware SDK and Electricity Maps report gCO2eq/kWh. WattTime
// reports its marginal operating emissions rate (co2_moer) in lbs/MWh;
// this package converts it with 1 lb/MWh = 0.45359237 g/kWh (453.59237 g
// per lb, 1000 kWh per MWh). WattTime's signal is marginal, Electricity
// Maps' is the grid average (life-cycle): compare zones only within one
// provider.
package provider

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/greensched"
)

// Provider kinds (Config.Kind) and names (Provider.Name, metric label).
const (
	KindTrace           = "trace"
	KindCarbonAware     = "carbonaware"
	KindElectricityMaps = "electricitymaps"
	KindWattTime        = "watttime"
)

// Provider is a source of carbon intensity per zone, in gCO2eq/kWh. It is
// safe for concurrent use.
type Provider interface {
	// Name is the provider's kind (KindTrace, ...).
	Name() string
	// Current returns the latest intensity of zone at or before now.
	Current(ctx context.Context, zone string) (Reading, error)
	// Forecast returns the intensity of zone over [from, to): the points
	// the provider has in that range, in time order.
	Forecast(ctx context.Context, zone string, from, to time.Time) (Forecast, error)
}

// Reading is one intensity value of a zone.
type Reading struct {
	Zone   string           `json:"zone"`
	Source string           `json:"source"`
	Point  greensched.Point `json:"point"`
	// Stale is true when the provider failed and Point comes from the
	// last good data; Reason is then the failure reason (Reason* constants).
	Stale  bool   `json:"stale,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Forecast is a provider's forecast of a zone over a range.
type Forecast struct {
	Zone   string `json:"zone"`
	Source string `json:"source"`
	// Series holds the points in [from, to), Zone set, Step the
	// provider's spacing (the most frequent one).
	Series greensched.Series `json:"series"`
	// Optimal is the provider's own choice of best window starts, when it
	// gives one (Carbon Aware SDK's optimalDataPoints); informational.
	Optimal []greensched.Point `json:"optimal,omitempty"`
	// FetchedAt is when the data was fetched (injected clock).
	FetchedAt time.Time `json:"fetched_at"`
	// Stale and Reason as in Reading.
	Stale  bool   `json:"stale,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Failure reasons: the reason label of the metrics and FetchError.Reason.
const (
	ReasonTimeout      = "timeout"       // the request exceeded Config.Timeout
	ReasonNetwork      = "network"       // connection refused, reset, DNS, ...
	ReasonUnauthorized = "unauthorized"  // HTTP 401 (after one token refresh for WattTime)
	ReasonForbidden    = "forbidden"     // HTTP 403
	ReasonRateLimited  = "rate_limited"  // HTTP 429
	ReasonServerError  = "server_error"  // HTTP 5xx
	ReasonHTTPStatus   = "http_status"   // any other non-2xx status
	ReasonBadJSON      = "bad_json"      // a body that is not the documented JSON (garbage, truncated)
	ReasonBadData      = "bad_data"      // well-formed JSON with impossible values (NaN, negative, bad time, unknown unit)
	ReasonEmpty        = "empty"         // no data point in the answer
	ReasonOutsideTrace = "outside_trace" // the time asked is outside the trace
	ReasonUnknownZone  = "unknown_zone"  // a trace provider has no trace for the zone
)

// ErrNoData is returned (wrapped) when a provider failed and there is no
// last good data to fall back to.
var ErrNoData = errors.New("no last good value to fall back to")

// FetchError is a failed fetch from a provider.
type FetchError struct {
	Provider string // provider kind
	Zone     string
	Op       string // "current", "forecast" or "login"
	Reason   string // Reason* constant
	Status   int    // HTTP status, 0 when none
	Err      error
}

func (e *FetchError) Error() string {
	s := fmt.Sprintf("provider: %s %s of zone %q: %s", e.Provider, e.Op, e.Zone, e.Reason)
	if e.Status != 0 {
		s += fmt.Sprintf(" (HTTP %d)", e.Status)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *FetchError) Unwrap() error { return e.Err }

// reasonOf returns the failure reason of err, ReasonNetwork when it is not
// a FetchError.
func reasonOf(err error) string {
	var fe *FetchError
	if errors.As(err, &fe) {
		return fe.Reason
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return ReasonTimeout
	}
	return ReasonNetwork
}

// source is one provider's fetching, without caching or fallback.
type source interface {
	name() string
	current(ctx context.Context, zone string, now time.Time) (greensched.Point, error)
	// forecast returns the provider's forecast (Step set) and its optimal
	// points, if any. A source whose answer depends on the range (ranged)
	// returns what it has for [from, to); the others their whole forecast,
	// which the guard keeps and cuts to each range asked.
	forecast(ctx context.Context, zone string, now, from, to time.Time) (s greensched.Series, optimal []greensched.Point, err error)
	// ranged reports whether forecast's answer depends on [from, to).
	ranged() bool
}

// Forecaster adapts p to greensched.Forecaster for zone, each call bounded
// by ctx. An online provider only has its latest forecast: issued is
// ignored, and a stale (fallback) forecast is returned like a fresh one.
func Forecaster(ctx context.Context, p Provider, zone string) greensched.Forecaster {
	return forecaster{ctx: ctx, p: p, zone: zone}
}

type forecaster struct {
	ctx  context.Context
	p    Provider
	zone string
}

func (f forecaster) Forecast(_, from, to time.Time) (greensched.Series, error) {
	fc, err := f.p.Forecast(f.ctx, f.zone, from, to)
	if err != nil {
		return greensched.Series{}, err
	}
	return fc.Series, nil
}
