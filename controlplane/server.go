package controlplane

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/sqliteerr"
)

// Server is the control plane HTTP server. Create it with New, then Start
// (or Serve) it, and Close it when done.
type Server struct {
	cfg       Config
	log       *slog.Logger
	store     Store
	ownsStore bool
	ca        *authority
	tlsConfig *tls.Config
	metrics   *metrics
	routes    []route
	handler   http.Handler
	started   time.Time

	revokedMu sync.RWMutex
	revoked   map[string]struct{}

	keys    *keyState
	models  *modelState
	devices *deviceState
	fl      *flState

	mu       sync.Mutex
	ln       net.Listener
	srv      *http.Server
	serveErr chan error
	closed   bool
}

// New validates cfg, prepares DataDir (CA, server certificate, admin token)
// and opens the store. It does not listen yet; call Start or Serve.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("controlplane: data dir: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "controlplane"), revoked: map[string]struct{}{},
		models: &modelState{watch: newKeyWatch()}, devices: &deviceState{watch: newKeyWatch()}, fl: newFLState()}
	now := cfg.Clock.Now()
	s.started = now

	ca, created, err := loadOrCreateCA(cfg.DataDir, now, cfg.Rand, s.log)
	if err != nil {
		return nil, err
	}
	s.ca = ca
	caPath := filepath.Join(cfg.DataDir, CAFile)
	if created {
		s.log.Info("created certificate authority", "ca", caPath)
	}
	serverCert, err := loadOrCreateServerCert(cfg.DataDir, ca, cfg.Listen, cfg.Hostnames, now, cfg.Rand, s.log)
	if err != nil {
		return nil, err
	}

	if m, err := newMetrics(cfg.Registry); err != nil {
		return nil, fmt.Errorf("controlplane: register metrics: %w", err)
	} else {
		s.metrics = m
	}

	if cfg.Store != nil {
		s.store = cfg.Store
	} else {
		opts := cfg.SQLite
		if opts.Logger == nil {
			opts.Logger = s.log
		}
		st, err := OpenSQLite(filepath.Join(cfg.DataDir, DatabaseFile), opts)
		if err != nil {
			return nil, err
		}
		s.store, s.ownsStore = st, true
	}
	ctx := context.Background()
	adminPath, err := s.bootstrapAdmin(ctx)
	if err != nil {
		s.closeStore()
		return nil, err
	}
	serials, err := s.store.RevokedSerials(ctx)
	if err != nil {
		s.closeStore()
		return nil, err
	}
	for _, sn := range serials {
		s.revoked[sn] = struct{}{}
	}
	if err := s.openKeys(ctx); err != nil {
		s.closeStore()
		return nil, err
	}
	s.log.Info("control plane ready", "ca", caPath, "admin_token", adminPath, "data", cfg.DataDir)

	s.tlsConfig = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{serverCert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.pool,
		Time:         cfg.Clock.Now,
		// CurvePreferences is left nil on purpose: Go's default prefers
		// the hybrid post-quantum X25519MLKEM768 key exchange.
	}
	s.routes = s.buildRoutes()
	s.handler = s.buildHandler()
	return s, nil
}

func (s *Server) closeStore() {
	if s.ownsStore {
		s.store.Close()
	}
}

// hashToken is the stored form of a token secret.
func hashToken(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// newSecret returns prefix + 32 random bytes, base64url.
func newSecret(r io.Reader, prefix string) (string, error) {
	b := make([]byte, 32)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", fmt.Errorf("controlplane: random token: %w", err)
	}
	return prefix + base64.RawURLEncoding.EncodeToString(b), nil
}

// newID returns prefix + 16 lowercase hex digits.
func newID(r io.Reader, prefix string) (string, error) {
	b := make([]byte, 8)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", fmt.Errorf("controlplane: random id: %w", err)
	}
	return prefix + hex.EncodeToString(b), nil
}

// Secret prefixes make leaked tokens recognisable.
const (
	apiTokenPrefix        = "efp_"
	enrollmentTokenPrefix = "efe_"
)

