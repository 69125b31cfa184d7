package agent

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
	"unicode/utf8"

	"github.com/edgefleet/edgefleet/crdt"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// startAPI listens on api.addr and serves Handler.
func (a *Agent) startAPI() error {
	if a.cfg.API.Addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", a.cfg.API.Addr)
	if err != nil {
		return fmt.Errorf("agent: API listen: %w", err)
	}
	srv := &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	a.mu.Lock()
	a.api = srv
	a.apiAddr = ln.Addr().String()
	a.mu.Unlock()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("API server stopped", "err", err)
		}
	}()
	return nil
}

// Handler is the agent's HTTP API:
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
//	POST   /v1/devices/{id}/commands       body: the payload (<= 64 KiB), published QoS 1 to
//	                                       devices/{id}/commands; 202 {"device","topic","bytes"}
//	GET    /v1/dead-letters                ?after=N&limit=N&reason=R: {"items":[...],"next":N}
//	DELETE /v1/dead-letters                ?all=true | before=RFC3339 | reason=R | id=N&id=M: {"purged":N}
//	GET    /v1/ingest                      {"enabled","broker","subscribed","pressure","stats","store"}
//	GET    /v1/uplink                      the uplink's status; {"enabled":false} without a control plane
//	GET    /v1/status                      the agent at a glance: members, ingestion, uplink, keys (api_status.go)
//
// A collection's type comes from state.collections (default lww). A PUT or
// DELETE answers 200 only after the op committed durably. Errors are JSON
// {"error": "..."}: 400 bad names or bodies, 404 missing keys, 409 type
// conflicts, 413 bodies over api.max_body_bytes, 503 when not running
// (and, for ingestion endpoints, when ingestion is disabled or the broker
// is unreachable).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", a.handleReady)
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /v1/state", a.handleCollections)
	mux.HandleFunc("GET /v1/state/{collection}", a.handleList)
	mux.HandleFunc("GET /v1/state/{collection}/{key...}", a.handleGet)
	mux.HandleFunc("PUT /v1/state/{collection}/{key...}", a.handlePut)
	mux.HandleFunc("DELETE /v1/state/{collection}/{key...}", a.handleDelete)
	mux.HandleFunc("GET /v1/members", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, a.Members())
	})
	mux.HandleFunc("GET /v1/devices", a.handleDevices)
	mux.HandleFunc("GET /v1/devices/{id}", a.handleDevice)
	mux.HandleFunc("POST /v1/devices/{id}/commands", a.handleCommand)
	mux.HandleFunc("GET /v1/dead-letters", a.handleDeadLetters)
	mux.HandleFunc("DELETE /v1/dead-letters", a.handlePurgeDeadLetters)
	mux.HandleFunc("GET /v1/ingest", a.handleIngest)
	mux.HandleFunc("GET /v1/uplink", a.handleUplink)
	mux.HandleFunc("GET /v1/status", a.handleStatus)
	for path, allow := range map[string]string{
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
	} {
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
	writeJSON(w, status, map[string]string{"error": msg})
}

// writeStoreError maps a store or agent error to a status.
func writeStoreError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrNotRunning), errors.Is(err, crdt.ErrClosed):
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

func (a *Agent) handleReady(w http.ResponseWriter, r *http.Request) {
	if !a.running.Load() || a.repl.Load() == nil {
		writeError(w, http.StatusServiceUnavailable, "agent not running")
		return
	}
	if _, err := a.Store().VersionVector(r.Context()); err != nil {
		writeError(w, http.StatusServiceUnavailable, "store: "+err.Error())
		return
	}
	if r := a.Readiness(); r.NotReady != "" {
		writeError(w, http.StatusServiceUnavailable, r.NotReady)
	} else {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ready", "members": a.peers.Load().Count(StateAlive), "degraded": r.Degraded})
	}
}

// collType is the configured type of coll (lww when not configured).
func (a *Agent) collType(coll string) crdt.Type {
	if t, ok := a.cfg.State.Collections[coll]; ok {
		return t
	}
	return crdt.TypeLWW
}

