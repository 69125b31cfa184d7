package uplink

import (
	"context"
	"crypto"
	crand "crypto/rand"
	"crypto/tls"
	"fmt"
	"github.com/edgefleet/edgefleet/clock"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/internal/buildinfo"
)

// Outbox is where telemetry comes from; *ingest.Store satisfies it.
type Outbox interface {
	ClaimOutbox(ctx context.Context, max int, lease time.Duration) ([]ingest.OutboxBatch, error)
	AckOutbox(ctx context.Context, seqs ...int64) (int, error)
	ReleaseOutbox(ctx context.Context, seqs ...int64) error
}

// Deps are the uplink's effects. Nil fields take the production default.
type Deps struct {
	// Logger receives the uplink's logs (nil: discarded).
	Logger *slog.Logger
	// Registry receives the metrics (nil: not registered).
	Registry *prometheus.Registry
	// Clock drives intervals, back-off and the breaker (nil: clock.Real()).
	Clock clock.Clock
	// Rand supplies back-off jitter (nil: seeded from crypto/rand). The
	// uplink serializes its use.
	Rand *rand.Rand
	// Transport, when set, replaces the uplink's own HTTP transport and
	// is used as-is for every request: it must do TLS itself, including
	// the agent's client certificate, which only the uplink holds. To
	// observe or fail requests (tests, simulated outages) use
	// WrapTransport instead.
	Transport http.RoundTripper
	// WrapTransport, when set, wraps the transport the uplink builds
	// (TLS 1.3 verified with the control plane CA, with the agent's
	// client certificate once enrolled), or Transport when that is set.
	// It is called once for the enrollment client and once for the
	// enrolled client.
	WrapTransport func(http.RoundTripper) http.RoundTripper
	// Outbox is the telemetry to upload (nil: heartbeats only).
	Outbox Outbox
	// Status builds each heartbeat's contents (health, resources). Empty
	// Name, Version, OS and Arch are filled in with the agent's name and
	// build. Nil sends those four fields only.
	Status func() cpapi.Heartbeat
	// Keyring is the agent's key material: its X-Wing key is registered
	// at enrollment, key messages are fetched into it, and uploads are
	// sealed with it. Required with seal_telemetry (the default); nil
	// registers no X-Wing key and fetches no keys.
	Keyring Keyring
	// KeysChanged is called, on the key watch loop, after every key fetch
	// that accepted at least one key message. It must not block.
	KeysChanged func()
	// KeyRelay, when set, receives after every acknowledged heartbeat
	// (once the agent's own keys were fetched) a page of key messages the
	// control plane holds for OTHER agents that are behind (GET
	// /v1/agent/keys/relay), to pass on over gossip. The messages are
	// sealed to their recipients; nothing here can open them. Called on
	// the heartbeat loop; it must not block for long.
	KeyRelay func(ctx context.Context, entries []cpapi.AgentKeysRelayEntry)
}

// Status is the uplink's state, as served by the agent's GET /v1/uplink.
type Status struct {
	// Enabled is false when no control plane is configured.
	Enabled bool `json:"enabled"`
	// Enrolled is true once the agent holds its identity.
	Enrolled bool `json:"enrolled"`
	// Decommissioned is true while the control plane refuses the agent's
	// certificate (decommissioned or revoked).
	Decommissioned bool   `json:"decommissioned"`
	AgentID        string `json:"agent_id"`
	Server         string `json:"server"`
	// Breaker is closed, open or half-open.
	Breaker             string `json:"breaker"`
	ConsecutiveFailures int    `json:"consecutive_failures"`
	// LastHeartbeat is when the last acknowledged heartbeat was sent.
	LastHeartbeat time.Time `json:"last_heartbeat"`
	// LastUpload is when an outbox batch was last delivered.
	LastUpload time.Time `json:"last_upload"`
	// LastError is the latest error not yet followed by a success of the
	// same kind of request.
	LastError  string `json:"last_error,omitempty"`
	Heartbeats int64  `json:"heartbeats"`
	// UploadedBatches counts outbox batches delivered and acknowledged,
	// DuplicateBatches those of them the control plane already had (a
	// retry), UploadedReadings the readings it stored.
	UploadedBatches  int64 `json:"uploaded_batches"`
	UploadedReadings int64 `json:"uploaded_readings"`
	DuplicateBatches int64 `json:"duplicate_batches"`
	// SkippedReadings counts outbox readings not uploaded (strings and
	// data, and values the control plane would refuse).
	SkippedReadings int64 `json:"skipped_readings"`
	// SealTelemetry is true when uploads are sealed (seal_telemetry).
	SealTelemetry bool `json:"seal_telemetry"`
	// UploadsWaiting says why uploads wait in the outbox ("" while they
	// flow): no telemetry key yet, or the control plane's key service is
	// sealed.
	UploadsWaiting string `json:"uploads_waiting,omitempty"`
	// KeysSealed is true while the control plane's key service answers
	// that it is sealed.
	KeysSealed bool `json:"keys_sealed"`
	// KeyVersions maps each key the agent holds to its primary version.
	KeyVersions map[string]uint32 `json:"key_versions,omitempty"`
	// LastKeyFetch is when key messages were last fetched.
	LastKeyFetch time.Time `json:"last_key_fetch"`
}

