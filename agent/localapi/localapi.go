// Package localapi is the agent's local HTTP API: the handlers of
// /healthz, /readyz, /metrics and /v1/..., built from the small
// interfaces below, which *agent.Agent implements through an adapter
// (agent/localapi_wiring.go). Every answer is one of package agentapi's
// wire types: this package converts the agent's domain types (device
// records, ingestion and uplink stats, members) to them in one place
// (wire.go).
package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/devices"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/agent/keys"
	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/agent/uplink"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// State is the agent's replicated state.
type State interface {
	// LiveStore is the open store; an error (one of Config.Unavailable)
	// while the agent is not running.
	LiveStore() (*crdt.Store, error)
	// Commit runs one local op on the store and replicates its delta.
	Commit(op func(s *crdt.Store) (crdt.Delta, error)) (crdt.Delta, error)
	// CollectionType is coll's configured type (lww when not configured).
	CollectionType(coll string) crdt.Type
}

// Node is the agent as a member of its cluster.
type Node interface {
	Name() string
	// Running is false while the agent is starting or stopping.
	Running() bool
	// StartedAt is when the agent started (zero before).
	StartedAt() time.Time
	// Ready is nil when the agent serves (store readable, replication
	// running, state not being rebuilt), with the members alive (itself
	// included) and what it lost, if anything (degraded).
	Ready(ctx context.Context) (alive int, degraded string, err error)
	Members() []membership.Member
	// Health runs the agent's health checks (as its heartbeats report).
	Health() *cpapi.Health
}

// Edge is the device-facing side: the device registry, commands to
// devices, and MQTT ingestion.
type Edge interface {
	// Devices lists the device registry, sorted by id.
	Devices(ctx context.Context) ([]devices.Record, error)
	// Device is one device's record; found is false when unknown.
	Device(ctx context.Context, id string) (rec devices.Record, found bool, err error)
	// SendCommand publishes payload to the device's command topic and
	// returns the topic once the broker acknowledged it.
	SendCommand(ctx context.Context, id string, payload []byte) (topic string, err error)
	// Ingestor is the running ingestor; an error (one of
	// Config.Unavailable) when the agent is not running or ingestion is
	// disabled.
	Ingestor() (*ingest.Ingestor, error)
}

// Control is the control-plane side: the uplink and the keys.
type Control interface {
	// Uplink is the uplink's status; ok is false without a control plane.
	Uplink() (st uplink.Status, ok bool)
	// HeldKeys are the dkms keys the agent holds (none without a control
	// plane or before enrollment).
	HeldKeys() []dkms.KeyInfo
	// GossipKeys describes the gossip keyring; ok is false when gossip
	// runs unencrypted or the agent is not running.
	GossipKeys() (st keys.RingState, ok bool)
}

// Backend is all the API serves.
type Backend interface {
	State
	Node
	Edge
	Control
	Training
	Inference
}

// Config are the API's settings.
type Config struct {
	// MaxBodyBytes bounds the body of a state write (api.max_body_bytes).
	MaxBodyBytes int64
	// MaxCommandBytes bounds a command payload.
	MaxCommandBytes int64
	// IngestTopic is the topic pattern ingestion subscribes to, and
	// IngestEmbedded whether its broker is the agent's embedded one.
	IngestTopic    string
	IngestEmbedded bool
	// Version is reported by /v1/status.
	Version string
	// Unavailable are the backend's errors that answer 503 (the agent
	// not running, ingestion disabled).
	Unavailable []error
	// Registry is served on /metrics.
	Registry *prometheus.Registry
	// Logger receives the metrics handler's errors; nil means
	// slog.Default().
	Logger *slog.Logger
	// Clock stamps /v1/status; nil means the real clock.
	Clock clock.Clock
	// Guarded collections refuse writes through /v1/state (403 with the
	// message): they have their own API, which validates what it writes.
	Guarded map[string]string
}

// CommandTimeout bounds waiting for the broker to acknowledge a command.
const CommandTimeout = 10 * time.Second