// bootstrapAdmin makes sure DataDir/admin.token holds a usable admin token.
func (s *Server) bootstrapAdmin(ctx context.Context) (string, error) {
	path := filepath.Join(s.cfg.DataDir, AdminTokenFile)
	b, err := readSecretFile(path, s.log)
	switch {
	case err == nil:
		secret := strings.TrimSpace(string(b))
		tok, lerr := s.store.LookupAPIToken(ctx, hashToken(secret))
		if lerr == nil {
			if tok.RevokedAt != nil {
				s.log.Warn("admin token in file is revoked; create a new admin token with another admin token", "path", path)
			}
			return path, nil
		}
		if !errors.Is(lerr, cpapi.ErrNotFound) {
			return "", lerr
		}
		s.log.Warn("admin token file is not known to the store; issuing a new admin token", "path", path)
	case errors.Is(err, fs.ErrNotExist):
	default:
		return "", err
	}
	secret, err := newSecret(s.cfg.Rand, apiTokenPrefix)
	if err != nil {
		return "", err
	}
	id, err := newID(s.cfg.Rand, "tok_")
	if err != nil {
		return "", err
	}
	now := s.cfg.Clock.Now()
	tok := cpapi.APIToken{ID: id, Hash: hashToken(secret), Name: "bootstrap admin", Role: cpapi.RoleAdmin, CreatedAt: now, CreatedBy: "system"}
	// Write the file first: a token stored without its file could never
	// be used, while a file without a stored token is replaced next start.
	if err := writeFileAtomic(path, []byte(secret+"\n"), 0o600); err != nil {
		return "", err
	}
	if err := s.store.CreateAPIToken(ctx, tok, AuditEntry{Time: now, Actor: "system", Action: "token.create", Target: id, Result: "ok"}); err != nil {
		return "", err
	}
	s.log.Info("created admin API token", "path", path, "token_id", id)
	return path, nil
}

// Start listens on Config.Listen and serves in the background.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.srv != nil {
		return errors.New("controlplane: server already started")
	}
	ln, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("controlplane: listen %s: %w", s.cfg.Listen, err)
	}
	var protos http.Protocols
	// HTTP/1.1 only: every agent holds one long-lived connection of its
	// own (its identity is its client certificate), requests are small,
	// and an idle HTTP/1.1 connection costs the server less memory than
	// an HTTP/2 one.
	protos.SetHTTP1(true)
	conf := s.tlsConfig.Clone()
	conf.NextProtos = []string{"http/1.1"}
	hl := newHandshakeListener(ln, conf, handshakeParallel, 10*time.Second, s.log)
	// ReadTimeout and WriteTimeout bound every request but held key
	// requests (GET /v1/agent/keys with wait), which move their
	// connection's deadlines to wait + KeyWatchDeadlineMargin (at most
	// MaxKeyWatchWait + 30s); Shutdown answers them at once.
	s.srv = &http.Server{
		Handler:           s.handler,
		Protocols:         &protos,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    32 << 10,
		ErrorLog:          log.New(&slogWriter{log: s.log}, "", 0),
	}
	s.srv.RegisterOnShutdown(s.keys.watch.close)
	s.srv.RegisterOnShutdown(s.models.watch.close)
	s.srv.RegisterOnShutdown(s.fl.watch.close)
	s.srv.RegisterOnShutdown(s.devices.watch.close)
	if err := s.startFL(); err != nil {
		hl.Close()
		s.srv = nil
		return err
	}
	s.ln = hl
	s.serveErr = make(chan error, 1)
	s.startKeysLoop()
	srv := s.srv
	go func() {
		err := srv.Serve(hl)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.serveErr <- err
	}()
	s.log.Info("serving", "url", s.urlLocked())
	return nil
}

// handshakeParallel bounds concurrent TLS handshakes.
const handshakeParallel = 64

// slogWriter routes net/http's internal log lines (TLS handshake errors and
// the like) to slog at debug level.
type slogWriter struct{ log *slog.Logger }

func (w *slogWriter) Write(p []byte) (int, error) {
	w.log.Debug("http server", "msg", strings.TrimSpace(string(p)))
	return len(p), nil
}

// Serve starts the server if needed and blocks until ctx is done or the
// server fails, then closes it.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	started := s.srv != nil
	s.mu.Unlock()
	if !started {
		if err := s.Start(); err != nil {
			return err
		}
	}
	select {
	case <-ctx.Done():
		return s.Close()
	case err := <-s.serveErr:
		s.serveErr <- err
		cerr := s.Close()
		if err != nil {
			return fmt.Errorf("controlplane: serve: %w", err)
		}
		return cerr
	}
}