// Uplink is the agent's side of the control plane: enrollment, heartbeats
// and telemetry upload from the outbox. It never stops the agent: while
// the control plane is unreachable it backs off, its circuit breaker
// spares the server, and the outbox keeps the telemetry until it is
// delivered.
type Uplink struct {
	cfg     Config
	dataDir string
	idDir   string
	name    string
	deps    Deps
	log     *slog.Logger
	clock   clock.Clock
	m       *metrics
	br      *breaker
	wake    chan struct{}
	lease   time.Duration
	enc     cpapi.TelemetryEncoder // used by the upload loop only

	randMu sync.Mutex
	rnd    *rand.Rand

	lifeMu  sync.Mutex
	started bool
	stopped bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	enrolledCh chan struct{} // closed once an identity is set

	mu             sync.Mutex // guards everything below
	id             *identity
	client         *cpapi.Client
	idle           []interface{ CloseIdleConnections() }
	serverInterval time.Duration
	decommissioned bool
	lastHB         time.Time
	lastUpload     time.Time
	errs           map[string]opError
	heartbeats     int64
	upBatches      int64
	upReadings     int64
	dupBatches     int64
	skipped        int64
	keys           *dkms.AgentKeys
	relayCursor    string
	keyCursor      string // of the last fetch whose messages were all accepted
	keysSealed     bool
	keyConflict    bool          // the control plane has no X-Wing key for the agent
	keyringFailed  bool          // opening the keyring failed (logged once)
	watchOff       bool          // the control plane refused "wait": fetch per heartbeat interval
	hbAcked        chan struct{} // closed and replaced at every acknowledged heartbeat
	watchAbort     func()        // cancels the held key request, nil when none
	watchDone      chan struct{}
	lastKeyFetch   time.Time
	waiting        string // why uploads wait; "" while they flow
}

type opError struct {
	msg string
	at  time.Time
	seq int64
}

