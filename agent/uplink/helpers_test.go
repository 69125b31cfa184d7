package uplink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/internal/testutil"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// cpEnv is a real control plane on 127.0.0.1 running on the test's
// manual clock.
type cpEnv struct {
	t     *testing.T
	clock *clock.Manual
	srv   *controlplane.Server
	admin *cpapi.Client
	reg   *prometheus.Registry
	// shares are the root key shares of a production (not dev) key
	// service's first start.
	shares []string
}

// unseal gives the first threshold shares.
func (c *cpEnv) unseal() {
	c.t.Helper()
	for _, sh := range c.shares[:3] {
		if _, err := c.admin.Unseal(testCtx(c.t), sh); err != nil {
			c.t.Fatalf("unseal: %v", err)
		}
	}
}

func newClock() *clock.Manual {
	// Start at the real time: the server's certificate is checked by the
	// client against the real clock.
	return clock.NewManual(time.Now().UTC().Truncate(time.Second))
}

func newCP(t *testing.T, clock *clock.Manual) *cpEnv {
	t.Helper()
	return newCPWith(t, clock, nil)
}

// newCPWith starts a control plane after mutate changed its config.
func newCPWith(t *testing.T, clock *clock.Manual, mutate func(*controlplane.Config)) *cpEnv {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := controlplane.Config{
		DataDir:  t.TempDir(),
		Listen:   "127.0.0.1:0",
		Logger:   slog.New(slog.DiscardHandler),
		Registry: reg,
		Clock:    clock,
		SQLite:   controlplane.SQLiteOptions{Synchronous: "NORMAL"},
		// Dev mode: unsealed at start, with the built-in telemetry key.
		Keys: controlplane.KeyConfig{DevUnseal: true},
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := controlplane.New(cfg)
	if err != nil {
		t.Fatalf("controlplane.New: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("controlplane Start: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	admin, err := srv.AdminClient(20 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.CloseIdleConnections)
	return &cpEnv{t: t, clock: clock, srv: srv, admin: admin, reg: reg, shares: srv.TakeRootShares()}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// token makes a single-use enrollment token.
func (c *cpEnv) token() string {
	c.t.Helper()
	toks, err := c.admin.CreateEnrollmentTokens(testCtx(c.t), time.Hour, map[string]string{"site": "test"}, 1)
	if err != nil {
		c.t.Fatalf("CreateEnrollmentTokens: %v", err)
	}
	return toks[0].Token
}

// config returns an uplink config for this control plane with test
// timings.
func (c *cpEnv) config(token string) Config {
	return Config{
		URL: c.srv.URL(), CAFile: c.srv.CAPath(), EnrollmentToken: token,
		RequestTimeout: 10 * time.Second, BackoffMin: time.Second, BackoffMax: 2 * time.Minute,
		BreakerFailures: 3, BreakerCooldown: 30 * time.Second, UploadBatches: 4, UploadInterval: 5 * time.Second,
	}
}

// serverPoints counts the raw points the control plane holds for agent.
func (c *cpEnv) serverPoints(agent string) int {
	c.t.Helper()
	now := c.clock.Now()
	res, err := c.admin.QueryTelemetry(testCtx(c.t), cpapi.TelemetryQuery{
		Agent: agent, From: now.Add(-48 * time.Hour), To: now.Add(2 * time.Hour), Limit: 100000,
	})
	if err != nil {
		c.t.Fatalf("QueryTelemetry: %v", err)
	}
	n := 0
	for _, s := range res.Series {
		n += len(s.Points)
	}
	return n
}

// serverCounter sums a counter of the control plane's registry over the
// series whose labels include want.
func (c *cpEnv) serverCounter(name string, want map[string]string) float64 {
	c.t.Helper()
	return counterValue(c.t, c.reg, name, want)
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

func (c *cpEnv) agentRecord(id string) cpapi.Agent {
	c.t.Helper()
	agents, err := c.admin.ListAgents(testCtx(c.t), cpapi.AgentFilter{})
	if err != nil {
		c.t.Fatalf("ListAgents: %v", err)
	}
	for _, a := range agents {
		if a.ID == id {
			return a
		}
	}
	c.t.Fatalf("agent %s not in the registry (%d agents)", id, len(agents))
	return cpapi.Agent{}
}

// faultTransport sits between the uplink and its TLS transport: it can
// refuse every request (an outage) or let upload requests reach the
// server and then lose the answer.
type faultTransport struct {
	next       http.RoundTripper
	down       atomic.Bool
	dropUpload atomic.Int64 // the ordinal (1-based) of the upload whose answer is lost; 0: none
	dropEnroll atomic.Int64 // how many more enrollment answers are lost after the server processed them
	dropped    atomic.Int64
	requests   atomic.Int64 // requests attempted, refused ones included
	uploads    atomic.Int64 // upload requests that reached the server
	inflight   atomic.Int32
	watching   atomic.Int32 // key watch requests in flight (GET /v1/agent/keys?wait=)
	// watchLoop is set when the uplink runs a key watch loop (it has a
	// keyring); settle then expects it parked too.
	watchLoop atomic.Bool
	// ingestTicker is set when the agent runs an ingestor: its retention
	// ticker waits on the clock too.
	ingestTicker atomic.Bool
	up           atomic.Pointer[Uplink]
	// holdUploads answers uploads with a 400 without sending them
	// (recorded in sent);
	// tamperUploads flips one bit of each upload body on its way;
	// tamperKeys flips one bit of the first key message of each key
	// fetch answer.
	holdUploads   atomic.Bool
	tamperUploads atomic.Bool
	tamperKeys    atomic.Bool

	mu   sync.Mutex
	sent []sentUpload // every upload body, as the uplink made it
}

// sentUpload is one upload request as the uplink made it.
type sentUpload struct {
	contentType string
	header      http.Header
	body        []byte
}

var errTestNetwork = errors.New("test: network unreachable")

// uploadsSent returns the upload requests made so far.
func (f *faultTransport) uploadsSent() []sentUpload {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sent)
}

func (f *faultTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	f.requests.Add(1)
	if r.URL.Query().Get("wait") == "" {
		f.inflight.Add(1)
		defer f.inflight.Add(-1)
	} else {
		// A key watch request, which the server holds: the key watch
		// loop is parked in it as it would be on the clock.
		f.watching.Add(1)
		defer f.watching.Add(-1)
	}
	if f.down.Load() {
		if r.Body != nil {
			r.Body.Close()
		}
		return nil, errTestNetwork
	}
	upload := strings.HasSuffix(r.URL.Path, "/telemetry")
	if upload && r.Body != nil {
		body, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			return nil, err
		}
		f.mu.Lock()
		f.sent = append(f.sent, sentUpload{contentType: r.Header.Get("Content-Type"), header: r.Header.Clone(), body: bytes.Clone(body)})
		f.mu.Unlock()
		if f.holdUploads.Load() {
			// Refused without reaching the server (a 4xx: the breaker and
			// the heartbeats are left alone).
			b := []byte(`{"error":"test: upload held"}`)
			return &http.Response{StatusCode: http.StatusBadRequest, Status: "400 Bad Request", Header: http.Header{"Content-Type": {"application/json"}},
				Body: io.NopCloser(bytes.NewReader(b)), ContentLength: int64(len(b)), Request: r}, nil
		}
		if f.tamperUploads.Load() {
			body[len(body)/2] ^= 0x10
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	resp, err := f.next.RoundTrip(r)
	if err == nil && strings.HasSuffix(r.URL.Path, "/agent/keys") && f.tamperKeys.Load() {
		resp = tamperKeyAnswer(resp)
	}
	if err == nil && strings.HasSuffix(r.URL.Path, "/enroll") && f.dropEnroll.Add(-1) >= 0 {
		f.dropped.Add(1)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil, errors.New("test: connection reset after the server processed the enrollment")
	}
	if err != nil || !upload {
		return resp, err
	}
	if n := f.uploads.Add(1); n == f.dropUpload.Load() {
		f.dropped.Add(1)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil, errors.New("test: connection reset after the server processed the request")
	}
	return resp, nil
}

// tamperKeyAnswer flips one bit in the signature of the first key
// message of a GET /v1/agent/keys answer.
func tamperKeyAnswer(resp *http.Response) *http.Response {
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var ans cpapi.AgentKeysResponse
	if resp.StatusCode == http.StatusOK && json.Unmarshal(b, &ans) == nil && len(ans.Messages) > 0 {
		m := ans.Messages[0]
		m[len(m)-10] ^= 0x01
		b, _ = json.Marshal(ans)
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	resp.ContentLength = int64(len(b))
	resp.Header.Del("Content-Length")
	return resp
}

// testAgent is an uplink with a real ingest store and ingestor as its
// outbox.
type testAgent struct {
	t         *testing.T
	dir       string
	keyring   *testKeyring
	noKeyring bool // start without a keyring (an agent from before keys)
	up        *Uplink
	tr        *faultTransport
	reg       *prometheus.Registry
	logs      *testutil.SyncBuffer
	store     *ingest.Store
	in        *ingest.Ingestor
	sink      *countingSink
	msgID     atomic.Uint32
	written   int // numeric readings handed to the ingestor
	// deferUpload is Deps.DeferUpload (agentOpts.deferUpload).
	deferUpload func(ctx context.Context) (func(), error)
}

// countingSink forwards commits to the uplink and counts their readings.
type countingSink struct {
	up       atomic.Pointer[Uplink]
	readings atomic.Int64
}

func (s *countingSink) Committed(c ingest.Commit) {
	s.readings.Add(int64(len(c.Readings)))
	if u := s.up.Load(); u != nil {
		u.Committed(c)
	}
}

type agentOpts struct {
	dir     string // reuse a data dir (restart); "" makes one
	outbox  Outbox // instead of an ingest store
	noStore bool   // heartbeats only
	status  func() cpapi.Heartbeat
	// batchDelay is the ingestor's group-commit delay (default 1ms).
	batchDelay time.Duration
	// deferUpload is Deps.DeferUpload.
	deferUpload func(ctx context.Context) (func(), error)
}

func newRegistry() *prometheus.Registry { return prometheus.NewRegistry() }

// pending returns the outbox batches not yet acknowledged.
func (a *testAgent) pending() int64 {
	a.t.Helper()
	st, err := a.store.Stats(testCtx(a.t))
	if err != nil {
		a.t.Fatalf("Stats: %v", err)
	}
	return st.OutboxPendingBatches
}

func newAgent(t *testing.T, clock *clock.Manual, cfg Config, o agentOpts) *testAgent {
	t.Helper()
	a := &testAgent{t: t, dir: o.dir, tr: &faultTransport{}, reg: prometheus.NewRegistry(), logs: &testutil.SyncBuffer{}, sink: &countingSink{},
		keyring: newTestKeyring(t, clock)}
	if a.dir == "" {
		a.dir = t.TempDir()
	}
	outbox := o.outbox
	if outbox == nil && !o.noStore {
		st, err := ingest.OpenStore(ingest.StoreConfig{Path: filepath.Join(a.dir, "ingest.db"), Clock: clock})
		if err != nil {
			t.Fatalf("OpenStore: %v", err)
		}
		t.Cleanup(func() { st.Close() })
		delay := o.batchDelay
		if delay == 0 {
			delay = time.Millisecond
		}
		in, err := ingest.New(ingest.Config{Store: st, Clock: clock, Sink: a.sink, BatchDelay: delay})
		if err != nil {
			t.Fatalf("ingest.New: %v", err)
		}
		if err := in.Start(testCtx(t)); err != nil {
			t.Fatalf("ingest Start: %v", err)
		}
		t.Cleanup(func() { in.Stop() })
		a.store, a.in, outbox = st, in, st
		a.tr.ingestTicker.Store(true)
	}
	a.deferUpload = o.deferUpload
	a.start(clock, cfg, outbox, o.status)
	return a
}

func (a *testAgent) start(clock *clock.Manual, cfg Config, outbox Outbox, status func() cpapi.Heartbeat) {
	t := a.t
	t.Helper()
	a.reg = prometheus.NewRegistry() // a restarted agent is a new process
	var keyring Keyring = a.keyring
	if a.noKeyring {
		keyring = nil
	}
	a.tr.watchLoop.Store(keyring != nil)
	up, err := New(cfg, a.dir, "edge-"+filepath.Base(a.dir), Deps{
		Logger:   slog.New(slog.NewTextHandler(a.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registry: a.reg,
		Clock:    clock,
		Rand:     rand.New(rand.NewPCG(1, 2)),
		WrapTransport: func(rt http.RoundTripper) http.RoundTripper {
			a.tr.next = rt
			return a.tr
		},
		Outbox:      outbox,
		Status:      status,
		Keyring:     keyring,
		DeferUpload: a.deferUpload,
		KeysChanged: func() {
			a.keyring.changed.Add(1)
		},
	})
	if err != nil {
		t.Fatalf("uplink.New: %v", err)
	}
	a.up = up
	a.tr.up.Store(up)
	a.sink.up.Store(up)
	t.Cleanup(up.Stop)
	if err := up.Start(testCtx(t)); err != nil {
		t.Fatalf("uplink Start: %v", err)
	}
}

type testMsg struct {
	topic   string
	payload []byte
	id      uint16
}

func (m *testMsg) Topic() string     { return m.topic }
func (m *testMsg) Payload() []byte   { return m.payload }
func (m *testMsg) Duplicate() bool   { return false }
func (m *testMsg) MessageID() uint16 { return m.id }
func (m *testMsg) Ack()              {}

// write hands n flat JSON messages of two numeric readings (a number and
// a boolean) each, stamped at the clock's time plus a millisecond per
// message, and waits for their commit.
func (a *testAgent) write(clock *clock.Manual, device string, n int) {
	a.t.Helper()
	want := a.sink.readings.Load() + int64(2*n)
	base := clock.Now()
	for i := range n {
		ts := base.Add(time.Duration(i) * time.Millisecond).Format(time.RFC3339Nano)
		p := fmt.Sprintf(`{"temp": %d.25, "door_open": %t, "ts": %q}`, i, i%2 == 0, ts)
		if err := a.in.Handle(&testMsg{topic: "devices/" + device + "/telemetry", payload: []byte(p), id: uint16(a.msgID.Add(1))}); err != nil {
			a.t.Fatalf("Handle: %v", err)
		}
	}
	a.written += 2 * n
	eventually(a.t, fmt.Sprintf("%d readings committed", want), func() bool { return a.sink.readings.Load() >= want })
}

// writeText hands one SenML message with a string reading.
func (a *testAgent) writeText(clock *clock.Manual, device string) {
	a.t.Helper()
	want := a.sink.readings.Load() + 1
	t := float64(clock.Now().UnixMicro()) / 1e6
	p := fmt.Sprintf(`[{"n":"status","vs":"running","t":%.6f}]`, t)
	if err := a.in.Handle(&testMsg{topic: "devices/" + device + "/telemetry", payload: []byte(p), id: uint16(a.msgID.Add(1))}); err != nil {
		a.t.Fatalf("Handle: %v", err)
	}
	eventually(a.t, "text reading committed", func() bool { return a.sink.readings.Load() >= want })
}

// eventually polls cond in real time for up to 20 seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// settle waits until n loops are parked on clock timers and no request
// is in flight, and the key watch loop, when there is one, is parked as
// well: on the clock, or in a request the server holds.
func settle(t *testing.T, clock *clock.Manual, tr *faultTransport, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d loops waiting on the clock (and the key watch parked)", n), func() bool {
		want := n + 1 // the control plane's key check ticker (newCPWith)
		if tr.ingestTicker.Load() {
			want++
		}
		if up := tr.up.Load(); tr.watchLoop.Load() && up != nil && up.Status().Enrolled {
			want++ // before enrollment the key watch waits for it, not on the clock
		}
		return clock.Waiters()+int(tr.watching.Load()) == want && tr.inflight.Load() == 0
	})
}

// advanceUntil moves the clock by step (after letting n loops settle)
// until cond holds, failing after limit of clock time.
func advanceUntil(t *testing.T, clock *clock.Manual, tr *faultTransport, n int, step, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	start := clock.Now()
	for !cond() {
		if clock.Now().Sub(start) > limit {
			t.Fatalf("%s: not reached after %s of clock time", what, limit)
		}
		settle(t, clock, tr, n)
		if cond() {
			return
		}
		clock.Advance(step)
	}
}

// testKeyring is a Keyring kept in memory (a process that never
// restarts): an X-Wing key pair made once, and a dkms keyring on the
// test's clock, opened once and handed out again on later opens.
type testKeyring struct {
	t       *testing.T
	sk      *pqcrypto.PrivateKey
	device  *pqcrypto.DataKey
	clock   clock.Clock
	reg     *prometheus.Registry // the keyring's metrics
	changed atomic.Int64         // KeysChanged calls

	mu    sync.Mutex
	ak    *dkms.AgentKeys
	opens int
}

var keyringSeed atomic.Uint32

func newTestKeyring(t *testing.T, clock clock.Clock) *testKeyring {
	t.Helper()
	var seed [32]byte
	seed[0] = byte(keyringSeed.Add(1))
	sk, err := pqcrypto.NewXWingKeyFromSeed(seed[:])
	if err != nil {
		t.Fatal(err)
	}
	seed[1] = 0xde
	device, err := dkms.NewDeviceKey(seed[:])
	if err != nil {
		t.Fatal(err)
	}
	return &testKeyring{t: t, sk: sk, device: device, clock: clock, reg: prometheus.NewRegistry()}
}

// forget drops the opened keyring, as a new process with an empty
// keyring file would hold, keeping the X-Wing key.
func (k *testKeyring) forget() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ak = nil
	k.reg = prometheus.NewRegistry()
}

func (k *testKeyring) XWingPublic() []byte { return k.sk.Public().Bytes() }

func (k *testKeyring) Open(ctx context.Context, agentID string, cp *pqcrypto.VerifyingKey) (*dkms.AgentKeys, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.opens++
	if k.ak != nil {
		return k.ak, nil
	}
	ak, err := dkms.OpenAgentKeys(ctx, dkms.AgentConfig{
		AgentID: agentID, PrivateKey: k.sk, ControlPlaneKey: cp, DeviceKey: k.device,
		Clock: k.clock, Logger: slog.New(slog.DiscardHandler), Registry: k.reg,
	})
	if err != nil {
		return nil, err
	}
	k.ak = ak
	return ak, nil
}
