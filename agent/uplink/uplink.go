package uplink

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/agent/modelsync"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/fedlearn/secagg"
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
	// DeferUpload, when set, is asked before telemetry waiting in the
	// outbox is uploaded: it returns when the upload may start (the
	// agent's deferrable-work scheduler: the greenest start within a
	// window), and done is called once the outbox has been drained. The
	// readings stay in the outbox meanwhile (acknowledged to their
	// devices, durable); uploads then go in bulk.
	DeferUpload func(ctx context.Context) (done func(), err error)
	// DeferModelUpdate, when set, is asked before models the control
	// plane assigns and the runtime does not serve are fetched and
	// installed (removals are not held): it returns when the update may
	// start, and done is called after it. The models serving keep serving
	// meanwhile.
	DeferModelUpdate func(ctx context.Context) (done func(), err error)
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
	// Revocations, when set, receives the control plane's signed
	// revocation list (dkms.RevocationList, binary) with every key answer
	// that carries one. Called on the key watch loop; it must not block
	// for long.
	Revocations func(ctx context.Context, list []byte)
	// Models, when set, is the agent's model runtime: the uplink watches
	// the agent's model assignments and installs each assigned version it
	// does not serve yet (see models.go). Needs Keyring (model files are
	// sealed to the agent's key). Nil fetches no models.
	Models modelsync.ModelInstaller
	// FL, when set, trains the federated-learning round tasks the control
	// plane gives the agent (see fl.go). Needs Keyring (updates are
	// sealed under the telemetry key). Nil takes part in no round.
	FL FLTrainer
	// Devices, when set, applies the control plane's device identity
	// changes (see devices.go). Nil follows none.
	Devices DeviceSink
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

	// sa holds the agent's side of its secure-aggregation rounds by task
	// key, oldest first in saOrder; the fl loop alone touches them.
	sa      map[string]*secagg.Client
	saOrder []string

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
	conflicts      int64
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
	modelCursor    string        // of the last assignments all installed
	modelAbort     func()        // cancels the held model request, nil when none
	modelDone      chan struct{} // closed when that request returned
	deviceAbort    func()        // cancels the held device request, nil when none
	deviceDone     chan struct{} // closed when that request returned
	waiting        string        // why uploads wait; "" while they flow
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
	if deps.Models != nil && deps.Keyring == nil {
		return nil, fmt.Errorf("%w: receiving models needs the agent keyring (Deps.Keyring): they are sealed to the agent's key", ErrInvalidConfig)
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
	if u.deps.Models != nil {
		u.run(lctx, u.modelWatchLoop)
	}
	if u.deps.Devices != nil {
		u.run(lctx, u.deviceWatchLoop)
	}
	if u.deps.FL != nil && u.deps.Keyring != nil {
		u.run(lctx, u.flLoop)
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
