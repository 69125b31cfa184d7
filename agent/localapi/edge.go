package localapi

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

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/ingest"
)

func (s *server) handleDevices(w http.ResponseWriter, r *http.Request) {
	devs, err := s.b.Devices(r.Context())
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	out := agentapi.DeviceList{Devices: make([]agentapi.DeviceRecord, 0, len(devs))}
	for _, d := range devs {
		out.Devices = append(out.Devices, agentapi.DeviceRecord(d))
	}
	writeJSON(w, http.StatusOK, out)
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

func (s *server) handleDevice(w http.ResponseWriter, r *http.Request) {
	id, ok := deviceID(w, r)
	if !ok {
		return
	}
	rec, found, err := s.b.Device(r.Context(), id)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	if !found {
		writeError(w, http.StatusNotFound, fmt.Sprintf("agent: device %q is not in the registry", id))
		return
	}
	writeJSON(w, http.StatusOK, agentapi.DeviceRecord(rec))
}

func (s *server) handleCommand(w http.ResponseWriter, r *http.Request) {
	id, ok := deviceID(w, r)
	if !ok {
		return
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, s.cfg.MaxCommandBytes)); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("agent: command payload exceeds %d bytes", s.cfg.MaxCommandBytes))
			return
		}
		writeError(w, http.StatusBadRequest, "agent: reading command payload: "+err.Error())
		return
	}
	if buf.Len() == 0 {
		writeError(w, http.StatusBadRequest, "agent: command payload is empty (send it as the request body)")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), CommandTimeout)
	defer cancel()
	topic, err := s.b.SendCommand(ctx, id, buf.Bytes())
	switch {
	case err == nil:
		writeJSON(w, http.StatusAccepted, agentapi.CommandSent{Device: id, Topic: topic, Bytes: buf.Len()})
	case s.unavailable(err), errors.Is(err, ingest.ErrNotConnected), errors.Is(err, ingest.ErrClosed),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
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

// ingestor returns the running ingestor or writes 503.
func (s *server) ingestor(w http.ResponseWriter) *ingest.Ingestor {
	in, err := s.b.Ingestor()
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return nil
	}
	return in
}

func (s *server) handleDeadLetters(w http.ResponseWriter, r *http.Request) {
	in := s.ingestor(w)
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
	writeJSON(w, http.StatusOK, wireDeadLetters(page))
}

func (s *server) handlePurgeDeadLetters(w http.ResponseWriter, r *http.Request) {
	in := s.ingestor(w)
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
	writeJSON(w, http.StatusOK, agentapi.PurgeResult{Purged: n})
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

// ingestStatus is the answer of GET /v1/ingest: {"enabled": false} when
// ingestion is off or the agent is not running.
func (s *server) ingestStatus(ctx context.Context) agentapi.IngestStatus {
	in, err := s.b.Ingestor()
	if err != nil {
		return agentapi.IngestStatus{}
	}
	st := wireIngestStats(in.Stats())
	out := agentapi.IngestStatus{Enabled: true, Broker: in.Broker(), Embedded: s.cfg.IngestEmbedded,
		Topic: s.cfg.IngestTopic, Subscribed: in.Subscribed(), Pressure: st.Backpressure, Stats: &st}
	if ss, err := in.Store().Stats(ctx); err != nil {
		out.StoreError = err.Error()
	} else {
		w := wireStoreStats(ss)
		out.Store = &w
	}
	return out
}

func (s *server) handleIngest(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.ingestStatus(r.Context()))
}

// uplinkStatus is the answer of GET /v1/uplink: {"enabled": false}
// without a control plane.
func (s *server) uplinkStatus() agentapi.UplinkStatus {
	st, ok := s.b.Uplink()
	if !ok {
		return agentapi.UplinkStatus{}
	}
	return wireUplink(st)
}

func (s *server) handleUplink(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.uplinkStatus())
}
