package uplink

import (
	"encoding/json"
	"errors"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

func TestConfigDefaultsAndValidation(t *testing.T) {
	var c Config
	if err := c.Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	if c.Enabled() {
		t.Error("zero config enabled")
	}
	d := DefaultConfig()
	if d.UploadLinger != time.Second || c.UploadLinger != 0 {
		t.Errorf("upload linger: default %s, zero config %s (0 means none)", d.UploadLinger, c.UploadLinger)
	}
	d.UploadLinger = 0
	if !reflect.DeepEqual(c, d) || !c.Seals() {
		t.Errorf("zero config filled to %+v, want the defaults %+v", c, d)
	}
	ok := Config{URL: " https://cp.example:8443 ", EnrollmentToken: "efe_x"}
	if err := ok.Validate(); err != nil || ok.URL != "https://cp.example:8443" || !ok.Enabled() {
		t.Fatalf("valid config: %v %+v", err, ok)
	}
	for _, tc := range []struct {
		field string
		mut   func(*Config)
	}{
		{"url", func(c *Config) { c.URL = "http://cp:8443" }},
		{"url", func(c *Config) { c.URL = "https://" }},
		{"url", func(c *Config) { c.URL = "https://cp:8443/?x=1" }},
		{"url", func(c *Config) { c.URL = "https://u:p@cp:8443" }},
		{"url", func(c *Config) { c.URL = "https://cp:%zz" }},
		{"enrollment_token", func(c *Config) { c.EnrollmentToken, c.EnrollmentTokenFile = "a", "/f" }},
		{"enrollment_token", func(c *Config) { c.EnrollmentToken = " efe_x" }},
		{"heartbeat_interval", func(c *Config) { c.HeartbeatInterval = -time.Second }},
		{"heartbeat_interval", func(c *Config) { c.HeartbeatInterval = time.Nanosecond }},
		{"request_timeout", func(c *Config) { c.RequestTimeout = -1 }},
		{"request_timeout", func(c *Config) { c.RequestTimeout = time.Hour }},
		{"backoff_min", func(c *Config) { c.BackoffMin = -time.Second }},
		{"backoff_max", func(c *Config) { c.BackoffMin, c.BackoffMax = time.Minute, time.Second }},
		{"backoff_max", func(c *Config) { c.BackoffMax = 48 * time.Hour }},
		{"breaker_failures", func(c *Config) { c.BreakerFailures = -1 }},
		{"breaker_cooldown", func(c *Config) { c.BreakerCooldown = -time.Second }},
		{"upload_batches", func(c *Config) { c.UploadBatches = 5000 }},
		{"upload_interval", func(c *Config) { c.UploadInterval = -time.Second }},
	} {
		c := Config{URL: "https://cp:8443"}
		tc.mut(&c)
		err := c.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field+":") || !strings.HasPrefix(err.Error(), "uplink: ") {
			t.Errorf("%s: got %v", tc.field, err)
		}
		if _, nerr := New(c, t.TempDir(), "n", Deps{}); !errors.Is(nerr, ErrInvalidConfig) {
			t.Errorf("%s: New accepted it: %v", tc.field, nerr)
		}
	}
	if _, err := New(Config{URL: "https://cp:8443"}, "", "n", Deps{}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("no data dir: %v", err)
	}
}

func TestRollupMetric(t *testing.T) {
	for _, tc := range []struct {
		stat string
		res  time.Duration
		want string
	}{
		{"min", time.Minute, "temp:min_1m"},
		{"count", time.Hour, "temp:count_1h"},
		{"avg", 5 * time.Minute, "temp:avg_300s"},
	} {
		if got := RollupMetric("temp", tc.stat, tc.res); got != tc.want {
			t.Errorf("RollupMetric(temp, %s, %s) = %q, want %q", tc.stat, tc.res, got, tc.want)
		}
	}
}

