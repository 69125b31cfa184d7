package provider

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/greensched"
)

// spec describes one online provider for the shared tests.
type spec struct {
	kind   string
	zone   string
	routes map[string]string
	empty  map[string]string
	config func(t *testing.T, base string) Config
	// the fixture's current value and forecast over [12:00, 12:30), in g/kWh
	current  greensched.Point
	forecast []greensched.Point
	from, to time.Time
}

func specs() []spec {
	wt := func(v float64) float64 { return v * LbsPerMWhToGPerKWh }
	return []spec{
		{
			kind: KindCarbonAware, zone: "eastus",
			routes: map[string]string{
				"/api/emissions/bylocation":        "carbonaware/bylocation.json",
				"/api/emissions/forecasts/current": "carbonaware/forecast.json",
			},
			empty: map[string]string{
				"/api/emissions/bylocation":        "204",
				"/api/emissions/forecasts/current": `[{"location":"eastus","forecastData":[],"optimalDataPoints":[]}]`,
			},
			config: func(t *testing.T, base string) Config {
				return Config{Kind: KindCarbonAware, Zone: "eastus", BaseURL: base + "/api", Timeout: 300 * time.Millisecond, WindowSize: 10 * time.Minute}
			},
			current: greensched.Point{Time: at("12:00"), Intensity: 385.75},
			forecast: []greensched.Point{{Time: at("12:00"), Intensity: 380.2}, {Time: at("12:05"), Intensity: 371.9},
				{Time: at("12:10"), Intensity: 352.4}, {Time: at("12:15"), Intensity: 340.5}, {Time: at("12:20"), Intensity: 361.0}},
			from: at("12:00"), to: at("12:30"),
		},
		{
			kind: KindElectricityMaps, zone: "DE",
			routes: map[string]string{
				"/v3/carbon-intensity/history":  "electricitymaps/history.json",
				"/v3/carbon-intensity/forecast": "electricitymaps/forecast.json",
			},
			empty: map[string]string{
				"/v3/carbon-intensity/history":  `{"zone":"DE","history":[]}`,
				"/v3/carbon-intensity/forecast": `{"zone":"DE","forecast":[],"updatedAt":"2024-06-01T11:57:03.000Z"}`,
			},
			config: func(t *testing.T, base string) Config {
				return Config{Kind: KindElectricityMaps, Zone: "DE", BaseURL: base + "/v3", Timeout: 300 * time.Millisecond,
					TokenFile: secretFile(t, "em.token", "em-secret-token\n")}
			},
			current: greensched.Point{Time: at("12:00"), Intensity: 287},
			forecast: []greensched.Point{{Time: at("12:00"), Intensity: 287}, {Time: at("13:00"), Intensity: 265},
				{Time: at("14:00"), Intensity: 241}, {Time: at("15:00"), Intensity: 252}},
			from: at("12:00"), to: at("16:00"),
		},
		{
			kind: KindWattTime, zone: "CAISO_NORTH",
			routes: map[string]string{
				"/login":         "watttime/login.json",
				"/v3/historical": "watttime/historical.json",
				"/v3/forecast":   "watttime/forecast.json",
			},
			empty: map[string]string{
				"/v3/historical": `{"data":[],"meta":{"region":"CAISO_NORTH","signal_type":"co2_moer","units":"lbs_co2_per_mwh","warnings":[]}}`,
				"/v3/forecast":   `{"data":[],"meta":{"region":"CAISO_NORTH","signal_type":"co2_moer","units":"lbs_co2_per_mwh","warnings":[]}}`,
			},
			config: func(t *testing.T, base string) Config {
				return Config{Kind: KindWattTime, Zone: "CAISO_NORTH", BaseURL: base, Timeout: 300 * time.Millisecond,
					UsernameFile: secretFile(t, "wt.user", "fleet"), PasswordFile: secretFile(t, "wt.pass", "s3cret pass\n")}
			},
			current: greensched.Point{Time: at("12:00"), Intensity: wt(960)},
			forecast: []greensched.Point{{Time: at("12:00"), Intensity: wt(955)}, {Time: at("12:05"), Intensity: wt(930)},
				{Time: at("12:10"), Intensity: wt(880)}, {Time: at("12:15"), Intensity: wt(870)}},
			from: at("12:00"), to: at("12:20"),
		},
	}
}

func samePoints(t *testing.T, what string, got, want []greensched.Point) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d points, want %d: %v", what, len(got), len(want), got)
	}
	for i := range want {
		if !got[i].Time.Equal(want[i].Time) || math.Abs(got[i].Intensity-want[i].Intensity) > 1e-9 {
			t.Fatalf("%s: point %d = %v %v, want %v %v", what, i, got[i].Time, got[i].Intensity, want[i].Time, want[i].Intensity)
		}
	}
}