type server struct {
	b   Backend
	cfg Config
	clk clock.Clock
}

// New returns the agent's HTTP API:
//
//	GET    /healthz                        process is up
//	GET    /readyz                         store open, memberlist running, state not being rebuilt (503 otherwise; "degraded" notes quarantined databases)
//	GET    /metrics                        Prometheus text format
//	GET    /v1/state                       collections held: [{"name","type","keys"}]
//	GET    /v1/state/{collection}          lww: entries; orset: members; counter: counters [{"key","value"}];
//	                                       mvreg: registers [{"key","values"}]
//	GET    /v1/state/{collection}/{key}    lww {"key","value","hlc","origin"}; mvreg {"key","values"};
//	                                       orset {"key","present"}; counter {"key","value"}
//	PUT    /v1/state/{collection}/{key}    body: the value (lww, mvreg), {"add": n} (counter), ignored (orset)
//	DELETE /v1/state/{collection}/{key}    lww delete, mvreg clear, orset remove
//	GET    /v1/members                     [{"name","addr","state","meta"}]
//	GET    /v1/devices                     {"devices": [DeviceRecord...]}: the fleet's device registry, by id
//	GET    /v1/devices/{id}                DeviceRecord; 404 when unknown
//	POST   /v1/devices/{id}/commands       body: the payload (<= MaxCommandBytes), published QoS 1 to
//	                                       devices/{id}/commands; 202 {"device","topic","bytes"}
//	GET    /v1/identities                  {"identities": [DeviceIdentity...]}: registered devices, by id
//	POST   /v1/identities                  body {"id","publish","subscribe"}: 201 {"identity","secret"} (the
//	                                       secret is shown only here); 409 registered; 400 bad id or topics
//	GET    /v1/identities/{id}             DeviceIdentity; 404 not registered
//	POST   /v1/identities/{id}/rotate      200 {"identity","secret"}: a new secret; 404 not registered
//	POST   /v1/identities/{id}/disable     200 DeviceIdentity; its connections close on every agent
//	POST   /v1/identities/{id}/enable      200 DeviceIdentity
//	GET    /v1/dead-letters                ?after=N&limit=N&reason=R: {"items":[...],"next":N}
//	DELETE /v1/dead-letters                ?all=true | before=RFC3339 | reason=R | id=N&id=M: {"purged":N}
//	GET    /v1/ingest                      {"enabled","broker","subscribed","pressure","stats","store"}
//	GET    /v1/uplink                      the uplink's status; {"enabled":false} without a control plane
//	GET    /v1/status                      the agent at a glance: members, ingestion, uplink, keys
//	POST   /v1/training/jobs               body: a training job spec (training.Spec); 202 the job; 400 naming a bad
//	                                       field; 409 while another job runs
//	GET    /v1/training/jobs               {"jobs": [TrainingJob...]}, newest first
//	GET    /v1/training/jobs/{id}          TrainingJob: state, epochs done, loss and accuracy per epoch; 404 unknown
//	DELETE /v1/training/jobs/{id}          cancels a queued or running job; answers the job
//	GET    /v1/training/jobs/{id}/model    TrainedModel (weights, schema, labels, examples); 409 until done;
//	                                       ?format=file[&name=N][&version=V]: the model file (fedlearn
//	                                       format, unsigned, octet-stream) for edgectl models push;
//	                                       400 naming a bad format, name or version
//	GET    /v1/models                      {"models": [Model...]}: the models serving, by name
//	POST   /v1/models/{name}/predict       body {"features": [v...]} or {"features": {"name": v}} (null: imputed);
//	                                       {"model","version","class":{"index","label"},"probabilities"};
//	                                       400 naming a wrong count, an unknown or missing name, a non-finite value;
//	                                       404 unknown model
//
// The answers are package agentapi's types. A collection's type comes
// from State.CollectionType. A PUT or DELETE answers 200 only after the
// op committed durably. Errors are JSON {"error": "..."}: 400 bad names
// or bodies, 404 missing keys, 409 type conflicts, 413 bodies over
// MaxBodyBytes, 503 when not running (and, for ingestion endpoints, when
// ingestion is disabled or the broker is unreachable).
func New(b Backend, cfg Config) http.Handler {
	s := &server{b: b, cfg: cfg, clk: clock.Or(cfg.Clock)}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, agentapi.Health{Status: "ok"})
	})
	mux.HandleFunc("GET /readyz", s.handleReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /v1/state", s.handleCollections)
	mux.HandleFunc("GET /v1/state/{collection}", s.handleList)
	mux.HandleFunc("GET /v1/state/{collection}/{key...}", s.handleGet)
	mux.HandleFunc("PUT /v1/state/{collection}/{key...}", s.handlePut)
	mux.HandleFunc("DELETE /v1/state/{collection}/{key...}", s.handleDelete)
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, wireMembers(s.b.Members()))
	})
	mux.HandleFunc("GET /v1/devices", s.handleDevices)
	mux.HandleFunc("GET /v1/devices/{id}", s.handleDevice)
	mux.HandleFunc("POST /v1/devices/{id}/commands", s.handleCommand)
	mux.HandleFunc("GET /v1/dead-letters", s.handleDeadLetters)
	mux.HandleFunc("DELETE /v1/dead-letters", s.handlePurgeDeadLetters)
	mux.HandleFunc("GET /v1/ingest", s.handleIngest)
	mux.HandleFunc("GET /v1/uplink", s.handleUplink)
	mux.HandleFunc("GET /v1/status", s.handleStatus)
	s.routeTraining(mux)
	s.routeIdentities(mux)
	mux.HandleFunc("GET /v1/models", s.handleModels)
	mux.HandleFunc("POST /v1/models/{name}/predict", s.handlePredict)
	allowed := map[string]string{
		"/healthz":                        "GET",
		"/readyz":                         "GET",
		"/metrics":                        "GET",
		"/v1/state":                       "GET",
		"/v1/state/{collection}":          "GET",
		"/v1/state/{collection}/{key...}": "GET, PUT, DELETE",
		"/v1/members":                     "GET",
		"/v1/devices":                     "GET",
		"/v1/devices/{id}":                "GET",
		"/v1/devices/{id}/commands":       "POST",
		"/v1/dead-letters":                "GET, DELETE",
		"/v1/ingest":                      "GET",
		"/v1/uplink":                      "GET",
		"/v1/status":                      "GET",
		"/v1/models":                      "GET",
		"/v1/models/{name}/predict":       "POST",
	}
	for path, allow := range identitiesAllow {
		allowed[path] = allow
	}
	for path, allow := range trainingAllow {
		allowed[path] = allow
	}
	for path, allow := range allowed {
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, allow))
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no route for %s %s", r.Method, r.URL.Path))
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, agentapi.ErrorBody{Error: msg})
}

// unavailable reports whether err is one of the backend's 503 errors.
func (s *server) unavailable(err error) bool {
	for _, u := range s.cfg.Unavailable {
		if errors.Is(err, u) {
			return true
		}
	}
	return false
}

// writeStoreError maps a store or agent error to a status: a store that
// cannot take a write (disk full, I/O error) or holds writes until its
// state comes back from a peer answers 503, retryable.
func (s *server) writeStoreError(w http.ResponseWriter, err error) {
	switch {
	case s.unavailable(err), errors.Is(err, crdt.ErrClosed), errors.Is(err, crdt.ErrUnavailable), errors.Is(err, crdt.ErrAwaitingState):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case errors.Is(err, crdt.ErrTypeMismatch):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, crdt.ErrInvalidDelta):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

func (s *server) handleReady(w http.ResponseWriter, r *http.Request) {
	alive, degraded, err := s.b.Ready(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, agentapi.Ready{Status: "ready", Members: alive, Degraded: degraded})
}
