package cpbench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/procstat"
)

// LoadOptions configures RunHeartbeatLoad.
type LoadOptions struct {
	// URL, AdminToken and CAPEM reach the server under test. The token
	// needs the operator role (enrollment tokens) and viewer (status).
	URL        string
	AdminToken string
	CAPEM      []byte
	// Agents is the number of simulated agents (default 100).
	Agents int
	// Interval is each agent's heartbeat interval (default 10s); the total
	// rate is Agents / Interval.
	Interval time.Duration
	// Duration is the length of the measured phase (default 20s).
	Duration time.Duration
	// EnrollConcurrency is the number of parallel enrollments and first
	// connections during setup (default 16).
	EnrollConcurrency int
	// Workers bounds heartbeats in flight (default 256).
	Workers int
	// Timeout bounds each heartbeat (default 10s).
	Timeout time.Duration
	// Labels are given to the enrolled agents (default loadtest=true).
	Labels map[string]string
	// Logger receives progress (nil: discard).
	Logger *slog.Logger
}

// LoadReport is the outcome of RunHeartbeatLoad. Latencies are measured
// from writing a heartbeat request to reading its answer, over
// connections established (mutual TLS) during setup.
type LoadReport struct {
	Agents          int     `json:"agents"`
	IntervalSeconds float64 `json:"interval_seconds"`
	DurationSeconds float64 `json:"duration_seconds"`
	// TargetRate is Agents / Interval heartbeats per second; AchievedRate
	// what was answered successfully.
	TargetRate   float64 `json:"target_rate"`
	AchievedRate float64 `json:"achieved_rate"`
	Heartbeats   int64   `json:"heartbeats"`
	Errors       int64   `json:"errors"`
	// Skipped counts heartbeats not sent because that agent's previous one
	// was still in flight.
	Skipped   int64   `json:"skipped"`
	P50MS     float64 `json:"p50_ms"`
	P90MS     float64 `json:"p90_ms"`
	P99MS     float64 `json:"p99_ms"`
	MaxMS     float64 `json:"max_ms"`
	MeanMS    float64 `json:"mean_ms"`
	LagP99MS  float64 `json:"schedule_lag_p99_ms"`
	LagMaxMS  float64 `json:"schedule_lag_max_ms"`
	EnrollSec float64 `json:"enroll_seconds"`
	// ConnectSec is the time to open every agent's mutual-TLS connection
	// (first heartbeat each), not part of the latency figures.
	ConnectSec float64 `json:"connect_seconds"`
	// ServerRSSBytes is the server's VmRSS at the end (from
	// /v1/server/status; includes the load generator when both run in one
	// process). LoadRSSBytes is this process's VmRSS.
	ServerRSSBytes int64 `json:"server_rss_bytes"`
	// ServerHeapBytes and ServerStackBytes are the server's Go heap and
	// goroutine stacks in use at the end.
	ServerHeapBytes  uint64 `json:"server_heap_bytes"`
	ServerStackBytes uint64 `json:"server_stack_bytes"`
	LoadRSSBytes     int64  `json:"load_rss_bytes"`
	// ServerP99UpperMS is the upper bound of the server's latency
	// histogram bucket holding the 99th percentile of heartbeat handling
	// time during the measured phase (from /metrics): time inside the
	// server, without network and client queueing.
	ServerP99UpperMS float64 `json:"server_p99_upper_ms"`
	// ServerCPUPerBeatMS and LoadCPUPerBeatMS are CPU milliseconds used
	// per answered heartbeat during the measured phase, by the server
	// process (from /v1/server/status) and by this process.
	ServerCPUPerBeatMS float64 `json:"server_cpu_ms_per_heartbeat"`
	LoadCPUPerBeatMS   float64 `json:"load_cpu_ms_per_heartbeat"`
	OnlineAtEnd        int     `json:"online_at_end"`
	FirstError         string  `json:"first_error,omitempty"`
}