// pathNames validates the collection (and key, when wantKey) of r.
func pathNames(w http.ResponseWriter, r *http.Request, wantKey bool) (coll, key string, ok bool) {
	coll = r.PathValue("collection")
	if err := validateName("collection", coll); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return "", "", false
	}
	if wantKey {
		key = r.PathValue("key")
		if err := validateName("key", key); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return "", "", false
		}
	}
	return coll, key, true
}

// jsonValue renders a stored value: JSON as is, other UTF-8 text as a
// string, anything else as base64 (with encoding "base64").
func jsonValue(b []byte) (any, string) {
	if len(b) > 0 && json.Valid(b) {
		return json.RawMessage(bytes.TrimSpace(b)), ""
	}
	if utf8.Valid(b) {
		return string(b), ""
	}
	return base64.StdEncoding.EncodeToString(b), "base64"
}

type entryJSON struct {
	Key      string `json:"key"`
	Value    any    `json:"value"`
	Encoding string `json:"encoding,omitempty"`
	HLC      string `json:"hlc"`
	Origin   string `json:"origin"`
}

func toEntryJSON(e crdt.Entry) entryJSON {
	v, enc := jsonValue(e.Value)
	return entryJSON{Key: e.Key, Value: v, Encoding: enc, HLC: e.HLC.String(), Origin: e.Origin}
}

func (a *Agent) handleCollections(w http.ResponseWriter, r *http.Request) {
	s, err := a.liveStore()
	if err != nil {
		writeStoreError(w, err)
		return
	}
	infos, err := s.Collections(r.Context())
	if err != nil {
		writeStoreError(w, err)
		return
	}
	type coll struct {
		Name string    `json:"name"`
		Type crdt.Type `json:"type"`
		Keys int       `json:"keys"`
	}
	out := make([]coll, 0, len(infos))
	for _, c := range infos {
		out = append(out, coll{Name: c.Name, Type: c.Type, Keys: c.Keys})
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *Agent) handleList(w http.ResponseWriter, r *http.Request) {
	coll, _, ok := pathNames(w, r, false)
	if !ok {
		return
	}
	s, err := a.liveStore()
	if err != nil {
		writeStoreError(w, err)
		return
	}
	t := a.collType(coll)
	switch t {
	case crdt.TypeLWW:
		entries, err := s.List(r.Context(), coll)
		if err != nil {
			writeStoreError(w, err)
			return
		}
		out := make([]entryJSON, 0, len(entries))
		for _, e := range entries {
			out = append(out, toEntryJSON(e))
		}
		writeJSON(w, http.StatusOK, map[string]any{"collection": coll, "type": t, "entries": out})
	case crdt.TypeORSet:
		members, err := s.SetMembers(r.Context(), coll)
		if err != nil {
			writeStoreError(w, err)
			return
		}
		if members == nil {
			members = []string{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"collection": coll, "type": t, "members": members})
	case crdt.TypeCounter:
		a.listCounters(w, r, s, coll)
	case crdt.TypeMVReg:
		a.listRegisters(w, r, s, coll)
	}
}

func (a *Agent) handleGet(w http.ResponseWriter, r *http.Request) {
	coll, key, ok := pathNames(w, r, true)
	if !ok {
		return
	}
	s, err := a.liveStore()
	if err != nil {
		writeStoreError(w, err)
		return
	}
	ctx := r.Context()
	switch a.collType(coll) {
	case crdt.TypeLWW:
		e, found, err := s.Get(ctx, coll, key)
		if err != nil {
			writeStoreError(w, err)
			return
		}
		if !found {
			writeError(w, http.StatusNotFound, fmt.Sprintf("key %q not found in %q", key, coll))
			return
		}
		writeJSON(w, http.StatusOK, toEntryJSON(e))
	case crdt.TypeMVReg:
		vals, err := s.MVGet(ctx, coll, key)
		if err != nil {
			writeStoreError(w, err)
			return
		}
		if len(vals) == 0 {
			writeError(w, http.StatusNotFound, fmt.Sprintf("key %q not found in %q", key, coll))
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"key": key, "values": mvValues(vals)})
	case crdt.TypeORSet:
		present, err := s.SetContains(ctx, coll, key)
		if err != nil {
			writeStoreError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"key": key, "present": present})
	case crdt.TypeCounter:
		n, err := s.CounterValue(ctx, coll, key)
		if err != nil {
			writeStoreError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"key": key, "value": n})
	}
}

