package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/agent/devices"
	"github.com/edgefleet/edgefleet/agent/ingest"
)

// commandTimeout bounds waiting for the broker to acknowledge a command.
const commandTimeout = 10 * time.Second

// Devices lists the device registry (the replicated "devices" collection,
// so every agent's devices), sorted by id. Values that are not device
// records are skipped.
func (a *Agent) Devices(ctx context.Context) ([]DeviceRecord, error) {
	s, err := a.liveStore()
	if err != nil {
		return nil, err
	}
	entries, err := s.List(ctx, DevicesCollection)
	if err != nil {
		return nil, err
	}
	out := make([]DeviceRecord, 0, len(entries))
	for _, e := range entries {
		rec, err := devices.Decode(e.Key, e.Value)
		if err != nil {
			a.log.Debug("skipping a value of the devices collection that is not a device record", "key", e.Key, "err", err)
			continue
		}
		out = append(out, rec)
	}
	slices.SortFunc(out, func(x, y DeviceRecord) int { return strings.Compare(x.ID, y.ID) })
	return out, nil
}

// Device returns one device's record; found is false when the registry
// has none.
func (a *Agent) Device(ctx context.Context, id string) (rec DeviceRecord, found bool, err error) {
	s, err := a.liveStore()
	if err != nil {
		return DeviceRecord{}, false, err
	}
	e, found, err := s.Get(ctx, DevicesCollection, id)
	if err != nil || !found {
		return DeviceRecord{}, false, err
	}
	rec, err = devices.Decode(id, e.Value)
	return rec, err == nil, err
}

// SendCommand publishes payload at QoS 1 to devices/{id}/commands on the
// agent's broker and returns the topic once the broker acknowledged it.
func (a *Agent) SendCommand(ctx context.Context, id string, payload []byte) (string, error) {
	if err := ingest.CheckDeviceID(id); err != nil {
		return "", fmt.Errorf("agent: device id: %w", err)
	}
	if len(payload) == 0 {
		return "", errors.New("agent: command payload is empty")
	}
	if len(payload) > maxCommandBytes {
		return "", fmt.Errorf("agent: command payload of %d bytes exceeds %d", len(payload), maxCommandBytes)
	}
	if !a.running.Load() {
		return "", ErrNotRunning
	}
	in := a.Ingest()
	if in == nil {
		return "", ErrIngestDisabled
	}
	topic := CommandTopic(id)
	if err := in.Publish(ctx, topic, payload); err != nil {
		return "", fmt.Errorf("agent: command to %s: %w", id, err)
	}
	return topic, nil
}

// ingestFor returns the running ingestor or writes 503.
func (a *Agent) ingestFor(w http.ResponseWriter) *ingest.Ingestor {
	if !a.running.Load() {
		writeError(w, http.StatusServiceUnavailable, ErrNotRunning.Error())
		return nil
	}
	in := a.Ingest()
	if in == nil {
		writeError(w, http.StatusServiceUnavailable, ErrIngestDisabled.Error())
		return nil
	}
	return in
}

func (a *Agent) handleDevices(w http.ResponseWriter, r *http.Request) {
	devs, err := a.Devices(r.Context())
	if err != nil {
		writeStoreError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"devices": devs})
}

// deviceID validates the {id} path value; on failure it has written 400.
func deviceID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if err := ingest.CheckDeviceID(id); err != nil {
		writeError(w, http.StatusBadRequest, "agent: device id: "+err.Error())
		return "", false
	}
	return id, true
}

func (a *Agent) handleDevice(w http.ResponseWriter, r *http.Request) {
	id, ok := deviceID(w, r)
	if !ok {
		return
	}
	s, err := a.liveStore()
	if err != nil {
		writeStoreError(w, err)
		return
	}
	e, found, err := s.Get(r.Context(), DevicesCollection, id)
	if err != nil {
		writeStoreError(w, err)
		return
	}
	if !found {
		writeError(w, http.StatusNotFound, fmt.Sprintf("agent: device %q is not in the registry", id))
		return
	}
	rec, err := devices.Decode(id, e.Value)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

func (a *Agent) handleCommand(w http.ResponseWriter, r *http.Request) {
	id, ok := deviceID(w, r)
	if !ok {
		return
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, maxCommandBytes)); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("agent: command payload exceeds %d bytes", maxCommandBytes))
			return
		}
		writeError(w, http.StatusBadRequest, "agent: reading command payload: "+err.Error())
		return
	}
	if buf.Len() == 0 {
		writeError(w, http.StatusBadRequest, "agent: command payload is empty (send it as the request body)")
		return
	}
	if a.ingestFor(w) == nil {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), commandTimeout)
	defer cancel()
	topic, err := a.SendCommand(ctx, id, buf.Bytes())
	switch {
	case err == nil:
		writeJSON(w, http.StatusAccepted, map[string]any{"device": id, "topic": topic, "bytes": buf.Len()})
	case errors.Is(err, ingest.ErrNotConnected), errors.Is(err, ingest.ErrClosed), errors.Is(err, ErrNotRunning),
		errors.Is(err, ErrIngestDisabled), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case errors.Is(err, ingest.ErrInvalidConfig), errors.Is(err, ingest.ErrInvalidPayload):
		writeError(w, http.StatusBadRequest, err.Error())
	default:
		writeError(w, http.StatusBadGateway, err.Error())
	}
}