// New validates cfg (see Config.Validate) and prepares an uplink; it does
// no I/O. dataDir is the agent's data dir (the identity lives in
// dataDir/controlplane/); name is the agent's node name, sent at
// enrollment and in heartbeats.
func New(cfg Config, dataDir, name string, deps Deps) (*Uplink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Enabled() && dataDir == "" {
		return nil, fmt.Errorf("%w: the agent's data dir is required with url", ErrInvalidConfig)
	}
	if cfg.Enabled() && cfg.Seals() && deps.Keyring == nil {
		return nil, fmt.Errorf("%w: seal_telemetry: sealing uploads needs the agent keyring (Deps.Keyring)", ErrInvalidConfig)
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	if deps.Clock == nil {
		deps.Clock = clock.Real()
	}
	if deps.Rand == nil {
		var seed [32]byte
		if _, err := crand.Read(seed[:]); err != nil {
			return nil, fmt.Errorf("uplink: seed jitter: %w", err)
		}
		deps.Rand = rand.New(rand.NewChaCha8(seed))
	}
	m, err := newMetrics(deps.Registry)
	if err != nil {
		return nil, err
	}
	u := &Uplink{
		cfg: cfg, dataDir: dataDir, idDir: filepath.Join(dataDir, IdentityDir), name: name, deps: deps,
		log: deps.Logger.With("component", "uplink"), clock: deps.Clock, m: m, rnd: deps.Rand,
		wake: make(chan struct{}, 1), hbAcked: make(chan struct{}), enrolledCh: make(chan struct{}), errs: map[string]opError{},
		// The upload loop is the outbox's only reader and releases what it
		// does not deliver, so the lease matters only after a crash: the
		// batches of an interrupted round are offered again after it. It
		// covers a round of requests that all time out.
		lease: cfg.RequestTimeout * time.Duration(cfg.UploadBatches+2),
	}
	u.br = newBreaker(cfg.BreakerFailures, cfg.BreakerCooldown, deps.Clock, u.breakerChanged)
	return u, nil
}

func (u *Uplink) breakerChanged(from, to string, failures int) {
	u.m.breaker.Set(breakerGauge(to))
	switch to {
	case BreakerOpen:
		if from == BreakerClosed {
			u.log.Warn("control plane unreachable: circuit breaker open", "failures", failures, "cooldown", u.cfg.BreakerCooldown)
		} else {
			u.log.Debug("circuit breaker probe failed; open again", "cooldown", u.cfg.BreakerCooldown)
		}
	case BreakerHalfOpen:
		u.log.Debug("circuit breaker half-open: probing the control plane")
	case BreakerClosed:
		u.log.Info("control plane reachable again: circuit breaker closed")
	}
}

// Start loads the identity stored in dataDir/controlplane/ or, without
// one, starts enrolling in the background with the configured token
// (retried with back-off while the control plane is unreachable; a
// refused token is logged and reported in Status, and never stops the
// agent). It then starts the heartbeat and upload loops, which run until
// Stop. ctx bounds the start-up only. Start returns an error only for
// local problems waiting cannot fix: an unusable stored identity
// (ErrIdentity), no identity and no token (ErrNoEnrollmentToken), an
// unreadable token file or CA file. Without a URL it does nothing.
func (u *Uplink) Start(ctx context.Context) error {
	u.lifeMu.Lock()
	defer u.lifeMu.Unlock()
	if u.started || u.stopped {
		return ErrAlreadyStarted
	}
	if !u.cfg.Enabled() {
		u.started = true
		return nil
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("uplink: start: %w", err)
	}
	if err := os.MkdirAll(u.idDir, 0o700); err != nil {
		return fmt.Errorf("uplink: identity dir: %w", err)
	}
	id, err := loadIdentity(u.idDir)
	if err != nil {
		u.setError("enroll", err)
		return fmt.Errorf("%w (move %s aside to enroll again)", err, u.idDir)
	}
	var enroll func(context.Context)
	if id == nil {
		token, err := u.readToken()
		if err != nil {
			return err
		}
		if token == "" {
			return ErrNoEnrollmentToken
		}
		if u.cfg.CAFile == "" {
			return fmt.Errorf("%w: ca_file: required to enroll (edgectl controlplane writes DIR/ca.pem)", ErrInvalidConfig)
		}
		caPEM, err := os.ReadFile(u.cfg.CAFile)
		if err != nil {
			return fmt.Errorf("uplink: ca_file: %w", err)
		}
		if _, err := cpapi.CertPoolFromPEM(caPEM); err != nil {
			return fmt.Errorf("uplink: ca_file %s: %w", u.cfg.CAFile, err)
		}
		key, err := enrollmentKey(u.idDir)
		if err != nil {
			return err
		}
		client, err := u.newClient(caPEM, nil)
		if err != nil {
			return err
		}
		enroll = func(ctx context.Context) { u.enrollLoop(ctx, client, key, token) }
	} else {
		if _, err := os.Stat(filepath.Join(u.idDir, IdentityFile)); err != nil {
			id.Server = u.cfg.URL
			if err := writeIdentityRecord(u.idDir, id.identityRecord); err != nil {
				u.log.Warn("could not rewrite identity record", "err", err)
			} else {
				u.log.Info("identity record recovered from the stored certificate", "agent_id", id.AgentID)
			}
		}
		if id.Server != "" && id.Server != u.cfg.URL {
			u.log.Warn("control plane URL differs from the one the agent enrolled with; using the configured one",
				"enrolled_with", id.Server, "url", u.cfg.URL)
		}
		if err := u.setIdentity(id); err != nil {
			return err
		}
		if _, err := u.openKeyring(ctx, id); err != nil {
			u.setError("keys", err)
			return err
		}
		u.log.Info("loaded control plane identity", "agent_id", id.AgentID, "server", u.cfg.URL)
		if left := id.cert.Leaf.NotAfter.Sub(u.clock.Now()); left < 30*24*time.Hour {
			u.log.Warn("agent certificate expires soon or has expired", "not_after", id.cert.Leaf.NotAfter)
		}
	}
	lctx, cancel := context.WithCancel(context.Background())
	u.cancel = cancel
	u.started = true
	if enroll != nil {
		u.run(lctx, enroll)
	}
	u.run(lctx, u.heartbeatLoop)
	if u.deps.Keyring != nil {
		u.run(lctx, u.keyWatchLoop)
	}
	if u.deps.Outbox != nil {
		u.run(lctx, u.uploadLoop)
	}
	return nil
}

func (u *Uplink) run(ctx context.Context, f func(context.Context)) {
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		f(ctx)
	}()
}