func TestConvertBatchMapsSkipsAndSplits(t *testing.T) {
	at := time.Date(2025, 3, 1, 12, 0, 0, 123456000, time.UTC)
	// Sent under its identity in its epoch, not its seq in the store.
	b := ingest.OutboxBatch{Seq: 3, Epoch: "ep-1", EpochSeq: 42, Kind: ingest.BatchRollups,
		Readings: []ingest.Reading{
			{Device: "d", Metric: "t", Time: at, Kind: ingest.KindNumber, Value: 1.5},
			{Device: "d", Metric: "on", Time: at, Kind: ingest.KindBool, Value: 1},
			{Device: "d", Metric: "s", Time: at, Kind: ingest.KindString, Text: "x"},
			{Device: "d", Metric: "blob", Time: at, Kind: ingest.KindData, Text: "\x00"},
			{Device: "d", Metric: strings.Repeat("m", 201), Time: at, Kind: ingest.KindNumber},
			{Device: "d\x01", Metric: "t", Time: at, Kind: ingest.KindNumber},
			{Device: "d", Metric: "nan", Time: at, Kind: ingest.KindNumber, Value: math.NaN()},
			{Device: "d", Metric: "old", Time: time.Date(1999, 1, 1, 0, 0, 0, 0, time.UTC), Kind: ingest.KindNumber},
		},
		Rollups: []ingest.Rollup{{Device: "d", Metric: "t", Resolution: time.Hour, Start: at.Truncate(time.Hour), Count: 2, Sum: 3, Min: 1, Max: 2}},
	}
	c := convertBatch(b)
	if len(c.parts) != 1 || c.parts[0].BatchSeq != 42 || c.parts[0].Epoch != "ep-1" {
		t.Fatalf("parts %+v", c.parts)
	}
	got := map[string]float64{}
	for _, r := range c.parts[0].Readings {
		got[r.Metric] = r.Value
		if r.Device != "d" {
			t.Errorf("device %q", r.Device)
		}
	}
	want := map[string]float64{"t": 1.5, "on": 1, "t:min_1h": 1, "t:max_1h": 2, "t:avg_1h": 1.5, "t:count_1h": 2}
	if len(got) != len(want) {
		t.Errorf("readings %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	wantSkip := map[string]int{skipText: 2, skipName: 2, skipValue: 1, skipTime: 1}
	for k, v := range wantSkip {
		if c.skipped[k] != v {
			t.Errorf("skipped[%s] = %d, want %d (all %v)", k, c.skipped[k], v, c.skipped)
		}
	}

	// Only text: nothing to send.
	if c := convertBatch(ingest.OutboxBatch{Seq: 1, Readings: b.Readings[2:3]}); len(c.parts) != 0 || c.skipped[skipText] != 1 {
		t.Errorf("text-only batch: %+v", c)
	}

	// A large batch is split the same way every time, in order, under the
	// server's limits.
	big := ingest.OutboxBatch{Seq: 1, Epoch: "ep-2", EpochSeq: 9}
	rnd := rand.New(rand.NewPCG(3, 4))
	for i := range 23456 {
		name := "m<&>" + strings.Repeat("x", rnd.IntN(150))
		big.Readings = append(big.Readings, ingest.Reading{Device: "dev\"ice", Metric: name, Time: at.Add(time.Duration(i) * time.Microsecond), Value: -rnd.NormFloat64() * 1e300})
	}
	c1, c2 := convertBatch(big), convertBatch(big)
	if len(c1.parts) < 5 || len(c1.parts) != len(c2.parts) {
		t.Fatalf("split into %d and %d parts", len(c1.parts), len(c2.parts))
	}
	seen := map[uint64]bool{}
	n := 0
	for i, p := range c1.parts {
		if p.BatchSeq != c2.parts[i].BatchSeq || len(p.Readings) != len(c2.parts[i].Readings) || p.Epoch != "ep-2" {
			t.Fatalf("part %d differs between two conversions", i)
		}
		if want := splitFlag | 9<<splitPartBits | uint64(i); p.BatchSeq != want || seen[p.BatchSeq] || p.BatchSeq > math.MaxInt64 {
			t.Fatalf("part %d batch_seq %#x, want %#x", i, p.BatchSeq, want)
		}
		seen[p.BatchSeq] = true
		if len(p.Readings) > maxRequestReadings {
			t.Errorf("part %d has %d readings", i, len(p.Readings))
		}
		js, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(js) > maxRequestJSONBytes {
			t.Errorf("part %d is %d bytes of JSON, bound %d: the estimate is too low", i, len(js), maxRequestJSONBytes)
		}
		enc, err := cpapi.EncodeTelemetryBatch(p)
		if err != nil || len(enc) > 1<<20 {
			t.Errorf("part %d: %d bytes gzip, %v", i, len(enc), err)
		}
		for j, r := range p.Readings {
			if !r.TS.Equal(big.Readings[n+j].Time) {
				t.Fatalf("part %d reading %d out of order", i, j)
			}
		}
		n += len(p.Readings)
	}
	if n != len(big.Readings) {
		t.Errorf("parts hold %d readings, want %d", n, len(big.Readings))
	}
}

func TestJSONStringLenMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"plain", `q"uote\back`, "<html>&amp;", "line\u2028sep\u2029", "ünïcödé"} {
		js, _ := json.Marshal(s)
		if got, want := jsonStringLen(s), len(js)-2; got != want {
			t.Errorf("jsonStringLen(%q) = %d, encoding/json writes %d", s, got, want)
		}
	}
}