// parseReason validates a dead-letter reason query value.
func parseReason(s string) (ingest.Reason, error) {
	if s == "" {
		return "", nil
	}
	all := ingest.Reasons()
	if slices.Contains(all, ingest.Reason(s)) {
		return ingest.Reason(s), nil
	}
	names := make([]string, len(all))
	for i, r := range all {
		names[i] = string(r)
	}
	return "", fmt.Errorf("agent: reason %q is unknown (want one of %s)", s, strings.Join(names, ", "))
}

func (a *Agent) handleDeadLetters(w http.ResponseWriter, r *http.Request) {
	in := a.ingestFor(w)
	if in == nil {
		return
	}
	q := r.URL.Query()
	var dq ingest.DeadLetterQuery
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("agent: after=%q: want a dead-letter id >= 0", v))
			return
		}
		dq.After = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("agent: limit=%q: want 1..1000", v))
			return
		}
		dq.Limit = n
	}
	reason, err := parseReason(q.Get("reason"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	dq.Reason = reason
	page, err := in.Store().DeadLetters(r.Context(), dq)
	if err != nil {
		writeIngestError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, page)
}

func (a *Agent) handlePurgeDeadLetters(w http.ResponseWriter, r *http.Request) {
	in := a.ingestFor(w)
	if in == nil {
		return
	}
	q := r.URL.Query()
	var p ingest.DeadLetterPurge
	if v := q.Get("all"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("agent: all=%q is not a boolean", v))
			return
		}
		p.All = b
	}
	if v := q.Get("before"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("agent: before=%q is not an RFC 3339 time", v))
			return
		}
		p.Before = t
	}
	reason, err := parseReason(q.Get("reason"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	p.Reason = reason
	for _, v := range q["id"] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("agent: id=%q is not a dead-letter id", v))
			return
		}
		p.IDs = append(p.IDs, n)
	}
	if !p.All && p.Before.IsZero() && p.Reason == "" && len(p.IDs) == 0 {
		writeError(w, http.StatusBadRequest, "agent: purge needs a selector: all=true, before=RFC3339, reason=R or id=N (repeatable)")
		return
	}
	if p.All && (!p.Before.IsZero() || p.Reason != "" || len(p.IDs) > 0) {
		writeError(w, http.StatusBadRequest, "agent: all=true cannot be combined with before, reason or id")
		return
	}
	n, err := in.Store().PurgeDeadLetters(r.Context(), p)
	if err != nil {
		writeIngestError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int64{"purged": n})
}

func writeIngestError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ingest.ErrInvalidConfig):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, ingest.ErrClosed), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// IngestStatus is the answer of GET /v1/ingest.
type IngestStatus struct {
	Enabled    bool               `json:"enabled"`
	Broker     string             `json:"broker,omitempty"`   // the broker the agent subscribes to
	Embedded   bool               `json:"embedded,omitempty"` // it is the agent's embedded broker
	Topic      string             `json:"topic,omitempty"`    // topic pattern
	Subscribed bool               `json:"subscribed"`
	Pressure   string             `json:"pressure"` // "", "store" or "outbox": why acknowledgements are held back
	Stats      *ingest.Stats      `json:"stats,omitempty"`
	Store      *ingest.StoreStats `json:"store,omitempty"`
	StoreError string             `json:"store_error,omitempty"`
}

// ingestStatus is the answer of GET /v1/ingest: {"enabled": false} when
// ingestion is off or the agent is not running.
func (a *Agent) ingestStatus(ctx context.Context) any {
	in := a.Ingest()
	if in == nil || !a.running.Load() {
		return map[string]bool{"enabled": false}
	}
	st := in.Stats()
	out := IngestStatus{Enabled: true, Broker: in.Broker(), Embedded: a.cfg.Ingest.MQTT.Broker == "",
		Topic: a.cfg.Ingest.Topic, Subscribed: in.Subscribed(), Pressure: st.Backpressure, Stats: &st}
	if ss, err := in.Store().Stats(ctx); err != nil {
		out.StoreError = err.Error()
	} else {
		out.Store = &ss
	}
	return out
}

func (a *Agent) handleIngest(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.ingestStatus(r.Context()))
}

// uplinkStatus is the answer of GET /v1/uplink: {"enabled": false}
// without a control plane.
func (a *Agent) uplinkStatus() any {
	up := a.Uplink()
	if up == nil {
		return map[string]bool{"enabled": false}
	}
	return up.Status()
}

func (a *Agent) handleUplink(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.uplinkStatus())
}