// Stop ends the loops, waiting for requests in flight to be abandoned,
// and releases the outbox batches the uploader held. Call it before
// closing the outbox's store.
func (u *Uplink) Stop() {
	u.lifeMu.Lock()
	defer u.lifeMu.Unlock()
	if u.stopped {
		return
	}
	u.stopped = true
	if u.cancel != nil {
		u.cancel()
	}
	u.wg.Wait()
	u.mu.Lock()
	idle := u.idle
	u.mu.Unlock()
	for _, c := range idle {
		c.CloseIdleConnections()
	}
}

// Committed implements ingest.Sink: a commit that wrote an outbox batch
// wakes the uploader. It never blocks.
func (u *Uplink) Committed(c ingest.Commit) {
	if c.Seq == 0 {
		return
	}
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// Status returns the uplink's current state.
func (u *Uplink) Status() Status {
	st := Status{Enabled: u.cfg.Enabled()}
	if !st.Enabled {
		return st
	}
	st.Server = u.cfg.URL
	st.Breaker, st.ConsecutiveFailures = u.br.snapshot()
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.id != nil {
		st.Enrolled, st.AgentID = true, u.id.AgentID
	}
	st.Decommissioned = u.decommissioned
	st.LastHeartbeat, st.LastUpload = u.lastHB, u.lastUpload
	var latest opError
	for _, e := range u.errs {
		if e.seq > latest.seq {
			latest = e
		}
	}
	st.LastError = latest.msg
	st.Heartbeats = u.heartbeats
	st.UploadedBatches, st.UploadedReadings, st.DuplicateBatches = u.upBatches, u.upReadings, u.dupBatches
	st.SkippedReadings = u.skipped
	st.SealTelemetry = u.cfg.Seals()
	st.UploadsWaiting, st.KeysSealed, st.LastKeyFetch = u.waiting, u.keysSealed, u.lastKeyFetch
	st.KeyVersions = keyVersions(u.keys)
	return st
}

// readToken returns the configured enrollment token ("" when none).
func (u *Uplink) readToken() (string, error) {
	if u.cfg.EnrollmentTokenFile == "" {
		return u.cfg.EnrollmentToken, nil
	}
	b, err := os.ReadFile(u.cfg.EnrollmentTokenFile)
	if err != nil {
		return "", fmt.Errorf("uplink: enrollment_token_file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// newClient builds a control plane client verifying the server with caPEM
// and presenting cert (nil while enrolling).
func (u *Uplink) newClient(caPEM []byte, cert *tls.Certificate) (*cpapi.Client, error) {
	rt := u.deps.Transport
	if rt == nil {
		tconf, err := cpapi.ClientTLSConfig(caPEM, cert)
		if err != nil {
			return nil, fmt.Errorf("uplink: TLS config: %w", err)
		}
		t := &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			TLSClientConfig:     tconf,
			TLSHandshakeTimeout: u.cfg.RequestTimeout,
			// No ResponseHeaderTimeout: the key watch's request is held
			// by the server; every request is bounded by its context
			// (RequestTimeout, or KeyWatchWait + RequestTimeout).
			MaxIdleConns:        2,
			MaxIdleConnsPerHost: 2,
			IdleConnTimeout:     90 * time.Second,
		}
		u.mu.Lock()
		u.idle = append(u.idle, t)
		u.mu.Unlock()
		rt = t
	}
	if u.deps.WrapTransport != nil {
		rt = u.deps.WrapTransport(rt)
	}
	c, err := cpapi.NewClient(cpapi.ClientConfig{
		URL: u.cfg.URL, CAPEM: caPEM, Certificate: cert, Timeout: u.cfg.RequestTimeout, Transport: rt,
		UserAgent: "edgefleet-agent/" + buildinfo.Get().Version,
	})
	if err != nil {
		return nil, fmt.Errorf("uplink: %w", err)
	}
	return c, nil
}

// setIdentity makes id the agent's identity and builds its mTLS client.
func (u *Uplink) setIdentity(id *identity) error {
	c, err := u.newClient(id.caPEM, &id.cert)
	if err != nil {
		return err
	}
	u.mu.Lock()
	u.id, u.client = id, c
	u.mu.Unlock()
	u.m.enrolled.Set(1)
	close(u.enrolledCh)
	return nil
}

func (u *Uplink) agentClient() *cpapi.Client {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.client
}

// setError records err as the latest error of op.
func (u *Uplink) setError(op string, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	var max int64
	for _, e := range u.errs {
		max = maxInt(max, e.seq)
	}
	u.errs[op] = opError{msg: err.Error(), at: u.clock.Now(), seq: max + 1}
}

func maxInt(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// succeeded clears op's error and, since the control plane accepted the
// agent's certificate, the decommissioned state.
func (u *Uplink) succeeded(op string, agentCall bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.errs, op)
	if agentCall && u.decommissioned {
		u.decommissioned = false
		u.m.decommiss.Set(0)
		u.log.Info("control plane accepts the agent's certificate again")
	}
}

// refused records a 401/403 on an agent call: the agent was
// decommissioned or its certificate revoked.
func (u *Uplink) refused(op string, err error) {
	u.setError(op, err)
	u.mu.Lock()
	first := !u.decommissioned
	u.decommissioned = true
	id := ""
	if u.id != nil {
		id = u.id.AgentID
	}
	u.mu.Unlock()
	u.m.decommiss.Set(1)
	if first {
		u.log.Error("control plane refuses this agent: decommissioned or certificate revoked; "+
			"heartbeats and uploads now retry only every backoff_max, telemetry stays in the outbox. "+
			"To enroll again, move the identity folder aside and configure a new enrollment token",
			"agent_id", id, "identity_dir", u.idDir, "retry_every", u.cfg.BackoffMax, "err", err)
	}
}

// backoff returns the wait after the n-th consecutive failure (n >= 1): a
// uniformly random duration in [BackoffMin, min(BackoffMax,
// BackoffMin×2^(n-1))].
func (u *Uplink) backoff(n int) time.Duration {
	lo, hi := u.cfg.BackoffMin, u.cfg.BackoffMax
	if n < 1 {
		n = 1
	}
	if n-1 < 40 {
		if c := lo << (n - 1); c > 0 && c < hi {
			hi = c
		}
	}
	if hi <= lo {
		return lo
	}
	u.randMu.Lock()
	defer u.randMu.Unlock()
	return lo + time.Duration(u.rnd.Int64N(int64(hi-lo)+1))
}

// sleep waits d on the clock. wake, if not nil, ends the wait early. It
// returns false when ctx ends first.
func (u *Uplink) sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := u.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	case <-wake:
		return true
	}
}

// waitReady waits until the breaker would let a request through; false
// when ctx ends first.
func (u *Uplink) waitReady(ctx context.Context) bool {
	for {
		ok, retryAt, closed := u.br.ready()
		if ok {
			return true
		}
		t := u.clock.NewTimer(retryAt.Sub(u.clock.Now()))
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C():
		case <-closed:
		}
		t.Stop()
	}
}

