package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/edgefleet/edgefleet/greensched"
)

// carbonAware reads the Carbon Aware SDK Web API (Green Software
// Foundation), as documented in casdk-docs/docs/tutorial-basics/
// carbon-aware-webapi.md and the WebApi's EmissionsDataDTO and
// EmissionsForecastDTO:
//
//	GET /emissions/bylocation?location=L&time=T&toTime=T2
//	  200 [{"location","time","rating","duration"}]  (rating in g/kWh), 204 when none
//	GET /emissions/forecasts/current?location=L&dataStartAt=T&dataEndAt=T2[&windowSize=M]
//	  200 [{"generatedAt","requestedAt","location","dataStartAt","dataEndAt","windowSize",
//	        "optimalDataPoints":[{"location","timestamp","duration","value"}],
//	        "forecastData":[{"location","timestamp","duration","value"}]}]
//
// Zones are the SDK's location names (e.g. "eastus"). Current asks for
// the last hour of observed data and takes its latest point.
type carbonAware struct {
	http       httpGetter
	base       string
	windowSize time.Duration // 0: the SDK's default (one data point)
}

func (c *carbonAware) name() string { return KindCarbonAware }

func (c *carbonAware) current(ctx context.Context, zone string, now time.Time) (greensched.Point, error) {
	q := url.Values{"location": {zone}, "time": {rfc3339(now.Add(-time.Hour))}, "toTime": {rfc3339(now)}}
	status, body, err := c.http.get(ctx, joinURL(c.base, "emissions/bylocation", q), nil)
	if err != nil {
		return greensched.Point{}, err
	}
	if status == http.StatusNoContent {
		return greensched.Point{}, errEmpty("204 No Content: no emissions data")
	}
	pts, err := decodeCarbonAwareEmissions(body)
	if err != nil {
		return greensched.Point{}, err
	}
	return latestOf(pts, now)
}

func (c *carbonAware) forecast(ctx context.Context, zone string, now, from, to time.Time) (greensched.Series, []greensched.Point, error) {
	q := url.Values{"location": {zone}, "dataStartAt": {rfc3339(from)}, "dataEndAt": {rfc3339(to)}}
	if c.windowSize > 0 {
		q.Set("windowSize", strconv.Itoa(int(c.windowSize/time.Minute)))
	}
	_, body, err := c.http.get(ctx, joinURL(c.base, "emissions/forecasts/current", q), nil)
	if err != nil {
		return greensched.Series{}, nil, err
	}
	s, opt, err := decodeCarbonAwareForecast(body)
	if err != nil {
		return greensched.Series{}, nil, err
	}
	return s, opt, nil
}

// ranged: the SDK scopes its forecast (and its optimal points) to
// dataStartAt..dataEndAt.
func (c *carbonAware) ranged() bool { return true }

// carbonAwareEmissionsData is an element of /emissions/bylocation.
type carbonAwareEmissionsData struct {
	Location string   `json:"location"`
	Time     string   `json:"time"`
	Rating   *float64 `json:"rating"`
}

// carbonAwareDataPoint is an element of forecastData and optimalDataPoints.
type carbonAwareDataPoint struct {
	Location  string   `json:"location"`
	Timestamp string   `json:"timestamp"`
	Duration  int      `json:"duration"`
	Value     *float64 `json:"value"`
}

type carbonAwareForecast struct {
	Location          string                 `json:"location"`
	ForecastData      []carbonAwareDataPoint `json:"forecastData"`
	OptimalDataPoints []carbonAwareDataPoint `json:"optimalDataPoints"`
	// OptimalDataPoint is the single point of older SDK versions.
	OptimalDataPoint *carbonAwareDataPoint `json:"optimalDataPoint"`
}

// decodeCarbonAwareEmissions decodes the body of /emissions/bylocation.
func decodeCarbonAwareEmissions(body []byte) ([]greensched.Point, error) {
	var in []carbonAwareEmissionsData
	if err := strictJSON(body, &in); err != nil {
		return nil, badJSON("carbon aware emissions: %v", err)
	}
	if len(in) == 0 {
		return nil, errEmpty("empty emissions array")
	}
	return toPoints("emissions", "time", "rating", len(in),
		func(i int) (string, *float64) { return in[i].Time, in[i].Rating }, false, 1)
}

// decodeCarbonAwareForecast decodes the body of /emissions/forecasts/current
// for one location: its forecastData (Step: the points' duration) and
// optimal points.
func decodeCarbonAwareForecast(body []byte) (s greensched.Series, optimal []greensched.Point, err error) {
	var in []carbonAwareForecast
	if err := strictJSON(body, &in); err != nil {
		return s, nil, badJSON("carbon aware forecast: %v", err)
	}
	if len(in) == 0 {
		return s, nil, errEmpty("empty forecast array")
	}
	if len(in) > 1 {
		return s, nil, badData("%d forecasts for one location", len(in))
	}
	f := in[0]
	if len(f.ForecastData) == 0 {
		return s, nil, errEmpty("empty forecastData")
	}
	if s.Points, err = carbonAwarePoints("forecastData", f.ForecastData); err != nil {
		return greensched.Series{}, nil, err
	}
	if d := f.ForecastData[0].Duration; d > 0 && d <= 24*60 {
		s.Step = time.Duration(d) * time.Minute
	}
	opt := f.OptimalDataPoints
	if len(opt) == 0 && f.OptimalDataPoint != nil {
		opt = []carbonAwareDataPoint{*f.OptimalDataPoint}
	}
	if optimal, err = carbonAwarePoints("optimalDataPoints", opt); err != nil {
		return greensched.Series{}, nil, err
	}
	return s, optimal, nil
}

func carbonAwarePoints(name string, in []carbonAwareDataPoint) ([]greensched.Point, error) {
	return toPoints(name, "timestamp", "value", len(in),
		func(i int) (string, *float64) { return in[i].Timestamp, in[i].Value }, false, 1)
}

// strictJSON decodes exactly one JSON value from body into v.
func strictJSON(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if err := dec.Decode(new(json.RawMessage)); err != io.EOF {
		return fmt.Errorf("data after the JSON value")
	}
	return nil
}