// Close stops accepting connections, waits up to Config.ShutdownTimeout for
// requests in flight, and closes the store if the server opened it.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var errs []error
	if s.srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
		if err := s.srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("controlplane: shutdown: %w", err))
			s.srv.Close()
		}
		cancel()
		if err := <-s.serveErr; err != nil {
			errs = append(errs, fmt.Errorf("controlplane: serve: %w", err))
		}
		s.serveErr <- nil
	}
	s.stopKeysLoop()
	s.stopFL()
	if err := s.keys.closeStore(); err != nil {
		errs = append(errs, fmt.Errorf("controlplane: key store: %w", err))
	}
	if s.ownsStore {
		if err := s.store.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Addr is the listening address, or nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// URL is the base URL clients use ("https://127.0.0.1:8443"), or "" before
// Start. An unspecified listen host (":8443", "0.0.0.0") maps to
// 127.0.0.1.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.urlLocked()
}

func (s *Server) urlLocked() string {
	if s.ln == nil {
		return ""
	}
	_, port, _ := net.SplitHostPort(s.ln.Addr().String())
	host, _, _ := net.SplitHostPort(s.cfg.Listen)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "https://" + net.JoinHostPort(host, port)
}

// CAPEM returns the CA certificate in PEM form, for clients.
func (s *Server) CAPEM() []byte { return append([]byte(nil), s.ca.certPEM...) }

// CAPath is the path of the CA certificate file.
func (s *Server) CAPath() string { return filepath.Join(s.cfg.DataDir, CAFile) }

// AdminTokenPath is the path of the bootstrap admin token file.
func (s *Server) AdminTokenPath() string { return filepath.Join(s.cfg.DataDir, AdminTokenFile) }

// AdminToken reads the bootstrap admin token from AdminTokenPath.
func (s *Server) AdminToken() (string, error) {
	b, err := os.ReadFile(s.AdminTokenPath())
	if err != nil {
		return "", fmt.Errorf("controlplane: admin token: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// AdminClient returns a client of this server that trusts its CA and
// authenticates with the bootstrap admin token, for programs that run
// the server in-process (the simulator, tests). A zero timeout is the
// client's default.
func (s *Server) AdminClient(timeout time.Duration) (*cpapi.Client, error) {
	tok, err := s.AdminToken()
	if err != nil {
		return nil, err
	}
	return cpapi.NewClient(cpapi.ClientConfig{URL: s.URL(), Token: tok, CAPEM: s.CAPEM(), Timeout: timeout})
}

// Handler returns the HTTP handler, for embedding the API in another TLS
// server; agent routes need the connection's verified client certificate.
func (s *Server) Handler() http.Handler { return s.handler }

// TLSConfig returns a copy of the server's TLS configuration.
func (s *Server) TLSConfig() *tls.Config { return s.tlsConfig.Clone() }

// Store returns the server's store.
func (s *Server) Store() Store { return s.store }

func (s *Server) isRevoked(serial string) bool {
	s.revokedMu.RLock()
	_, ok := s.revoked[serial]
	s.revokedMu.RUnlock()
	return ok
}

func (s *Server) setRevoked(serial string, on bool) {
	s.revokedMu.Lock()
	if on {
		s.revoked[serial] = struct{}{}
	} else {
		delete(s.revoked, serial)
	}
	s.revokedMu.Unlock()
}

// stateOf derives an agent's state at now.
func (s *Server) stateOf(a cpapi.Agent, now time.Time) cpapi.AgentState {
	if a.DecommissionedAt != nil {
		return cpapi.StateDecommissioned
	}
	age := now.Sub(a.LastSeen)
	switch {
	case age < s.cfg.StaleAfter:
		return cpapi.StateOnline
	case age < s.cfg.OfflineAfter:
		return cpapi.StateStale
	}
	return cpapi.StateOffline
}

// ---- request plumbing ----

// access says how a route authenticates.
type access int

const (
	accessPublic access = iota // no credentials
	accessEnroll               // enrollment token in the body
	accessAgent                // verified client certificate
	accessBearer               // operator API token
)

// route is one API endpoint. The table in routes.go is the single source of
// registered patterns (the OpenAPI test compares it with openapi.json).
type route struct {
	method string
	path   string
	access access
	role   cpapi.Role // minimum role for accessBearer
	action string     // audit action; empty for reads and data-plane calls
	handle func(w http.ResponseWriter, r *http.Request, c *call) error
}

// call is the per-request context handed to handlers.
type call struct {
	now     time.Time
	actor   string
	role    cpapi.Role
	agentID string
	serial  string
	action  string
	target  string
	// keyAudited is set when the key service recorded the call in the
	// audit log itself (see auditKeyEvent).
	keyAudited bool
}

// entry builds the audit entry that a handler passes to the store together
// with its change, so both are committed in one transaction. A failed call
// is recorded by the route wrapper instead.
func (c *call) entry() AuditEntry {
	return AuditEntry{Time: c.now, Actor: c.actor, Action: c.action, Target: c.target, Result: "ok"}
}

func (s *Server) buildHandler() http.Handler {
	mux := http.NewServeMux()
	paths := http.NewServeMux()
	seen := map[string]bool{}
	for _, rt := range s.routes {
		mux.Handle(rt.method+" "+rt.path, s.wrap(rt))
		if !seen[rt.path] {
			seen[rt.path] = true
			paths.Handle(rt.path, http.NotFoundHandler())
		}
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pat := mux.Handler(r); pat != "" {
			mux.ServeHTTP(w, r)
			return
		}
		if _, pat := paths.Handler(r); pat != "" {
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s", r.Method, r.URL.Path))
			return
		}
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	})
}

// statusWriter records the status code for metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (held key
// requests extend their deadlines, see extendDeadlines).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (s *Server) wrap(rt route) http.Handler {
	label := rt.method + " " + rt.path
	latency := s.metrics.latency.WithLabelValues(label)
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		start := time.Now()
		w := &statusWriter{ResponseWriter: rw}
		c := &call{now: s.cfg.Clock.Now(), action: rt.action}
		err := s.authenticate(r, rt, c)
		if err == nil {
			err = rt.handle(w, r, c)
		}
		if err != nil {
			status, msg := s.errorStatus(err, r)
			if status == http.StatusUnauthorized || status == http.StatusForbidden {
				s.metrics.authFailures.WithLabelValues(authReason(rt, status)).Inc()
			}
			if rt.action != "" && c.actor != "" && !c.keyAudited {
				s.auditFailure(r.Context(), c, status, msg)
			}
			writeError(w, status, msg)
		}
		latency.Observe(time.Since(start).Seconds())
		s.metrics.requests.WithLabelValues(label, fmt.Sprint(w.status)).Inc()
	})
}