// readBody reads the request body within api.max_body_bytes; on failure
// it has written the error.
func (a *Agent) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	var buf bytes.Buffer
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, a.cfg.API.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds %d bytes", tooBig.Limit))
			return nil, false
		}
		writeError(w, http.StatusBadRequest, "reading body: "+err.Error())
		return nil, false
	}
	return buf.Bytes(), true
}

type writeResult struct {
	Collection string    `json:"collection"`
	Key        string    `json:"key"`
	Type       crdt.Type `json:"type"`
	Origin     string    `json:"origin"`
	Seq        uint64    `json:"seq"`
}

func (a *Agent) handlePut(w http.ResponseWriter, r *http.Request) {
	coll, key, ok := pathNames(w, r, true)
	if !ok {
		return
	}
	body, ok := a.readBody(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	t := a.collType(coll)
	var op func(s *crdt.Store) (crdt.Delta, error)
	switch t {
	case crdt.TypeLWW:
		op = func(s *crdt.Store) (crdt.Delta, error) { return s.Put(ctx, coll, key, body) }
	case crdt.TypeMVReg:
		op = func(s *crdt.Store) (crdt.Delta, error) { return s.MVPut(ctx, coll, key, body) }
	case crdt.TypeORSet:
		op = func(s *crdt.Store) (crdt.Delta, error) { return s.SetAdd(ctx, coll, key) }
	case crdt.TypeCounter:
		var req struct {
			Add *int64 `json:"add"`
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, `counter body must be {"add": n}: `+err.Error())
			return
		}
		if dec.More() {
			writeError(w, http.StatusBadRequest, `counter body must be one JSON object {"add": n}`)
			return
		}
		if req.Add == nil {
			writeError(w, http.StatusBadRequest, `counter body must be {"add": n}: missing "add"`)
			return
		}
		n := *req.Add
		op = func(s *crdt.Store) (crdt.Delta, error) { return s.CounterAdd(ctx, coll, key, n) }
	}
	a.writeOp(w, coll, key, t, op)
}

func (a *Agent) handleDelete(w http.ResponseWriter, r *http.Request) {
	coll, key, ok := pathNames(w, r, true)
	if !ok {
		return
	}
	ctx := r.Context()
	t := a.collType(coll)
	var op func(s *crdt.Store) (crdt.Delta, error)
	switch t {
	case crdt.TypeLWW:
		op = func(s *crdt.Store) (crdt.Delta, error) { return s.Delete(ctx, coll, key) }
	case crdt.TypeMVReg:
		op = func(s *crdt.Store) (crdt.Delta, error) { return s.MVDelete(ctx, coll, key) }
	case crdt.TypeORSet:
		op = func(s *crdt.Store) (crdt.Delta, error) { return s.SetRemove(ctx, coll, key) }
	case crdt.TypeCounter:
		w.Header().Set("Allow", "GET, PUT")
		writeError(w, http.StatusMethodNotAllowed, `counters cannot be deleted; PUT {"add": -n} to decrement`)
		return
	}
	a.writeOp(w, coll, key, t, op)
}

func (a *Agent) writeOp(w http.ResponseWriter, coll, key string, t crdt.Type, op func(s *crdt.Store) (crdt.Delta, error)) {
	d, err := a.local(op)
	if err != nil {
		writeStoreError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, writeResult{Collection: coll, Key: key, Type: t, Origin: d.Origin, Seq: d.To})
}