func TestBreakerStateMachine(t *testing.T) {
	clock := clock.NewManual(time.Unix(1e9, 0))
	var changes []string
	b := newBreaker(2, 30*time.Second, clock, func(from, to string, _ int) { changes = append(changes, from+">"+to) })
	mustAllow := func(want bool) {
		t.Helper()
		if ok, _, _ := b.allow(); ok != want {
			t.Fatalf("allow = %v, want %v (state %s)", ok, want, b.state)
		}
	}
	mustAllow(true)
	b.failure()
	mustAllow(true)
	b.success() // resets the count
	b.failure()
	mustAllow(true)
	b.failure()
	if st, n := b.snapshot(); st != BreakerOpen || n != 2 {
		t.Fatalf("after 2 failures: %s %d", st, n)
	}
	ok, retryAt, closed := b.allow()
	if ok || !retryAt.Equal(clock.Now().Add(30*time.Second)) {
		t.Fatalf("open breaker: ok %v retry at %s", ok, retryAt)
	}
	clock.Advance(30 * time.Second)
	if ok, _, _ := b.ready(); !ok {
		t.Fatal("not ready after the cooldown")
	}
	mustAllow(true)  // the probe
	mustAllow(false) // a second request while it is in flight
	b.failure()
	if st, _ := b.snapshot(); st != BreakerOpen {
		t.Fatalf("failed probe: %s", st)
	}
	clock.Advance(30 * time.Second)
	mustAllow(true)
	b.abort() // probe not sent
	mustAllow(true)
	b.success()
	select {
	case <-closed:
	default:
		t.Fatal("closing the breaker did not signal")
	}
	want := "closed>open open>half-open half-open>open open>half-open half-open>closed"
	if got := strings.Join(changes, " "); got != want {
		t.Errorf("transitions %q, want %q", got, want)
	}
}

func TestBackoffIsExponentialWithJitterWithinBounds(t *testing.T) {
	u, err := New(Config{BackoffMin: time.Second, BackoffMax: time.Minute}, "", "n", Deps{Rand: rand.New(rand.NewPCG(5, 6))})
	if err != nil {
		t.Fatal(err)
	}
	for n := 1; n <= 80; n++ {
		hi := time.Minute
		if n <= 6 {
			hi = time.Second << (n - 1)
		}
		seenHigh := false
		for range 200 {
			d := u.backoff(n)
			if d < time.Second || d > hi {
				t.Fatalf("backoff(%d) = %s outside [1s, %s]", n, d, hi)
			}
			seenHigh = seenHigh || d > hi/2
		}
		if n > 1 && !seenHigh {
			t.Errorf("backoff(%d) never above half its cap %s: no jitter over the range", n, hi)
		}
	}
}

func TestCommittedNeverBlocks(t *testing.T) {
	u, err := New(Config{}, "", "n", Deps{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		u.Committed(ingest.Commit{Seq: int64(i + 1)})
	}
	u.Stop()
	u.Stop()
}