func authReason(rt route, status int) string {
	switch {
	case rt.access == accessAgent && status == http.StatusForbidden:
		return "agent_revoked"
	case rt.access == accessAgent:
		return "agent_certificate"
	case rt.access == accessEnroll:
		return "enrollment_token"
	case status == http.StatusForbidden:
		return "role"
	}
	return "bearer_token"
}

func (s *Server) auditFailure(ctx context.Context, c *call, status int, msg string) {
	result := fmt.Sprintf("error %d: %s", status, msg)
	if status == http.StatusForbidden {
		result = "denied: " + msg
	}
	e := AuditEntry{Time: c.now, Actor: c.actor, Action: c.action, Target: c.target, Result: result}
	if _, err := s.store.AppendAudit(context.WithoutCancel(ctx), e); err != nil {
		s.log.Error("audit append failed", "action", c.action, "actor", c.actor, "err", err)
		return
	}
	s.metrics.auditAppended.Inc()
}

// authenticate fills c from the request's credentials.
func (s *Server) authenticate(r *http.Request, rt route, c *call) error {
	switch rt.access {
	case accessPublic, accessEnroll:
		return nil
	case accessAgent:
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.PeerCertificates) == 0 {
			return errorf(http.StatusUnauthorized, "agent client certificate required (mutual TLS)")
		}
		leaf := r.TLS.PeerCertificates[0]
		id, err := agentIDFromCert(leaf)
		if err != nil {
			return errorf(http.StatusUnauthorized, "%v", err)
		}
		serial := serialString(leaf.SerialNumber)
		if s.isRevoked(serial) {
			return errorf(http.StatusForbidden, "agent %s is decommissioned; its certificate %s is revoked", id, serial)
		}
		c.agentID, c.serial, c.actor = id, serial, "agent:"+id
		return nil
	case accessBearer:
		auth := r.Header.Get("Authorization")
		if auth == "" {
			return errorf(http.StatusUnauthorized, "missing credentials: send Authorization: Bearer <api token>")
		}
		scheme, secret, ok := strings.Cut(auth, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(secret) == "" {
			return errorf(http.StatusUnauthorized, "Authorization header must be \"Bearer <api token>\"")
		}
		tok, err := s.store.LookupAPIToken(r.Context(), hashToken(strings.TrimSpace(secret)))
		if errors.Is(err, cpapi.ErrNotFound) {
			return errorf(http.StatusUnauthorized, "unknown API token")
		}
		if err != nil {
			return err
		}
		if tok.RevokedAt != nil {
			return errorf(http.StatusUnauthorized, "API token %s was revoked", tok.ID)
		}
		if tok.ExpiresAt != nil && !c.now.Before(*tok.ExpiresAt) {
			return errorf(http.StatusUnauthorized, "API token %s expired at %s", tok.ID, tok.ExpiresAt.Format(time.RFC3339))
		}
		c.actor, c.role = "token:"+tok.ID, tok.Role
		if !tok.Role.Allows(rt.role) {
			return errorf(http.StatusForbidden, "role %s may not %s %s (needs %s)", tok.Role, r.Method, r.URL.Path, rt.role)
		}
		return nil
	}
	return errorf(http.StatusInternalServerError, "route has no access rule")
}

