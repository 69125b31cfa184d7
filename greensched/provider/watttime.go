package provider

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/greensched"
)

// LbsPerMWhToGPerKWh converts WattTime's MOER unit (lbs CO2 per MWh) to
// gCO2/kWh: 453.59237 g per lb, 1000 kWh per MWh.
const LbsPerMWhToGPerKWh = 0.45359237

// watttimeHorizonHours is the forecast horizon asked of WattTime, its
// longest (horizon_hours 0 to 72), so that one answer serves every range.
const watttimeHorizonHours = 72

// watttimeTokenLife is how long a WattTime login token is used before a
// new login; WattTime documents 30 minutes, a margin is kept.
const watttimeTokenLife = 25 * time.Minute

// wattTime reads the WattTime API v3 (base https://api.watttime.org):
//
//	GET /login (HTTP basic auth)                     {"token": "..."}
//	GET /v3/historical?region=R&start=T&end=T2&signal_type=co2_moer
//	GET /v3/forecast?region=R&signal_type=co2_moer&horizon_hours=H
//	  both {"data":[{"point_time","value"}],
//	        "meta":{"region","signal_type","units","data_point_period_seconds",
//	                "generated_at","model":{"date"},"warnings":[...]}}
//
// Data calls carry "Authorization: Bearer TOKEN". The token is fetched on
// first use, renewed after watttimeTokenLife, and renewed once more when a
// data call answers 401. Values (lbs/MWh) are converted to gCO2eq/kWh.
type wattTime struct {
	http     httpGetter
	base     string
	username string
	password string
	clk      clock.Clock

	mu      sync.Mutex
	token   string
	tokenAt time.Time
}

func (w *wattTime) name() string { return KindWattTime }

func (w *wattTime) current(ctx context.Context, zone string, now time.Time) (greensched.Point, error) {
	q := url.Values{"region": {zone}, "signal_type": {"co2_moer"},
		"start": {rfc3339(now.Add(-time.Hour))}, "end": {rfc3339(now)}}
	body, err := w.authGet(ctx, joinURL(w.base, "v3/historical", q))
	if err != nil {
		return greensched.Point{}, err
	}
	s, err := decodeWattTimeData(body)
	if err != nil {
		return greensched.Point{}, err
	}
	return latestOf(s.Points, now)
}

func (w *wattTime) forecast(ctx context.Context, zone string, now, from, to time.Time) (greensched.Series, []greensched.Point, error) {
	q := url.Values{"region": {zone}, "signal_type": {"co2_moer"}, "horizon_hours": {strconv.Itoa(watttimeHorizonHours)}}
	body, err := w.authGet(ctx, joinURL(w.base, "v3/forecast", q))
	if err != nil {
		return greensched.Series{}, nil, err
	}
	s, err := decodeWattTimeData(body)
	return s, nil, err
}

// ranged: the forecast is always asked for the longest horizon.
func (w *wattTime) ranged() bool { return false }

// authGet GETs rawURL with the bearer token, logging in first when there
// is no fresh token and once more when the answer is 401.
func (w *wattTime) authGet(ctx context.Context, rawURL string) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		tok, err := w.bearer(ctx, attempt > 0)
		if err != nil {
			return nil, err
		}
		_, body, err := w.http.get(ctx, rawURL, http.Header{"Authorization": {"Bearer " + tok}})
		var fe *FetchError
		if attempt == 0 && errors.As(err, &fe) && fe.Status == http.StatusUnauthorized {
			continue // token expired or revoked: log in again, once
		}
		if err != nil {
			return nil, err
		}
		return body, nil
	}
}

// bearer returns a token, logging in when there is none, it is old, or
// renew is set.
func (w *wattTime) bearer(ctx context.Context, renew bool) (string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.clk.Now()
	if w.token != "" && !renew && now.Sub(w.tokenAt) < watttimeTokenLife {
		return w.token, nil
	}
	basic := base64.StdEncoding.EncodeToString([]byte(w.username + ":" + w.password))
	var tok string
	_, body, err := w.http.get(ctx, joinURL(w.base, "login", nil), http.Header{"Authorization": {"Basic " + basic}})
	if err == nil {
		tok, err = decodeWattTimeLogin(body)
	}
	if err != nil {
		return "", loginErr(err)
	}
	w.token, w.tokenAt = tok, now
	return tok, nil
}

type wattTimeBody struct {
	Data []struct {
		PointTime string   `json:"point_time"`
		Value     *float64 `json:"value"`
	} `json:"data"`
	Meta struct {
		Region        string `json:"region"`
		SignalType    string `json:"signal_type"`
		Units         string `json:"units"`
		PeriodSeconds int    `json:"data_point_period_seconds"`
	} `json:"meta"`
}

// decodeWattTimeData decodes a /v3/historical or /v3/forecast body and
// converts its values to gCO2eq/kWh. The signal must be co2_moer (or
// unnamed) and the unit lbs_co2_per_mwh (or unnamed, WattTime's
// documented unit of co2_moer). Step is meta.data_point_period_seconds.
func decodeWattTimeData(body []byte) (greensched.Series, error) {
	var in wattTimeBody
	var none greensched.Series
	if err := strictJSON(body, &in); err != nil {
		return none, badJSON("watttime data: %v", err)
	}
	if s := in.Meta.SignalType; s != "" && s != "co2_moer" {
		return none, badData("meta.signal_type %q, want co2_moer", s)
	}
	if u := in.Meta.Units; u != "" && u != "lbs_co2_per_mwh" {
		return none, badData("meta.units %q, want lbs_co2_per_mwh", u)
	}
	if p := in.Meta.PeriodSeconds; p < 0 || p > 86400 {
		return none, badData("meta.data_point_period_seconds %d out of range", p)
	}
	if len(in.Data) == 0 {
		return none, errEmpty("empty data array")
	}
	pts, err := toPoints("data", "point_time", "value", len(in.Data),
		func(i int) (string, *float64) { return in.Data[i].PointTime, in.Data[i].Value }, false, LbsPerMWhToGPerKWh)
	if err != nil {
		return none, err
	}
	return greensched.Series{Step: time.Duration(in.Meta.PeriodSeconds) * time.Second, Points: pts}, nil
}

// loginErr marks a failure of /login (Op "login").
func loginErr(err error) error {
	var fe *FetchError
	if errors.As(err, &fe) {
		fe.Op = "login"
	}
	return err
}

// decodeWattTimeLogin returns the token of a /login body.
func decodeWattTimeLogin(body []byte) (string, error) {
	var in struct {
		Token string `json:"token"`
	}
	if err := strictJSON(body, &in); err != nil {
		return "", badJSON("watttime login: %v", err)
	}
	if in.Token == "" {
		return "", badData("watttime login: no token in the answer")
	}
	return in.Token, nil
}