// TestProviderFixtures: each provider decodes its documented JSON into the
// right values (WattTime converted from lbs/MWh).
func TestProviderFixtures(t *testing.T) {
	for _, s := range specs() {
		t.Run(s.kind, func(t *testing.T) {
			srv := newFakeServer(t, s.routes, s.empty)
			e := newEnv(t, s.config(t, srv.srv.URL))
			r, err := e.p.Current(context.Background(), s.zone)
			if err != nil {
				t.Fatal(err)
			}
			if r.Stale || r.Zone != s.zone || r.Source != s.kind {
				t.Fatalf("reading %+v", r)
			}
			samePoints(t, "current", []greensched.Point{r.Point}, []greensched.Point{s.current})
			f, err := e.p.Forecast(context.Background(), s.zone, s.from, s.to)
			if err != nil {
				t.Fatal(err)
			}
			if f.Stale || f.Series.Zone != s.zone || !f.FetchedAt.Equal(t0) {
				t.Fatalf("forecast %+v", f)
			}
			samePoints(t, "forecast", f.Series.Points, s.forecast)
			if err := f.Series.Validate(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestCarbonAwareRequests: the documented query parameters.
func TestCarbonAwareRequests(t *testing.T) {
	s := specs()[0]
	srv := newFakeServer(t, s.routes, s.empty)
	e := newEnv(t, s.config(t, srv.srv.URL))
	if _, err := e.p.Current(context.Background(), "eastus"); err != nil {
		t.Fatal(err)
	}
	q := query(srv.last("/api/emissions/bylocation"))
	if q.Get("location") != "eastus" || q.Get("time") != "2024-06-01T11:02:00Z" || q.Get("toTime") != "2024-06-01T12:02:00Z" {
		t.Fatalf("bylocation query %v", q)
	}
	f, err := e.p.Forecast(context.Background(), "eastus", at("12:00"), at("12:30"))
	if err != nil {
		t.Fatal(err)
	}
	q = query(srv.last("/api/emissions/forecasts/current"))
	if q.Get("location") != "eastus" || q.Get("dataStartAt") != "2024-06-01T12:00:00Z" ||
		q.Get("dataEndAt") != "2024-06-01T12:30:00Z" || q.Get("windowSize") != "10" {
		t.Fatalf("forecast query %v", q)
	}
	if f.Series.Step != 10*time.Minute {
		t.Fatalf("step %v (the points' duration)", f.Series.Step)
	}
	samePoints(t, "optimal", f.Optimal, []greensched.Point{{Time: at("12:15"), Intensity: 340.5}})
}

// TestElectricityMapsRequests: the auth-token header and zone parameter;
// a null carbonIntensity is skipped, not read as 0.
func TestElectricityMapsRequests(t *testing.T) {
	s := specs()[1]
	srv := newFakeServer(t, s.routes, s.empty)
	e := newEnv(t, s.config(t, srv.srv.URL))
	if _, err := e.p.Current(context.Background(), "DE"); err != nil {
		t.Fatal(err)
	}
	r := srv.last("/v3/carbon-intensity/history")
	if r.Header.Get("auth-token") != "em-secret-token" || query(r).Get("zone") != "DE" {
		t.Fatalf("history request headers %v query %v", r.Header, r.URL.RawQuery)
	}
	body := readFixture(t, "electricitymaps/history.json")
	pts, err := decodeElectricityMaps(body, "history")
	if err != nil {
		t.Fatal(err)
	}
	samePoints(t, "history", pts, []greensched.Point{{Time: at("09:00"), Intensity: 312}, {Time: at("11:00"), Intensity: 298}, {Time: at("12:00"), Intensity: 287}})
	if _, err := e.p.Forecast(context.Background(), "DE", at("12:00"), at("16:00")); err != nil {
		t.Fatal(err)
	}
	r = srv.last("/v3/carbon-intensity/forecast")
	if r.Header.Get("auth-token") != "em-secret-token" || query(r).Get("zone") != "DE" {
		t.Fatalf("forecast request headers %v query %v", r.Header, r.URL.RawQuery)
	}
}

// TestWattTimeRequests: basic auth on /login, the bearer token on data
// calls, the documented parameters, and the unit conversion.
func TestWattTimeRequests(t *testing.T) {
	s := specs()[2]
	srv := newFakeServer(t, s.routes, s.empty)
	e := newEnv(t, s.config(t, srv.srv.URL))
	r0, err := e.p.Current(context.Background(), "CAISO_NORTH")
	if err != nil {
		t.Fatal(err)
	}
	login := srv.last("/login")
	if u, p, ok := login.BasicAuth(); !ok || u != "fleet" || p != "s3cret pass" {
		t.Fatalf("login basic auth %q %q %v", u, p, ok)
	}
	h := srv.last("/v3/historical")
	q := query(h)
	if h.Header.Get("Authorization") != "Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.fixture.token-1" ||
		q.Get("region") != "CAISO_NORTH" || q.Get("signal_type") != "co2_moer" ||
		q.Get("start") != "2024-06-01T11:02:00Z" || q.Get("end") != "2024-06-01T12:02:00Z" {
		t.Fatalf("historical request %v %v", h.Header, q)
	}
	// 960 lbs/MWh = 960 * 453.59237 g / 1000 kWh = 435.4486752 g/kWh
	if math.Abs(r0.Point.Intensity-435.4486752) > 1e-9 {
		t.Fatalf("intensity %v g/kWh, want 435.4486752", r0.Point.Intensity)
	}
	f, err := e.p.Forecast(context.Background(), "CAISO_NORTH", at("12:00"), at("15:00"))
	if err != nil {
		t.Fatal(err)
	}
	q = query(srv.last("/v3/forecast"))
	if q.Get("region") != "CAISO_NORTH" || q.Get("signal_type") != "co2_moer" || q.Get("horizon_hours") != "72" {
		t.Fatalf("forecast query %v", q)
	}
	if f.Series.Step != 5*time.Minute || len(f.Series.Points) != 6 {
		t.Fatalf("forecast step %v points %d", f.Series.Step, len(f.Series.Points))
	}
	if n := strings.Count(strings.Join(srv.paths(), " "), "/login"); n != 1 {
		t.Fatalf("%d logins for two calls, want 1 (token reused)", n)
	}
}

// TestWattTimeTokenRefresh: a 401 on a data call logs in again once and
// retries with the new token; an old token is renewed before use.
func TestWattTimeTokenRefresh(t *testing.T) {
	s := specs()[2]
	srv := newFakeServer(t, s.routes, s.empty)
	logins := 0
	srv.handle = func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.URL.Path == "/login":
			logins++
			w.Write([]byte(`{"token":"tok-` + string(rune('0'+logins)) + `"}`))
			return true
		case r.Header.Get("Authorization") == "Bearer tok-1" && logins == 1 && r.URL.Path == "/v3/forecast":
			http.Error(w, "token expired", http.StatusUnauthorized)
			return true
		}
		return false
	}
	cfg := s.config(t, srv.srv.URL)
	cfg.CacheTTL = -1
	e := newEnv(t, cfg)
	if _, err := e.p.Current(context.Background(), "CAISO_NORTH"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Forecast(context.Background(), "CAISO_NORTH", at("12:00"), at("12:30")); err != nil {
		t.Fatalf("forecast after 401 and re-login: %v", err)
	}
	if got := srv.last("/v3/forecast").Header.Get("Authorization"); got != "Bearer tok-2" || logins != 2 {
		t.Fatalf("retried with %q after %d logins", got, logins)
	}
	e.clk.Advance(26 * time.Minute)
	if _, err := e.p.Current(context.Background(), "CAISO_NORTH"); err != nil {
		t.Fatal(err)
	}
	if logins != 3 {
		t.Fatalf("%d logins after the token aged 26 minutes, want 3", logins)
	}
	if e.failures(ReasonUnauthorized) != 0 {
		t.Fatal("a refreshed 401 counted as a failure")
	}
}

// TestOutageFallback: for every provider and every kind of outage, the
// answer is the last good forecast, marked stale, with a warning and the
// failure and fallback counted; with no last good data, an error.
func TestOutageFallback(t *testing.T) {
	cases := []struct{ mode, reason string }{
		{modeTimeout, ReasonTimeout},
		{mode401, ReasonUnauthorized},
		{mode403, ReasonForbidden},
		{mode429, ReasonRateLimited},
		{mode500, ReasonServerError},
		{modeGarbage, ReasonBadJSON},
		{modeTruncated, ReasonBadJSON},
		{modeCut, ReasonBadJSON},
		{modeEmpty, ReasonEmpty},
	}
	for _, s := range specs() {
		for _, c := range cases {
			t.Run(s.kind+"/"+c.mode, func(t *testing.T) {
				srv := newFakeServer(t, s.routes, s.empty)
				e := newEnv(t, s.config(t, srv.srv.URL))
				ctx := context.Background()
				good, err := e.p.Forecast(ctx, s.zone, s.from, s.to)
				if err != nil {
					t.Fatal(err)
				}
				e.clk.Advance(DefaultCacheTTL + time.Minute) // past the cache: the next calls fetch
				srv.setMode(c.mode)

				f, err := e.p.Forecast(ctx, s.zone, s.from, s.to)
				if err != nil {
					t.Fatalf("forecast in outage: %v", err)
				}
				if !f.Stale || f.Reason != c.reason || !f.FetchedAt.Equal(good.FetchedAt) {
					t.Fatalf("forecast stale %v reason %q fetched %v, want stale, %q, %v", f.Stale, f.Reason, f.FetchedAt, c.reason, good.FetchedAt)
				}
				samePoints(t, "fallback forecast", f.Series.Points, good.Series.Points)

				r, err := e.p.Current(ctx, s.zone)
				if err != nil {
					t.Fatalf("current in outage: %v", err)
				}
				now := e.clk.Now()
				want, ok := inForce(good.Series, now)
				if !ok {
					t.Fatalf("fixture forecast does not cover %v", now)
				}
				if !r.Stale || r.Reason != c.reason || r.Point != want || r.Point.Intensity <= 0 {
					t.Fatalf("current %+v, want stale %q %+v", r, c.reason, want)
				}
				if got := e.failures(c.reason); got != 2 {
					t.Fatalf("failures{%s} = %v, want 2", c.reason, got)
				}
				if got := e.fallbacks(c.reason); got != 2 {
					t.Fatalf("fallbacks{%s} = %v, want 2", c.reason, got)
				}
				log := e.log.String()
				if !strings.Contains(log, "level=WARN") || !strings.Contains(log, "reason="+c.reason) {
					t.Fatalf("no warning with the reason in the log:\n%s", log)
				}

				// A provider that never had good data: a clear error.
				fresh := newEnv(t, s.config(t, srv.srv.URL))
				_, err = fresh.p.Forecast(ctx, s.zone, s.from, s.to)
				var fe *FetchError
				if !errors.Is(err, ErrNoData) || !errors.As(err, &fe) || fe.Reason != c.reason || fe.Provider != s.kind {
					t.Fatalf("forecast without last good data: %v", err)
				}
				if !strings.HasPrefix(err.Error(), "provider: "+s.kind) || !strings.Contains(err.Error(), s.zone) {
					t.Fatalf("error does not name provider and zone: %v", err)
				}
				if _, err := fresh.p.Current(ctx, s.zone); !errors.Is(err, ErrNoData) {
					t.Fatalf("current without last good data: %v", err)
				}
				if fresh.fallbacks(c.reason) != 0 || fresh.failures(c.reason) != 2 {
					t.Fatalf("fresh provider: fallbacks %v failures %v", fresh.fallbacks(c.reason), fresh.failures(c.reason))
				}
			})
		}
	}
}

// TestFallbackLastReading: with no forecast, a failed Current falls back
// to the last good reading; the fallback forecast keeps only the range
// asked, and a range it does not cover is an error.
func TestFallbackLastReading(t *testing.T) {
	s := specs()[1]
	srv := newFakeServer(t, s.routes, s.empty)
	e := newEnv(t, s.config(t, srv.srv.URL))
	ctx := context.Background()
	good, err := e.p.Current(ctx, "DE")
	if err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(time.Hour)
	srv.setMode(mode500)
	r, err := e.p.Current(ctx, "DE")
	if err != nil || !r.Stale || r.Point != good.Point {
		t.Fatalf("current %+v %v, want the last reading %+v", r, err, good.Point)
	}
	srv.setMode(modeOK)
	if _, err := e.p.Forecast(ctx, "DE", at("12:00"), at("17:00")); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(time.Hour)
	srv.setMode(mode500)
	f, err := e.p.Forecast(ctx, "DE", at("14:00"), at("15:30"))
	if err != nil || !f.Stale {
		t.Fatalf("forecast %+v %v", f, err)
	}
	samePoints(t, "sub-range", f.Series.Points, []greensched.Point{{Time: at("14:00"), Intensity: 241}, {Time: at("15:00"), Intensity: 252}})
	if _, err := e.p.Forecast(ctx, "DE", at("18:00"), at("20:00")); !errors.Is(err, ErrNoData) {
		t.Fatalf("range outside the last good forecast: %v", err)
	}
	// Past the forecast's end (16:00 + 1h), Current falls back to the last reading.
	e.clk.Set(at("17:30"))
	r, err = e.p.Current(ctx, "DE")
	if err != nil || r.Point != good.Point {
		t.Fatalf("current past the forecast %+v %v, want the last reading", r, err)
	}
}

// TestCache: answers are reused per zone for the TTL, a range beyond the
// cached one is fetched, and a negative TTL turns caching off.
func TestCache(t *testing.T) {
	s := specs()[1]
	srv := newFakeServer(t, s.routes, s.empty)
	e := newEnv(t, s.config(t, srv.srv.URL))
	ctx := context.Background()
	for range 3 {
		if _, err := e.p.Current(ctx, "DE"); err != nil {
			t.Fatal(err)
		}
		if _, err := e.p.Forecast(ctx, "DE", at("12:00"), at("16:00")); err != nil {
			t.Fatal(err)
		}
	}
	if f, err := e.p.Forecast(ctx, "DE", at("13:00"), at("14:00")); err != nil || len(f.Series.Points) != 1 {
		t.Fatalf("sub-range from cache: %+v %v", f, err)
	}
	if e.requests("current") != 1 || e.requests("forecast") != 1 {
		t.Fatalf("requests current %v forecast %v within the TTL, want 1 and 1", e.requests("current"), e.requests("forecast"))
	}
	// Electricity Maps' forecast takes no range: one answer serves all.
	if _, err := e.p.Forecast(ctx, "DE", at("12:00"), at("17:00")); err != nil {
		t.Fatal(err)
	}
	if e.requests("forecast") != 1 {
		t.Fatal("a whole forecast fetched again for a wider range")
	}
	// Zones are cached apart.
	if _, err := e.p.Current(ctx, "FR"); err != nil {
		t.Fatal(err)
	}
	if e.requests("current") != 2 {
		t.Fatal("zone FR served from DE's cache")
	}
	e.clk.Advance(DefaultCacheTTL)
	if _, err := e.p.Current(ctx, "DE"); err != nil {
		t.Fatal(err)
	}
	if e.requests("current") != 3 {
		t.Fatal("not fetched again after the TTL")
	}

	// The Carbon Aware SDK scopes its forecast to the range: a range
	// within the cached one is served, a wider one fetched.
	ca := specs()[0]
	casrv := newFakeServer(t, ca.routes, ca.empty)
	ce := newEnv(t, ca.config(t, casrv.srv.URL))
	for _, r := range [][2]string{{"12:00", "12:30"}, {"12:05", "12:20"}, {"12:00", "13:00"}} {
		if _, err := ce.p.Forecast(ctx, "eastus", at(r[0]), at(r[1])); err != nil {
			t.Fatal(err)
		}
	}
	if ce.requests("forecast") != 2 {
		t.Fatalf("carbon aware: %v forecast requests, want 2", ce.requests("forecast"))
	}

	cfg := s.config(t, srv.srv.URL)
	cfg.CacheTTL = -1
	nc := newEnv(t, cfg)
	for range 2 {
		if _, err := nc.p.Current(ctx, "DE"); err != nil {
			t.Fatal(err)
		}
	}
	if nc.requests("current") != 2 {
		t.Fatal("cache_ttl < 0 still cached")
	}
}

// TestBadArguments: empty zones and ranges are refused, not fetched.
func TestBadArguments(t *testing.T) {
	s := specs()[1]
	srv := newFakeServer(t, s.routes, s.empty)
	e := newEnv(t, s.config(t, srv.srv.URL))
	ctx := context.Background()
	if _, err := e.p.Current(ctx, ""); err == nil {
		t.Fatal("empty zone accepted")
	}
	if _, err := e.p.Forecast(ctx, "DE", at("13:00"), at("13:00")); err == nil || !strings.Contains(err.Error(), "empty range") {
		t.Fatalf("empty range: %v", err)
	}
	if len(srv.paths()) != 0 {
		t.Fatalf("requests sent: %v", srv.paths())
	}
}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := readTestdata(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestConcurrentCallers: callers of one zone arriving together share one
// fetch; zones do not block each other (run with -race).
func TestConcurrentCallers(t *testing.T) {
	s := specs()[1]
	srv := newFakeServer(t, s.routes, s.empty)
	e := newEnv(t, s.config(t, srv.srv.URL))
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			zone := []string{"DE", "FR"}[i%2]
			if _, err := e.p.Current(context.Background(), zone); err != nil {
				errs <- err
			}
			if _, err := e.p.Forecast(context.Background(), zone, at("12:00"), at("16:00")); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if e.requests("current") != 2 || e.requests("forecast") != 2 {
		t.Fatalf("requests current %v forecast %v for 2 zones, want 2 and 2", e.requests("current"), e.requests("forecast"))
	}
}
