package provider

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/edgefleet/edgefleet/greensched"
)

// electricityMaps reads the Electricity Maps API v3 (base
// https://api.electricitymap.org/v3), authenticated by the auth-token
// header:
//
//	GET carbon-intensity/history?zone=Z    the last 24 hours, hourly
//	  {"zone","history":[{"zone","carbonIntensity","datetime","updatedAt","createdAt",
//	                       "emissionFactorType","isEstimated","estimationMethod"}]}
//	GET carbon-intensity/forecast?zone=Z
//	  {"zone","forecast":[{"carbonIntensity","datetime"}],"updatedAt"}
//
// carbonIntensity is in gCO2eq/kWh and may be null in the history (no
// value for that hour): such points are skipped, never read as zero.
// electricityMapsStep is the spacing of Electricity Maps' history and
// forecast points (hourly by default).
const electricityMapsStep = time.Hour

type electricityMaps struct {
	http  httpGetter
	base  string
	token string
}

func (e *electricityMaps) name() string { return KindElectricityMaps }

func (e *electricityMaps) header() http.Header {
	return http.Header{"Auth-Token": {e.token}}
}

func (e *electricityMaps) current(ctx context.Context, zone string, now time.Time) (greensched.Point, error) {
	_, body, err := e.http.get(ctx, joinURL(e.base, "carbon-intensity/history", url.Values{"zone": {zone}}), e.header())
	if err != nil {
		return greensched.Point{}, err
	}
	pts, err := decodeElectricityMaps(body, "history")
	if err != nil {
		return greensched.Point{}, err
	}
	return latestOf(pts, now)
}

func (e *electricityMaps) forecast(ctx context.Context, zone string, now, from, to time.Time) (greensched.Series, []greensched.Point, error) {
	_, body, err := e.http.get(ctx, joinURL(e.base, "carbon-intensity/forecast", url.Values{"zone": {zone}}), e.header())
	if err != nil {
		return greensched.Series{}, nil, err
	}
	pts, err := decodeElectricityMaps(body, "forecast")
	if err != nil {
		return greensched.Series{}, nil, err
	}
	return greensched.Series{Step: electricityMapsStep, Points: pts}, nil, nil
}

// ranged: the forecast endpoint takes no range.
func (e *electricityMaps) ranged() bool { return false }

type electricityMapsPoint struct {
	CarbonIntensity *float64 `json:"carbonIntensity"`
	Datetime        string   `json:"datetime"`
}

type electricityMapsBody struct {
	Zone     string                 `json:"zone"`
	History  []electricityMapsPoint `json:"history"`
	Forecast []electricityMapsPoint `json:"forecast"`
}

// decodeElectricityMaps decodes a history or forecast body (list names the
// array: "history" or "forecast").
func decodeElectricityMaps(body []byte, list string) ([]greensched.Point, error) {
	var in electricityMapsBody
	if err := strictJSON(body, &in); err != nil {
		return nil, badJSON("electricity maps %s: %v", list, err)
	}
	arr := in.History
	if list == "forecast" {
		arr = in.Forecast
	}
	// A null carbonIntensity (no value for that hour) is skipped.
	pts, err := toPoints(list, "datetime", "carbonIntensity", len(arr),
		func(i int) (string, *float64) { return arr[i].Datetime, arr[i].CarbonIntensity }, true, 1)
	if err != nil {
		return nil, err
	}
	if len(pts) == 0 {
		return nil, errEmpty("no " + list + " point with a carbonIntensity")
	}
	return pts, nil
}
