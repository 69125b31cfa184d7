package controlplane

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/greensched"
	"github.com/edgefleet/edgefleet/greensched/provider"
)

// CarbonForecaster gives a zone's carbon-intensity forecast over [from,
// to) (gCO2eq/kWh).
type CarbonForecaster interface {
	Forecast(ctx context.Context, zone string, from, to time.Time) (greensched.Series, error)
}

// ProviderForecasts answers each zone from its carbon provider
// (greensched/provider; for a simulated fleet, provider.NewTraceZones over
// greensched.TraceZones for every zone). A zone without a provider is an
// error, and the round driver then uses its agents' reported intensity.
func ProviderForecasts(byZone map[string]provider.Provider) CarbonForecaster {
	return providerForecasts(byZone)
}

type providerForecasts map[string]provider.Provider

func (f providerForecasts) Forecast(ctx context.Context, zone string, from, to time.Time) (greensched.Series, error) {
	p, ok := f[zone]
	if !ok {
		return greensched.Series{}, fmt.Errorf("controlplane: no carbon provider for zone %q", zone)
	}
	fc, err := p.Forecast(ctx, zone, from, to)
	return fc.Series, err
}

// carbonForecastTimeout bounds the forecast fetches of one tick (network
// time).
const carbonForecastTimeout = 5 * time.Second

// flCarbon is the carbon hook of the round driver for a job with a carbon
// option, between rounds: it returns the available agents that are
// eligible by battery, in greensched.PlanRound's order (participation
// credit, kept by the coordinator, against how much cleaner than usual
// their zone is; the coordinator takes the first), or none while PlanRound
// says a greener start is coming within the job's window. Rounds are
// planned over the job's observed round length
// (coord.Coordinator.RoundDuration). f.mu is held.
func (s *Server) flCarbon(ctx context.Context, j *flJob, agents []cpapi.Agent, avail []string, now time.Time) []string {
	if j.c.RoundOpen() {
		return avail
	}
	// the start of the round's window, stored with the job: a restart
	// does not give a waiting round a new window
	ready := j.c.ReadySince()
	if ready.IsZero() {
		ready = j.rec.Created
	}
	byID := make(map[string]cpapi.Agent, len(agents))
	for _, a := range agents {
		byID[a.ID] = a
	}
	clients := make([]greensched.RoundClient, 0, len(avail))
	zones := map[string]bool{}
	for _, id := range avail {
		clients = append(clients, roundClient(byID[id]))
		if z := clients[len(clients)-1].Zone; z != "" {
			zones[z] = true
		}
	}
	dur := j.c.RoundDuration()
	req := greensched.RoundRequest{
		Now: now, Ready: ready, Window: time.Duration(j.spec.Carbon.Window), Deadline: j.spec.Deadline,
		Remaining: j.c.Remaining(), Duration: dur, Clients: clients,
		Select: max(1, j.c.ClientCount(len(clients))), MinBattery: j.spec.Carbon.MinBattery,
		Forecasts: map[string]greensched.Series{},
		Credit:    j.c.Credit(), Seed: j.spec.Seed, Round: j.c.NextRound(),
	}
	req.Slack = j.c.SlackRounds(len(clients))
	// the forecasts cover every candidate start and the remaining rounds
	// after it (PlanRound looks up to MaxRoundHorizon ahead), or up to the job's
	// deadline
	horizon := min(time.Duration(max(req.Remaining, 1))*dur, greensched.MaxRoundHorizon)
	until := now.Add(req.Window + horizon + time.Hour)
	if !req.Deadline.IsZero() {
		until = req.Deadline.Add(time.Hour)
	}
	if fc := s.cfg.FL.Carbon; fc != nil {
		fctx, cancel := context.WithTimeout(ctx, carbonForecastTimeout)
		for z := range zones {
			f, err := fc.Forecast(fctx, z, now.Add(-time.Hour), until)
			if err != nil {
				s.log.Warn("fl carbon: no forecast for a zone; using the intensity its agents report", "job", j.rec.ID, "zone", z, "err", err)
				continue
			}
			req.Forecasts[z] = f
			s.warnShortForecast(j, z, f)
		}
		cancel()
	}
	d, err := greensched.PlanRound(req)
	if err != nil {
		s.log.Warn("fl carbon: planning the round; opening it as ready", "job", j.rec.ID, "err", err)
		return avail
	}
	if !d.Open {
		s.log.Debug("fl carbon: round waits for a greener start", "job", j.rec.ID, "start", d.Start, "latest", d.Latest,
			"intensity", d.Intensity, "now", d.AtNow)
		return nil
	}
	if len(d.Excluded) > 0 {
		s.log.Info("fl carbon: clients left out", "job", j.rec.ID, "excluded", d.Excluded)
	}
	if !math.IsNaN(d.Intensity) {
		s.log.Info("fl carbon: round opens", "job", j.rec.ID, "intensity", d.Intensity, "expected", d.Expected, "round_length", dur, "waited", now.Sub(ready))
	}
	return d.Clients
}

// warnShortForecast says once per job and zone that the zone's forecast
// ends before the job's deadline (a provider's forecast often reaches a
// day, a deadline can be further): the rounds after its end are priced by
// the forecast a whole number of days earlier, or by the intensity the
// zone's agents report when it covers less than a day
// (greensched.PlanRound). The job's deadline is kept all the same.
func (s *Server) warnShortForecast(j *flJob, zone string, f greensched.Series) {
	if j.spec.Deadline.IsZero() || j.shortForecast[zone] {
		return
	}
	end := time.Time{}
	if n := len(f.Points); n > 0 {
		end = f.Points[n-1].Time.Add(f.Step)
	}
	if !end.Before(j.spec.Deadline) {
		return
	}
	if j.shortForecast == nil {
		j.shortForecast = map[string]bool{}
	}
	j.shortForecast[zone] = true
	s.log.Warn("fl carbon: the zone's forecast ends before the job's deadline; later rounds are priced by the forecast a day earlier, or by the intensity its agents report",
		"job", j.rec.ID, "zone", zone, "forecast_end", end, "deadline", j.spec.Deadline)
}

// roundClient is what the registry knows of an agent's energy.
func roundClient(a cpapi.Agent) greensched.RoundClient {
	c := greensched.RoundClient{ID: a.ID, Intensity: math.NaN()}
	if a.Resources == nil || a.Resources.Energy == nil {
		return c
	}
	e := a.Resources.Energy
	c.Zone = e.Zone
	if e.Intensity != nil {
		c.Intensity = *e.Intensity
	}
	if b := e.Battery; b != nil {
		c.Battery = &greensched.Battery{Present: b.Present, Level: b.Level, Charging: b.Charging}
	}
	return c
}