func (o *LoadOptions) setDefaults() error {
	if o.URL == "" || o.AdminToken == "" {
		return fmt.Errorf("%w: load: URL and AdminToken are required", ErrInvalidOptions)
	}
	if o.Agents == 0 {
		o.Agents = 100
	}
	if o.Interval == 0 {
		o.Interval = 10 * time.Second
	}
	if o.Duration == 0 {
		o.Duration = 20 * time.Second
	}
	if o.EnrollConcurrency == 0 {
		o.EnrollConcurrency = 16
	}
	if o.Workers == 0 {
		o.Workers = 256
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Labels == nil {
		o.Labels = map[string]string{"loadtest": "true"}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Agents < 0 || o.Interval < 0 || o.Duration < 0 || o.EnrollConcurrency < 0 || o.Workers < 0 || o.Timeout < 0 {
		return fmt.Errorf("%w: load: negative option", ErrInvalidOptions)
	}
	return nil
}

// loadAgent is one simulated agent: its identity and one connection.
type loadAgent struct {
	id     string
	client *cpapi.Client
	tr     *connTransport
	busy   atomic.Bool
}

// connTransport is an http.RoundTripper over a single persistent TLS
// connection, for load generation with many agents. Each agent needs its
// own connection (the client certificate is its identity), so a shared
// pooled transport cannot serve them; instead each idle agent costs one
// tls.Conn and no goroutine, and read buffers are borrowed from a pool
// only while a request is in flight. One request at a time per transport.
type connTransport struct {
	addr    string
	conf    *tls.Config
	timeout time.Duration

	mu   sync.Mutex
	conn *tls.Conn
}

var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 2048) }}

func (t *connTransport) dial(ctx context.Context) error {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: t.timeout}, Config: t.conf}
	c, err := d.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		return err
	}
	t.conn = c.(*tls.Conn)
	return nil
}

func (t *connTransport) closeConn() {
	if t.conn != nil {
		t.conn.Close()
		t.conn = nil
	}
}

// Close closes the connection.
func (t *connTransport) Close() {
	t.mu.Lock()
	t.closeConn()
	t.mu.Unlock()
}