func (u *Uplink) waitEnrolled(ctx context.Context) bool {
	select {
	case <-u.enrolledCh:
		return true
	case <-ctx.Done():
		return false
	}
}

// outcomeBlocked: the breaker refused the request; nothing was sent.
const outcomeBlocked outcome = -1

// do sends one request through the breaker, bounded by RequestTimeout,
// and records its metrics. fn returns a result label replacing "ok" on
// success ("" keeps it).
func (u *Uplink) do(ctx context.Context, op string, fn func(context.Context) (string, error)) (outcome, error) {
	return u.doFor(ctx, op, u.cfg.RequestTimeout, fn)
}

// doFor is do bounded by timeout instead of RequestTimeout.
func (u *Uplink) doFor(ctx context.Context, op string, timeout time.Duration, fn func(context.Context) (string, error)) (outcome, error) {
	if ok, _, _ := u.br.allow(); !ok {
		return outcomeBlocked, ErrBreakerOpen
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	start := time.Now()
	label, err := fn(rctx)
	cancel()
	u.m.seconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
	o := classify(ctx, err)
	switch o {
	case outcomeOK, outcomeRejected, outcomeUnauthorized, outcomeSealed:
		u.br.success()
	case outcomeFailed:
		u.br.failure()
	default:
		u.br.abort()
	}
	if o != outcomeOK || label == "" {
		label = o.String()
	}
	u.m.requests.WithLabelValues(op, label).Inc()
	return o, err
}

// enrollLoop enrolls with token until it succeeds, the token is refused,
// or the uplink stops.
func (u *Uplink) enrollLoop(ctx context.Context, client *cpapi.Client, key crypto.Signer, token string) {
	csr, err := cpapi.CreateCSR(key, u.name)
	if err != nil {
		u.setError("enroll", err)
		u.log.Error("cannot enroll: CSR", "err", err)
		return
	}
	bi := buildinfo.Get()
	var xwing []byte
	if u.deps.Keyring != nil {
		xwing = u.deps.Keyring.XWingPublic()
	}
	failures := 0
	for {
		if !u.waitReady(ctx) {
			return
		}
		var resp cpapi.EnrollResponse
		o, err := u.do(ctx, "enroll", func(rctx context.Context) (string, error) {
			var err error
			resp, err = client.Enroll(rctx, cpapi.EnrollRequest{
				Token: token, CSR: csr, Name: u.name, Version: bi.Version, OS: bi.OS, Arch: bi.Arch, XWingPublic: xwing,
			})
			return "", err
		})
		switch o {
		case outcomeCanceled:
			return
		case outcomeBlocked:
			continue
		case outcomeOK:
			id, serr := saveIdentity(u.idDir, key, resp, u.cfg.URL, u.clock.Now())
			if serr != nil {
				u.setError("enroll", serr)
				u.log.Error("enrolled, but could not store or use the identity", "agent_id", resp.AgentID, "err", serr)
				return
			}
			if resp.HeartbeatIntervalSeconds > 0 {
				u.setServerInterval(resp.HeartbeatIntervalSeconds)
			}
			if err := u.setIdentity(id); err != nil {
				u.setError("enroll", err)
				u.log.Error("enrolled, but cannot build the control plane client", "err", err)
				return
			}
			u.succeeded("enroll", false)
			u.log.Info("enrolled with the control plane", "agent_id", id.AgentID, "server", u.cfg.URL, "identity_dir", u.idDir)
			return
		case outcomeFailed:
			failures++
			u.setError("enroll", err)
			d := u.backoff(failures)
			if failures == 1 {
				u.log.Warn("enrollment failed; retrying with back-off", "err", err, "retry_in", d)
			} else {
				u.log.Debug("enrollment failed", "attempt", failures, "err", err, "retry_in", d)
			}
			if !u.sleep(ctx, d, nil) {
				return
			}
		default: // refused: used, expired or unknown token, or a bad request
			u.setError("enroll", fmt.Errorf("uplink: enrollment refused: %w", err))
			if u.cfg.EnrollmentTokenFile == "" {
				u.log.Error("enrollment refused by the control plane; the agent runs without it. "+
					"Create a new token (edgectl tokens create) and restart with it", "err", err)
				return
			}
			u.log.Error("enrollment refused by the control plane; the agent runs without it and "+
				"tries again when the token file changes", "token_file", u.cfg.EnrollmentTokenFile, "err", err)
			for {
				if !u.sleep(ctx, u.cfg.BackoffMax, nil) {
					return
				}
				t, err := u.readToken()
				if err == nil && t != "" && t != token {
					token, failures = t, 0
					u.log.Info("enrollment token file changed; enrolling again")
					break
				}
			}
		}
	}
}

func (u *Uplink) setServerInterval(seconds float64) {
	d := time.Duration(seconds * float64(time.Second))
	d = min(max(d, 100*time.Millisecond), time.Hour)
	u.mu.Lock()
	u.serverInterval = d
	u.mu.Unlock()
}

// heartbeatInterval is the configured interval, else the server's, else 10s.
func (u *Uplink) heartbeatInterval() time.Duration {
	if u.cfg.HeartbeatInterval > 0 {
		return u.cfg.HeartbeatInterval
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.serverInterval > 0 {
		return u.serverInterval
	}
	return 10 * time.Second
}

func (u *Uplink) heartbeatBody() cpapi.Heartbeat {
	var hb cpapi.Heartbeat
	if u.deps.Status != nil {
		hb = u.deps.Status()
	}
	bi := buildinfo.Get()
	if hb.Name == "" {
		hb.Name = u.name
	}
	if hb.Version == "" {
		hb.Version = bi.Version
	}
	if hb.OS == "" {
		hb.OS = bi.OS
	}
	if hb.Arch == "" {
		hb.Arch = bi.Arch
	}
	return hb
}

// heartbeatLoop reports the agent every heartbeat interval, backing off
// while the control plane fails.
func (u *Uplink) heartbeatLoop(ctx context.Context) {
	if !u.waitEnrolled(ctx) {
		return
	}
	client := u.agentClient()
	failures := 0
	for {
		if !u.waitReady(ctx) {
			return
		}
		hb := u.heartbeatBody()
		var resp cpapi.HeartbeatResponse
		o, err := u.do(ctx, "heartbeat", func(rctx context.Context) (string, error) {
			var err error
			resp, err = client.Heartbeat(rctx, hb)
			return "", err
		})
		var next time.Duration
		var wake <-chan struct{} // the breaker closing ends a back-off early
		switch o {
		case outcomeCanceled:
			return
		case outcomeBlocked:
			continue
		case outcomeOK:
			if failures > 0 {
				u.log.Info("heartbeats resumed", "after_failures", failures)
			}
			failures = 0
			if resp.HeartbeatIntervalSeconds > 0 {
				u.setServerInterval(resp.HeartbeatIntervalSeconds)
			}
			u.mu.Lock()
			u.heartbeats++
			u.lastHB = u.clock.Now()
			u.mu.Unlock()
			u.succeeded("heartbeat", true)
			u.heartbeatKeys(ctx, client)
			next = u.heartbeatInterval()
		case outcomeUnauthorized:
			u.refused("heartbeat", err)
			next = u.cfg.BackoffMax
		default:
			failures++
			if o == outcomeFailed {
				u.abortWatch()
			}
			u.setError("heartbeat", err)
			next = u.backoff(failures)
			wake = u.br.closedChan()
			switch {
			case o == outcomeRejected:
				u.log.Error("control plane refused the heartbeat", "err", err, "retry_in", next)
			case failures == 1:
				u.log.Warn("heartbeat failed; retrying with back-off", "err", err, "retry_in", next)
			default:
				u.log.Debug("heartbeat failed", "attempt", failures, "err", err, "retry_in", next)
			}
		}
		if !u.sleep(ctx, next, wake) {
			return
		}
	}
}

// roundResult is how an upload round ended.
type roundResult struct {
	outcome outcome // worst outcome: OK, or what stopped the round
	err     error
	full    bool // claimed UploadBatches and delivered them all: more may be waiting
}

// uploadLoop delivers the outbox: a round claims up to UploadBatches
// batches and sends them one by one; rounds follow each other while the
// outbox is full, then every UploadInterval or commit, and with back-off
// after failures.
func (u *Uplink) uploadLoop(ctx context.Context) {
	if !u.waitEnrolled(ctx) {
		return
	}
	failures := 0
	var next time.Duration
	var wake <-chan struct{}
	var last time.Time // start of the last round
	for {
		if next > 0 {
			if !u.sleep(ctx, next, wake) {
				return
			}
			// Woken by a commit: the commits of the linger go together.
			if wait := u.cfg.UploadLinger - u.clock.Now().Sub(last); wake != nil && wait > 0 && !u.sleep(ctx, wait, nil) {
				return
			}
		}
		if !u.waitReady(ctx) {
			return
		}
		last = u.clock.Now()
		res := u.uploadRound(ctx)
		switch res.outcome {
		case outcomeCanceled:
			return
		case outcomeBlocked:
			next, wake = 0, nil
		case outcomeOK:
			failures = 0
			u.setWaiting("")
			next, wake = u.cfg.UploadInterval, u.wake
			if res.full {
				next = 0
			}
		case outcomeWaiting:
			// No telemetry key: a key fetch that brings one wakes the
			// loop, as commits do.
			failures = 0
			next, wake = u.cfg.UploadInterval, u.wake
		case outcomeSealed:
			// The control plane is up but cannot open envelopes: back off
			// without counting against the breaker.
			failures++
			next, wake = u.backoff(failures), nil
			u.log.Debug("control plane key service sealed; uploads wait", "retry_in", next)
		case outcomeUnauthorized:
			u.refused("upload", res.err)
			next, wake = u.cfg.BackoffMax, nil
		default:
			failures++
			next, wake = u.backoff(failures), u.br.closedChan()
			switch {
			case res.outcome == outcomeRejected:
				u.log.Error("control plane refused an upload; the batch stays in the outbox", "err", res.err, "retry_in", next)
			case failures == 1:
				u.log.Warn("upload failed; retrying with back-off", "err", res.err, "retry_in", next)
			default:
				u.log.Debug("upload failed", "attempt", failures, "err", res.err, "retry_in", next)
			}
		}
	}
}

// detached returns a context for outbox bookkeeping that outlives a
// stopping loop, so deliveries are recorded and leases released.
func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}

// uploadRound claims and sends one round of outbox batches. A batch the
// control plane refuses (4xx) is released and the round goes on; any
// other failure releases the rest of the round and ends it.
func (u *Uplink) uploadRound(ctx context.Context) roundResult {
	var ak *dkms.AgentKeys
	if u.cfg.Seals() {
		var err error
		if ak, err = u.sealer(); err != nil {
			u.setWaiting(strings.TrimPrefix(err.Error(), ErrNoTelemetryKey.Error()+": "))
			return roundResult{outcome: outcomeWaiting, err: err}
		}
	}
	// One batch claimed at a time: only the batch being sent is held in
	// memory (a batch decodes to up to 1,000 readings by default).
	res := roundResult{outcome: outcomeOK}
	client := u.agentClient()
	for range u.cfg.UploadBatches {
		batches, err := u.deps.Outbox.ClaimOutbox(ctx, 1, u.lease)
		if err != nil {
			if ctx.Err() != nil {
				return roundResult{outcome: outcomeCanceled}
			}
			err = fmt.Errorf("uplink: claim outbox: %w", err)
			u.setError("upload", err)
			return roundResult{outcome: outcomeFailed, err: err}
		}
		if len(batches) == 0 {
			return res
		}
		b := batches[0]
		o, err := u.sendBatch(ctx, client, ak, b)
		switch o {
		case outcomeOK:
			continue
		case outcomeRejected:
			// Kept leased: offered again when the lease ends, while the
			// other batches go on.
			u.setError("upload", err)
			res.outcome, res.err = outcomeRejected, err
			continue
		}
		// Failed, refused, sealed, blocked or stopping: give it back.
		switch o {
		case outcomeSealed:
			u.setWaiting("the control plane's key service is sealed")
		case outcomeCanceled, outcomeBlocked:
		default:
			u.setError("upload", err)
		}
		u.release(ctx, b.Seq)
		return roundResult{outcome: o, err: err}
	}
	// Every claim found a batch: more may be waiting.
	res.full = res.outcome == outcomeOK
	return res
}

func (u *Uplink) release(ctx context.Context, seqs ...int64) {
	dctx, cancel := detached(ctx)
	defer cancel()
	if err := u.deps.Outbox.ReleaseOutbox(dctx, seqs...); err != nil {
		u.log.Warn("could not release outbox batches; they are offered again when their lease ends",
			"batches", len(seqs), "lease", u.lease, "err", err)
	}
}

// sendBatch uploads one outbox batch (in parts when it is large), sealed
// with ak unless it is nil, and acknowledges it in the outbox.
func (u *Uplink) sendBatch(ctx context.Context, client *cpapi.Client, ak *dkms.AgentKeys, b ingest.OutboxBatch) (outcome, error) {
	conv := convertBatch(b)
	accepted, dup := 0, false
	agentID := ""
	if ak != nil {
		agentID = ak.ID()
	}
	for _, part := range conv.parts {
		data, err := u.enc.Encode(part)
		if err != nil {
			return outcomeRejected, fmt.Errorf("uplink: outbox batch %d: %w", b.Seq, err)
		}
		if ak != nil {
			// Sealed anew on every attempt, under the primary version held
			// now; the control plane recognizes a retry by batch_seq.
			env, err := ak.Encrypt(ctx, cpapi.TelemetryKeyName, data, cpapi.TelemetryAAD(agentID, part.BatchSeq))
			clear(data)
			if err != nil {
				return outcomeWaiting, fmt.Errorf("uplink: sealing outbox batch %d: %w", b.Seq, err)
			}
			data = env
		}
		var res cpapi.IngestResult
		o, err := u.do(ctx, "upload", func(rctx context.Context) (string, error) {
			var err error
			if ak != nil {
				res, err = client.UploadTelemetrySealed(rctx, agentID, part.BatchSeq, data)
			} else {
				res, err = client.UploadTelemetryEncoded(rctx, data)
			}
			if err == nil && res.Duplicate {
				return "duplicate", nil
			}
			return "", err
		})
		if o != outcomeOK {
			if err != nil {
				err = fmt.Errorf("uplink: outbox batch %d (batch_seq %d): %w", b.Seq, part.BatchSeq, err)
			}
			return o, err
		}
		accepted += res.Accepted
		dup = dup || res.Duplicate
	}
	dctx, cancel := detached(ctx)
	_, err := u.deps.Outbox.AckOutbox(dctx, b.Seq)
	cancel()
	if err != nil {
		// Delivered but still in the outbox: it is sent again after its
		// lease and the control plane recognizes it.
		u.log.Warn("could not acknowledge a delivered outbox batch", "seq", b.Seq, "err", err)
	}
	skipped := 0
	for reason, n := range conv.skipped {
		u.m.skipped.WithLabelValues(reason).Add(float64(n))
		skipped += n
	}
	u.m.batches.Inc()
	u.m.readings.Add(float64(accepted))
	u.mu.Lock()
	u.upBatches++
	u.upReadings += int64(accepted)
	if dup {
		u.dupBatches++
	}
	u.skipped += int64(skipped)
	u.lastUpload = u.clock.Now()
	u.mu.Unlock()
	if len(conv.parts) > 0 {
		u.succeeded("upload", true)
	}
	return outcomeOK, nil
}