// errorStatus maps an error to a status code and a message for the client.
func (s *Server) errorStatus(err error, r *http.Request) (int, string) {
	var he *httpError
	if errors.As(err, &he) {
		return he.status, he.msg
	}
	msg := strings.ReplaceAll(err.Error(), "controlplane: ", "")
	switch {
	case errors.Is(err, cpapi.ErrTooLarge):
		return http.StatusRequestEntityTooLarge, msg
	case errors.Is(err, cpapi.ErrBadRequest):
		return http.StatusBadRequest, msg
	case errors.Is(err, cpapi.ErrNotFound):
		return http.StatusNotFound, msg
	case errors.Is(err, ErrTokenExpired):
		return http.StatusUnauthorized, msg
	case errors.Is(err, ErrTokenUsed), errors.Is(err, cpapi.ErrConflict), errors.Is(err, ErrDecommissioned):
		return http.StatusConflict, msg
	case errors.Is(err, cpapi.ErrUnauthorized):
		return http.StatusUnauthorized, msg
	case errors.Is(err, cpapi.ErrForbidden):
		return http.StatusForbidden, msg
	case errors.Is(err, context.Canceled):
		return 499, "request canceled"
	case sqliteerr.Unavailable(err):
		// The database cannot take the write now (disk full, I/O error,
		// locked): the client keeps what it sent and tries again.
		s.log.Error("request failed: storage unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
		return http.StatusServiceUnavailable, "storage unavailable, try again later: " + storageReason(err)
	}
	s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	return http.StatusInternalServerError, "internal error; see server log"
}

// storageReason names why the storage refused a write, without the
// server's internals (paths, statements).
func storageReason(err error) string {
	if sqliteerr.Full(err) {
		return "database or disk is full"
	}
	return "database busy, locked, read-only or failing"
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, cpapi.ErrorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":"encoding the response failed"}`)
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(b)
	w.Write([]byte{'\n'})
}

// checkJSONContentType refuses bodies declared as something other than
// JSON.
func checkJSONContentType(r *http.Request) error {
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		return nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return errorf(http.StatusUnsupportedMediaType, "Content-Type %q: expected application/json", ct)
	}
	return nil
}

// decodeJSON reads a size-limited JSON body into v, refusing unknown fields
// and trailing data.
func (s *Server) decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	if err := checkJSONContentType(r); err != nil {
		return err
	}
	if enc := r.Header.Get("Content-Encoding"); enc != "" && enc != "identity" {
		return errorf(http.StatusUnsupportedMediaType, "Content-Encoding %q not accepted on %s", enc, r.URL.Path)
	}
	body := http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonBodyError(err)
	}
	var extra json.RawMessage
	switch err := dec.Decode(&extra); {
	case err == io.EOF:
		return nil
	case err == nil:
		return errorf(http.StatusBadRequest, "body: unexpected data after the JSON object")
	default:
		return jsonBodyError(err)
	}
}

func jsonBodyError(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return errorf(http.StatusRequestEntityTooLarge, "body exceeds the limit of %d bytes", mbe.Limit)
	}
	return errorf(http.StatusBadRequest, "body: %s", describeJSONError(err))
}