// RoundTrip sends req on the agent's connection, dialling it first if
// needed, and reads the whole answer before returning.
func (t *connTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ctx := req.Context()
	if t.conn == nil {
		if err := t.dial(ctx); err != nil {
			return nil, err
		}
	}
	deadline := time.Now().Add(t.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	t.conn.SetDeadline(deadline)
	if err := req.Write(t.conn); err != nil {
		t.closeConn()
		return nil, err
	}
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(t.conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		br.Reset(nil)
		readerPool.Put(br)
		t.closeConn()
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.Close || br.Buffered() != 0 {
		t.closeConn()
	}
	br.Reset(nil)
	readerPool.Put(br)
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

// RunHeartbeatLoad enrolls opts.Agents agents into the server at opts.URL,
// opens one mutual-TLS connection per agent, then sends heartbeats at
// Agents/Interval per second for Duration, spread evenly over the
// interval, and reports latency percentiles and memory. Agents stay
// enrolled afterwards.
func RunHeartbeatLoad(ctx context.Context, opts LoadOptions) (LoadReport, error) {
	if err := opts.setDefaults(); err != nil {
		return LoadReport{}, err
	}
	rep := LoadReport{Agents: opts.Agents, IntervalSeconds: opts.Interval.Seconds(), DurationSeconds: opts.Duration.Seconds(),
		TargetRate: float64(opts.Agents) / opts.Interval.Seconds()}
	u, err := url.Parse(opts.URL)
	if err != nil || u.Host == "" {
		return rep, fmt.Errorf("%w: load: URL %q", ErrInvalidOptions, opts.URL)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	admin, err := cpapi.NewClient(cpapi.ClientConfig{URL: opts.URL, Token: opts.AdminToken, CAPEM: opts.CAPEM, Timeout: time.Minute})
	if err != nil {
		return rep, err
	}
	defer admin.CloseIdleConnections()
	baseTLS, err := cpapi.ClientTLSConfig(opts.CAPEM, nil)
	if err != nil {
		return rep, err
	}
	baseTLS.ServerName = u.Hostname()
	baseTLS.ClientSessionCache = nil

	// Enroll.
	start := time.Now()
	agents := make([]*loadAgent, opts.Agents)
	var tokens []cpapi.NewEnrollmentToken
	for len(tokens) < opts.Agents {
		n := min(opts.Agents-len(tokens), cpapi.MaxEnrollmentTokensPerRequest)
		toks, err := admin.CreateEnrollmentTokens(ctx, time.Hour, opts.Labels, n)
		if err != nil {
			return rep, fmt.Errorf("cpbench: load: create enrollment tokens: %w", err)
		}
		tokens = append(tokens, toks...)
	}
	enrollClient, err := cpapi.NewClient(cpapi.ClientConfig{URL: opts.URL, CAPEM: opts.CAPEM, Timeout: time.Minute})
	if err != nil {
		return rep, err
	}
	defer enrollClient.CloseIdleConnections()
	err = parallel(ctx, opts.Agents, opts.EnrollConcurrency, func(i int) error {
		name := fmt.Sprintf("load-%05d", i)
		key, csr, err := cpapi.GenerateAgentKey(name)
		if err != nil {
			return err
		}
		resp, err := enrollClient.Enroll(ctx, cpapi.EnrollRequest{Token: tokens[i].Token, CSR: csr, Name: name, Version: "loadgen", OS: runtime.GOOS, Arch: runtime.GOARCH})
		if err != nil {
			return fmt.Errorf("cpbench: load: enroll agent %d: %w", i, err)
		}
		cert, err := cpapi.AgentCertificate(resp.Certificate, key)
		if err != nil {
			return err
		}
		conf := baseTLS.Clone()
		conf.Certificates = []tls.Certificate{cert}
		tr := &connTransport{addr: addr, conf: conf, timeout: opts.Timeout}
		c, err := cpapi.NewClient(cpapi.ClientConfig{URL: opts.URL, Transport: tr, Timeout: opts.Timeout})
		if err != nil {
			return err
		}
		agents[i] = &loadAgent{id: resp.AgentID, client: c, tr: tr}
		return nil
	})
	defer func() {
		for _, a := range agents {
			if a != nil {
				a.tr.Close()
			}
		}
	}()
	if err != nil {
		return rep, err
	}
	rep.EnrollSec = time.Since(start).Seconds()
	opts.Logger.Info("load: enrolled", "agents", opts.Agents, "seconds", rep.EnrollSec)

	hb := cpapi.Heartbeat{Version: "loadgen", Health: &cpapi.Health{Status: "ok"},
		Resources: &cpapi.Resources{CPUPercent: 12.5, Load1: 0.3, MemUsedBytes: 64 << 20, MemTotalBytes: 1 << 30, DiskUsedBytes: 1 << 30, DiskTotalBytes: 8 << 30, UptimeSeconds: 3600}}

	// Connect: each agent's first heartbeat opens its connection.
	start = time.Now()
	err = parallel(ctx, opts.Agents, opts.EnrollConcurrency, func(i int) error {
		hctx, cancel := context.WithTimeout(ctx, opts.Timeout)
		defer cancel()
		if _, err := agents[i].client.Heartbeat(hctx, hb); err != nil {
			return fmt.Errorf("cpbench: load: first heartbeat of %s: %w", agents[i].id, err)
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	rep.ConnectSec = time.Since(start).Seconds()
	opts.Logger.Info("load: connected", "agents", opts.Agents, "seconds", rep.ConnectSec)

	// Measure.
	type job struct {
		a   *loadAgent
		due time.Time
	}
	jobs := make(chan job, opts.Workers)
	var (
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, int(rep.TargetRate*opts.Duration.Seconds())+16)
		lags      = make([]time.Duration, 0, cap(latencies))
		firstErr  string
		errCount  atomic.Int64
		wg        sync.WaitGroup
	)
	for range opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := make([]time.Duration, 0, 256)
			localLag := make([]time.Duration, 0, 256)
			flush := func() {
				mu.Lock()
				latencies = append(latencies, local...)
				lags = append(lags, localLag...)
				mu.Unlock()
				local, localLag = local[:0], localLag[:0]
			}
			for j := range jobs {
				t0 := time.Now()
				hctx, cancel := context.WithTimeout(ctx, opts.Timeout)
				_, err := j.a.client.Heartbeat(hctx, hb)
				cancel()
				d := time.Since(t0)
				j.a.busy.Store(false)
				if err != nil {
					if errCount.Add(1) == 1 {
						mu.Lock()
						firstErr = err.Error()
						mu.Unlock()
					}
					continue
				}
				local = append(local, d)
				localLag = append(localLag, t0.Sub(j.due))
				if len(local) == cap(local) {
					flush()
				}
			}
			flush()
		}()
	}
	period := opts.Interval / time.Duration(opts.Agents)
	if period <= 0 {
		period = time.Nanosecond
	}
	var skipped int64
	cpuBefore, serverCPUBefore := procstat.CPUSeconds(), -1.0
	bucketsBefore, _ := heartbeatHistogram(ctx, admin)
	if st, err := admin.ServerStatus(ctx); err == nil {
		serverCPUBefore = st.CPUSeconds
	}
	start = time.Now()
	end := start.Add(opts.Duration)
	k := 0
schedule:
	for {
		now := time.Now()
		if !now.Before(end) {
			break
		}
		for {
			due := start.Add(time.Duration(k) * period)
			if due.After(now) || !due.Before(end) {
				break
			}
			a := agents[k%opts.Agents]
			k++
			if !a.busy.CompareAndSwap(false, true) {
				skipped++
				continue
			}
			select {
			case jobs <- job{a: a, due: due}:
			case <-ctx.Done():
				break schedule
			}
		}
		next := start.Add(time.Duration(k) * period)
		wait := time.Until(next)
		if wait < time.Millisecond {
			wait = time.Millisecond
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			break schedule
		}
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil {
		return rep, err
	}

	rep.Heartbeats = int64(len(latencies))
	rep.Errors = errCount.Load()
	rep.Skipped = skipped
	rep.FirstError = firstErr
	rep.AchievedRate = float64(rep.Heartbeats) / elapsed.Seconds()
	if len(latencies) > 0 {
		slices.Sort(latencies)
		slices.Sort(lags)
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
		pct := func(s []time.Duration, p float64) time.Duration {
			i := int(p*float64(len(s))+0.5) - 1
			return s[max(0, min(i, len(s)-1))]
		}
		var sum time.Duration
		for _, d := range latencies {
			sum += d
		}
		rep.P50MS, rep.P90MS, rep.P99MS = ms(pct(latencies, .50)), ms(pct(latencies, .90)), ms(pct(latencies, .99))
		rep.MaxMS = ms(latencies[len(latencies)-1])
		rep.MeanMS = ms(sum / time.Duration(len(latencies)))
		rep.LagP99MS, rep.LagMaxMS = ms(pct(lags, .99)), ms(lags[len(lags)-1])
	}
	if after, err := heartbeatHistogram(ctx, admin); err == nil && bucketsBefore != nil {
		rep.ServerP99UpperMS = histogramQuantileUpper(bucketsBefore, after, 0.99) * 1000
	}
	rep.LoadRSSBytes = procstat.RSS()
	if rep.Heartbeats > 0 {
		rep.LoadCPUPerBeatMS = (procstat.CPUSeconds() - cpuBefore) * 1000 / float64(rep.Heartbeats)
	}
	if st, err := admin.ServerStatus(ctx); err == nil {
		if serverCPUBefore >= 0 && rep.Heartbeats > 0 {
			rep.ServerCPUPerBeatMS = (st.CPUSeconds - serverCPUBefore) * 1000 / float64(rep.Heartbeats)
		}
		rep.ServerRSSBytes = st.RSSBytes
		rep.ServerHeapBytes, rep.ServerStackBytes = st.HeapBytes, st.StackBytes
		rep.OnlineAtEnd = st.Agents[cpapi.StateOnline]
	} else {
		opts.Logger.Warn("load: server status unavailable", "err", err)
	}
	return rep, nil
}

// parallel runs fn(0..n-1) on up to conc goroutines and returns the first
// error, after which no new calls start.
func parallel(ctx context.Context, n, conc int, fn func(i int) error) error {
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
		failed  atomic.Bool
	)
	for range min(conc, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() && ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					errOnce.Do(func() { first = err })
					failed.Store(true)
					return
				}
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return nil
}

// heartbeatRoute is the metrics label of the heartbeat endpoint.
const heartbeatRoute = "POST /v1/agents/self/heartbeat"

// heartbeatHistogram reads the cumulative bucket counts of the server's
// heartbeat latency histogram from /metrics, keyed by upper bound in
// seconds.
func heartbeatHistogram(ctx context.Context, c *cpapi.Client) (map[float64]float64, error) {
	text, err := c.Metrics(ctx)
	if err != nil {
		return nil, err
	}
	out := map[float64]float64{}
	prefix := `controlplane_http_request_duration_seconds_bucket{route="` + heartbeatRoute + `",le="`
	for _, line := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		le, count, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		ub, err1 := strconv.ParseFloat(le, 64)
		n, err2 := strconv.ParseFloat(strings.TrimSpace(count), 64)
		if err1 == nil && err2 == nil {
			out[ub] = n
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("cpbench: load: no heartbeat histogram in /metrics")
	}
	return out, nil
}

// histogramQuantileUpper returns the upper bound of the first bucket whose
// cumulative count, between the two snapshots, reaches q of the total.
func histogramQuantileUpper(before, after map[float64]float64, q float64) float64 {
	bounds := make([]float64, 0, len(after))
	for ub := range after {
		bounds = append(bounds, ub)
	}
	slices.Sort(bounds)
	total := after[math.Inf(1)] - before[math.Inf(1)]
	if total <= 0 {
		return 0
	}
	for _, ub := range bounds {
		if after[ub]-before[ub] >= q*total {
			return ub
		}
	}
	return math.Inf(1)
}
