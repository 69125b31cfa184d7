package controlplane

import (
	"bytes"
	"context"
	"crypto/x509"
	_ "embed"
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/cloudflare/circl/kem/xwing"
	"github.com/cloudflare/circl/sign/mldsa/mldsa44"
	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/cloudflare/circl/sign/mldsa/mldsa87"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/procstat"
)

//go:embed openapi.json
var openAPIDoc []byte

// OpenAPI returns the OpenAPI 3 document served at /openapi.json.
func OpenAPI() []byte { return bytes.Clone(openAPIDoc) }

// Limits on request values.
const (
	maxLabels         = 64
	maxLabelKeyLen    = 63
	maxLabelValueLen  = 255
	maxFieldLen       = 128
	maxIncidents      = 16 // database incidents in one heartbeat
	maxAuditPage      = 1000
	defaultAuditPage  = 100
	defaultPointLimit = 10000
	maxPointLimit     = 100000
	maxBuckets        = 100000
)

func (s *Server) buildRoutes() []route {
	metricsHandler := promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{})
	return append([]route{
		{method: "GET", path: "/healthz", access: accessPublic, handle: func(w http.ResponseWriter, r *http.Request, c *call) error {
			writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
			return nil
		}},
		{method: "GET", path: "/openapi.json", access: accessPublic, handle: func(w http.ResponseWriter, r *http.Request, c *call) error {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			w.Write(openAPIDoc)
			return nil
		}},
		{method: "GET", path: "/metrics", access: accessBearer, role: cpapi.RoleViewer, handle: func(w http.ResponseWriter, r *http.Request, c *call) error {
			metricsHandler.ServeHTTP(w, r)
			return nil
		}},
		{method: "GET", path: "/v1/server/status", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleStatus},

		{method: "POST", path: "/v1/enrollment-tokens", access: accessBearer, role: cpapi.RoleOperator, action: "enrollment-token.create", handle: s.handleCreateEnrollmentTokens},
		{method: "GET", path: "/v1/enrollment-tokens", access: accessBearer, role: cpapi.RoleOperator, handle: s.handleListEnrollmentTokens},
		{method: "POST", path: "/v1/enroll", access: accessEnroll, action: "agent.enroll", handle: s.handleEnroll},

		{method: "GET", path: "/v1/agents/self", access: accessAgent, handle: s.handleSelf},
		{method: "POST", path: "/v1/agents/self/heartbeat", access: accessAgent, handle: s.handleHeartbeat},
		{method: "POST", path: "/v1/agents/self/telemetry", access: accessAgent, handle: s.handleTelemetryUpload},

		{method: "GET", path: "/v1/agents", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleListAgents},
		{method: "GET", path: "/v1/agents/{id}", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleGetAgent},
		{method: "PATCH", path: "/v1/agents/{id}/labels", access: accessBearer, role: cpapi.RoleOperator, action: "agent.labels", handle: s.handleLabels},
		{method: "POST", path: "/v1/agents/{id}/decommission", access: accessBearer, role: cpapi.RoleOperator, action: "agent.decommission", handle: s.handleDecommission},

		{method: "GET", path: "/v1/telemetry", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleTelemetryQuery},

		{method: "POST", path: "/v1/tokens", access: accessBearer, role: cpapi.RoleAdmin, action: "token.create", handle: s.handleCreateAPIToken},
		{method: "GET", path: "/v1/tokens", access: accessBearer, role: cpapi.RoleAdmin, handle: s.handleListAPITokens},
		{method: "DELETE", path: "/v1/tokens/{id}", access: accessBearer, role: cpapi.RoleAdmin, action: "token.revoke", handle: s.handleRevokeAPIToken},

		{method: "GET", path: "/v1/audit", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleListAudit},
		{method: "GET", path: "/v1/audit/verify", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleVerifyAudit},
	}, append(append(append(s.keyRoutes(), s.modelRoutes()...), s.flRoutes()...), s.deviceRoutes()...)...)
}

// ---- validation helpers ----

// checkQuery refuses query parameters not in allowed, and any given twice.
func checkQuery(q url.Values, allowed ...string) error {
	for k, vs := range q {
		if !slices.Contains(allowed, k) {
			return badRequest("query parameter %q unknown (accepted: %s)", k, strings.Join(allowed, ", "))
		}
		if len(vs) > 1 {
			return badRequest("query parameter %q given %d times", k, len(vs))
		}
	}
	return nil
}

var labelKeyRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?$`)

func badRequest(format string, args ...any) error {
	return errorf(http.StatusBadRequest, format, args...)
}

func validLabelKey(field, k string) error {
	if len(k) > maxLabelKeyLen || !labelKeyRE.MatchString(k) {
		return badRequest("%s: label key %q must be 1-%d characters of letters, digits, '.', '_', '/', '-', starting and ending with a letter or digit", field, k, maxLabelKeyLen)
	}
	return nil
}

func validLabels(field string, l map[string]string) error {
	if len(l) > maxLabels {
		return badRequest("%s: %d labels, limit %d", field, len(l), maxLabels)
	}
	for _, k := range slices.Sorted(maps.Keys(l)) {
		if err := validLabelKey(field, k); err != nil {
			return err
		}
		if err := validText(fmt.Sprintf("%s[%q]", field, k), l[k], maxLabelValueLen); err != nil {
			return err
		}
	}
	return nil
}

// validText checks a free-text field: bounded, valid UTF-8, no control
// characters.
func validText(field, v string, max int) error {
	if len(v) > max {
		return badRequest("%s: %d bytes, limit %d", field, len(v), max)
	}
	if !utf8.ValidString(v) {
		return badRequest("%s: not valid UTF-8", field)
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return badRequest("%s: contains control characters", field)
		}
	}
	return nil
}

func parseTTL(field, v string, def, max time.Duration) (time.Duration, error) {
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, badRequest("%s: %q is not a duration (e.g. \"1h\", \"30m\")", field, v)
	}
	if d <= 0 {
		return 0, badRequest("%s: %s must be positive", field, v)
	}
	if d > max {
		return 0, badRequest("%s: %s exceeds the limit of %s", field, v, max)
	}
	return d, nil
}

// ---- enrollment ----

func (s *Server) handleCreateEnrollmentTokens(w http.ResponseWriter, r *http.Request, c *call) error {
	var req cpapi.CreateEnrollmentTokensRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	ttl, err := parseTTL("ttl", req.TTL, time.Hour, s.cfg.MaxEnrollmentTTL)
	if err != nil {
		return err
	}
	if err := validLabels("labels", req.Labels); err != nil {
		return err
	}
	count := req.Count
	if count == 0 {
		count = 1
	}
	if count < 0 || count > cpapi.MaxEnrollmentTokensPerRequest {
		return badRequest("count: %d out of range 1..%d", req.Count, cpapi.MaxEnrollmentTokensPerRequest)
	}
	if req.Labels == nil {
		req.Labels = map[string]string{}
	}
	out := make([]cpapi.NewEnrollmentToken, count)
	toks := make([]cpapi.EnrollmentToken, count)
	for i := range out {
		secret, err := newSecret(s.cfg.Rand, enrollmentTokenPrefix)
		if err != nil {
			return err
		}
		id, err := newID(s.cfg.Rand, "enr_")
		if err != nil {
			return err
		}
		toks[i] = cpapi.EnrollmentToken{ID: id, Hash: hashToken(secret), Labels: req.Labels, CreatedAt: c.now.UTC(), CreatedBy: c.actor, ExpiresAt: c.now.Add(ttl).UTC(), State: "unused"}
		out[i] = cpapi.NewEnrollmentToken{EnrollmentToken: toks[i], Token: secret}
	}
	c.target = toks[0].ID
	if count > 1 {
		c.target = fmt.Sprintf("%s..%s (%d tokens)", toks[0].ID, toks[count-1].ID, count)
	}
	if err := s.store.CreateEnrollmentTokens(r.Context(), toks, c.entry()); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, cpapi.EnrollmentTokensResponse{Tokens: out})
	return nil
}

func (s *Server) handleListEnrollmentTokens(w http.ResponseWriter, r *http.Request, c *call) error {
	toks, err := s.store.ListEnrollmentTokens(r.Context(), c.now)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, cpapi.EnrollmentTokenList{Tokens: toks})
	return nil
}

// enrollWire is EnrollRequest as received, with the keys still in base64
// so that a bad key can be named in the error.
type enrollWire struct {
	Token       string `json:"token"`
	CSR         string `json:"csr"`
	Name        string `json:"name"`
	Version     string `json:"version"`
	OS          string `json:"os"`
	Arch        string `json:"arch"`
	XWingPublic string `json:"xwing_public"`
	MLDSAPublic string `json:"mldsa_public"`
}

func decodeKey(field, v string) ([]byte, error) {
	if v == "" {
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, badRequest("%s: not standard base64: %v", field, err)
	}
	return b, nil
}

func validatePQKeys(xw, md []byte) error {
	if xw != nil {
		if _, err := xwing.Scheme().UnmarshalBinaryPublicKey(xw); err != nil {
			return badRequest("xwing_public: not an X-Wing public key (%d bytes, want %d): %v", len(xw), xwing.PublicKeySize, err)
		}
	}
	if md != nil {
		var err error
		switch len(md) {
		case mldsa44.PublicKeySize:
			_, err = mldsa44.Scheme().UnmarshalBinaryPublicKey(md)
		case mldsa65.PublicKeySize:
			_, err = mldsa65.Scheme().UnmarshalBinaryPublicKey(md)
		case mldsa87.PublicKeySize:
			_, err = mldsa87.Scheme().UnmarshalBinaryPublicKey(md)
		default:
			err = fmt.Errorf("length %d matches none of ML-DSA-44/65/87 (%d/%d/%d)", len(md), mldsa44.PublicKeySize, mldsa65.PublicKeySize, mldsa87.PublicKeySize)
		}
		if err != nil {
			return badRequest("mldsa_public: not an ML-DSA public key: %v", err)
		}
	}
	return nil
}

func (s *Server) handleEnroll(w http.ResponseWriter, r *http.Request, c *call) error {
	var req enrollWire
	if err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.Token == "" {
		return badRequest("token: missing enrollment token")
	}
	tok, err := s.store.LookupEnrollmentToken(r.Context(), hashToken(req.Token))
	if errors.Is(err, cpapi.ErrNotFound) {
		s.metrics.enrollments.WithLabelValues("refused").Inc()
		return errorf(http.StatusUnauthorized, "enrollment token not recognized")
	}
	if err != nil {
		return err
	}
	c.actor = "enrollment-token:" + tok.ID
	if tok.UsedAt == nil && !c.now.Before(tok.ExpiresAt) {
		s.metrics.enrollments.WithLabelValues("refused").Inc()
		return errorf(http.StatusUnauthorized, "enrollment token %s expired at %s", tok.ID, tok.ExpiresAt.Format(time.RFC3339))
	}
	csr, xw, md, err := parseEnrollRequest(&req)
	if err != nil {
		return err
	}
	if tok.UsedAt != nil {
		return s.enrollRetry(w, r, c, tok, csr, xw, md)
	}
	id, err := newID(s.cfg.Rand, "ag_")
	if err != nil {
		return err
	}
	c.target = id
	cert, certPEM, err := s.ca.issueAgentCert(csr, id, c.now, s.cfg.ClientCertTTL, s.cfg.Rand)
	if err != nil {
		return err
	}
	name := req.Name
	if name == "" {
		name = id
	}
	agent := cpapi.Agent{
		ID: id, Name: name, Labels: tok.Labels, Version: req.Version, OS: req.OS, Arch: req.Arch,
		FirstSeen: c.now, LastSeen: c.now, CertSerial: serialString(cert.SerialNumber), CertNotAfter: cert.NotAfter,
		XWingPublic: xw, MLDSAPublic: md, EnrollmentTokenID: tok.ID,
	}
	if err := s.store.EnrollAgent(r.Context(), tok.ID, agent, string(certPEM), c.now, c.entry()); err != nil {
		if errors.Is(err, ErrTokenUsed) {
			// A concurrent request with the same token won: this one may
			// be its retry.
			if tok, lerr := s.store.LookupEnrollmentToken(r.Context(), tok.Hash); lerr == nil && tok.UsedAt != nil {
				c.target = ""
				return s.enrollRetry(w, r, c, tok, csr, xw, md)
			}
		}
		s.metrics.enrollments.WithLabelValues("refused").Inc()
		return err
	}
	s.metrics.enrollments.WithLabelValues("ok").Inc()
	s.log.Info("agent enrolled", "agent", id, "name", name, "token", tok.ID)
	if xw != nil {
		s.registerAgentKey(keyCtx(r.Context(), c), id, xw, tok.Labels)
	}
	s.writeEnrollment(w, id, string(certPEM), tok.Labels)
	return nil
}

func (s *Server) writeEnrollment(w http.ResponseWriter, id, certPEM string, labels map[string]string) {
	writeJSON(w, http.StatusCreated, cpapi.EnrollResponse{
		AgentID: id, Certificate: certPEM, CABundle: string(s.ca.certPEM),
		Labels: labels, HeartbeatIntervalSeconds: s.cfg.HeartbeatInterval.Seconds(),
		KeysVerifyingKey: s.keys.signer.Public().Bytes(),
	})
}

// parseEnrollRequest checks an enrollment request's fields and decodes
// its CSR and post-quantum keys.
func parseEnrollRequest(req *enrollWire) (*x509.CertificateRequest, []byte, []byte, error) {
	if req.CSR == "" {
		return nil, nil, nil, badRequest("csr: missing certificate signing request")
	}
	csr, err := parseCSR(req.CSR)
	if err != nil {
		return nil, nil, nil, badRequest("%v", err)
	}
	for _, f := range []struct{ name, v string }{{"name", req.Name}, {"version", req.Version}, {"os", req.OS}, {"arch", req.Arch}} {
		if err := validText(f.name, f.v, maxFieldLen); err != nil {
			return nil, nil, nil, err
		}
	}
	xw, err := decodeKey("xwing_public", req.XWingPublic)
	if err != nil {
		return nil, nil, nil, err
	}
	md, err := decodeKey("mldsa_public", req.MLDSAPublic)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := validatePQKeys(xw, md); err != nil {
		return nil, nil, nil, err
	}
	return csr, xw, md, nil
}

// enrollRetry answers an enrollment with a used token. Within
// EnrollRetryWindow of its use, a request with the same keys as the
// enrollment that used it (CSR key, X-Wing and ML-DSA keys) is a retry
// whose answer was lost: it gets the same agent id and certificate again.
// Anything else is refused (and audited by the route wrapper).
func (s *Server) enrollRetry(w http.ResponseWriter, r *http.Request, c *call, tok cpapi.EnrollmentToken, csr *x509.CertificateRequest, xw, md []byte) error {
	refuse := func(why string) error {
		s.metrics.enrollments.WithLabelValues("refused").Inc()
		return errorf(http.StatusConflict, "enrollment token %s was already used at %s%s", tok.ID, tok.UsedAt.Format(time.RFC3339), why)
	}
	if c.now.Sub(*tok.UsedAt) > s.cfg.EnrollRetryWindow {
		return refuse("")
	}
	agentID, certPEM, err := s.store.LookupEnrollment(r.Context(), tok.ID)
	if errors.Is(err, cpapi.ErrNotFound) {
		return refuse("")
	}
	if err != nil {
		return err
	}
	c.target = agentID
	a, err := s.store.GetAgent(r.Context(), agentID)
	if err != nil {
		return err
	}
	if a.DecommissionedAt != nil {
		return refuse(fmt.Sprintf(" by agent %s, since decommissioned", agentID))
	}
	der, err := decodePEM([]byte(certPEM), "CERTIFICATE", "certificate of agent "+agentID)
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("controlplane: certificate of agent %s: %w", agentID, err)
	}
	issued, err1 := x509.MarshalPKIXPublicKey(cert.PublicKey)
	asked, err2 := x509.MarshalPKIXPublicKey(csr.PublicKey)
	if err1 != nil || err2 != nil || !bytes.Equal(issued, asked) || !bytes.Equal(xw, a.XWingPublic) || !bytes.Equal(md, a.MLDSAPublic) {
		return refuse(" by another key")
	}
	s.metrics.enrollments.WithLabelValues("retry").Inc()
	e := c.entry()
	e.Result = "ok (retry: answer of " + tok.UsedAt.Format(time.RFC3339Nano) + " sent again)"
	if _, err := s.store.AppendAudit(r.Context(), e); err != nil {
		return err
	}
	s.metrics.auditAppended.Inc()
	s.log.Info("enrollment retried; answered again", "agent", agentID, "token", tok.ID)
	s.writeEnrollment(w, agentID, certPEM, tok.Labels)
	return nil
}

// ---- agent (mutual TLS) ----

// agentGone turns a store error for the calling agent into 403 when the
// agent was decommissioned.
func (s *Server) agentGone(c *call, err error) error {
	if errors.Is(err, ErrDecommissioned) {
		s.setRevoked(c.serial, true)
		return errorf(http.StatusForbidden, "agent %s is decommissioned", c.agentID)
	}
	return err
}

func (s *Server) handleSelf(w http.ResponseWriter, r *http.Request, c *call) error {
	a, err := s.store.GetAgent(r.Context(), c.agentID)
	if err != nil {
		return err
	}
	if a.DecommissionedAt != nil {
		return s.agentGone(c, ErrDecommissioned)
	}
	a.State = s.stateOf(a, c.now)
	writeJSON(w, http.StatusOK, a)
	return nil
}

func validHeartbeat(hb *cpapi.Heartbeat) error {
	for _, f := range []struct{ name, v string }{{"name", hb.Name}, {"version", hb.Version}, {"os", hb.OS}, {"arch", hb.Arch}} {
		if err := validText(f.name, f.v, maxFieldLen); err != nil {
			return err
		}
	}
	if h := hb.Health; h != nil {
		switch h.Status {
		case "ok", "degraded", "failing":
		default:
			return badRequest("health.status: %q must be ok, degraded or failing", h.Status)
		}
		if len(h.Checks) > maxLabels {
			return badRequest("health.checks: %d checks, limit %d", len(h.Checks), maxLabels)
		}
		for k, v := range h.Checks {
			if err := validText("health.checks key", k, maxFieldLen); err != nil {
				return err
			}
			if err := validText(fmt.Sprintf("health.checks[%q]", k), v, maxLabelValueLen); err != nil {
				return err
			}
		}
	}
	if h := hb.Health; h != nil && len(h.Incidents) > maxIncidents {
		return badRequest("health.incidents: %d incidents, limit %d", len(h.Incidents), maxIncidents)
	} else if h != nil {
		for i, inc := range h.Incidents {
			for _, f := range []struct{ name, v string }{{"db", inc.DB}, {"file", inc.File}, {"quarantined_as", inc.QuarantinedAs},
				{"reason", inc.Reason}, {"status", inc.Status}} {
				if err := validText(fmt.Sprintf("health.incidents[%d].%s", i, f.name), f.v, maxLabelValueLen); err != nil {
					return err
				}
			}
		}
	}
	if rs := hb.Resources; rs != nil {
		if rs.CPUPercent < 0 || rs.CPUPercent > 100*1024 {
			return badRequest("resources.cpu_percent: %g out of range", rs.CPUPercent)
		}
		if rs.Load1 < 0 {
			return badRequest("resources.load1: %g is negative", rs.Load1)
		}
		if rs.MemUsedBytes > rs.MemTotalBytes && rs.MemTotalBytes != 0 {
			return badRequest("resources.mem_used_bytes %d exceeds mem_total_bytes %d", rs.MemUsedBytes, rs.MemTotalBytes)
		}
		if rs.DiskUsedBytes > rs.DiskTotalBytes && rs.DiskTotalBytes != 0 {
			return badRequest("resources.disk_used_bytes %d exceeds disk_total_bytes %d", rs.DiskUsedBytes, rs.DiskTotalBytes)
		}
		if err := validEnergy(rs.Energy); err != nil {
			return err
		}
	}
	return nil
}

// validEnergy checks the optional energy report of a heartbeat.
func validEnergy(e *cpapi.Energy) error {
	if e == nil {
		return nil
	}
	if err := validText("resources.energy.zone", e.Zone, maxFieldLen); err != nil {
		return err
	}
	if v := e.Intensity; v != nil && (math.IsNaN(*v) || math.IsInf(*v, 0) || *v < 0 || *v > 1e5) {
		return badRequest("resources.energy.intensity: %g is not a carbon intensity (gCO2eq/kWh, 0..100000)", *v)
	}
	if b := e.Battery; b != nil && (math.IsNaN(b.Level) || b.Level < 0 || b.Level > 1) {
		return badRequest("resources.energy.battery.level: %g outside 0..1", b.Level)
	}
	return nil
}

func (s *Server) handleHeartbeat(w http.ResponseWriter, r *http.Request, c *call) error {
	var hb cpapi.Heartbeat
	if err := s.decodeJSON(w, r, &hb); err != nil {
		return err
	}
	if err := validHeartbeat(&hb); err != nil {
		return err
	}
	a, err := s.store.RecordHeartbeat(r.Context(), c.agentID, hb, c.now)
	if err != nil {
		return s.agentGone(c, err)
	}
	s.metrics.heartbeats.Inc()
	writeJSON(w, http.StatusOK, cpapi.HeartbeatResponse{
		AgentID: a.ID, Labels: a.Labels, ServerTime: c.now.UTC(),
		HeartbeatIntervalSeconds: s.cfg.HeartbeatInterval.Seconds(),
	})
	return nil
}

// ---- registry (operators) ----

func (s *Server) handleListAgents(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	for k := range q {
		if k != "state" && k != "label" {
			return badRequest("query parameter %q unknown (accepted: state, label)", k)
		}
	}
	var state cpapi.AgentState
	switch v := q.Get("state"); cpapi.AgentState(v) {
	case "", cpapi.StateOnline, cpapi.StateStale, cpapi.StateOffline, cpapi.StateDecommissioned:
		state = cpapi.AgentState(v)
	default:
		return badRequest("state: %q must be online, stale, offline or decommissioned", v)
	}
	type sel struct {
		key, val string
		any      bool
	}
	var sels []sel
	for _, l := range q["label"] {
		k, v, eq := strings.Cut(l, "=")
		if err := validLabelKey("label", k); err != nil {
			return err
		}
		sels = append(sels, sel{k, v, !eq})
	}
	agents, err := s.store.ListAgents(r.Context())
	if err != nil {
		return err
	}
	out := agents[:0]
	for _, a := range agents {
		a.State = s.stateOf(a, c.now)
		if state != "" && a.State != state {
			continue
		}
		match := true
		for _, sl := range sels {
			v, ok := a.Labels[sl.key]
			if !ok || (!sl.any && v != sl.val) {
				match = false
				break
			}
		}
		if match {
			out = append(out, a)
		}
	}
	writeJSON(w, http.StatusOK, cpapi.AgentsResponse{Agents: out})
	return nil
}

func (s *Server) handleGetAgent(w http.ResponseWriter, r *http.Request, c *call) error {
	a, err := s.store.GetAgent(r.Context(), r.PathValue("id"))
	if err != nil {
		return err
	}
	a.State = s.stateOf(a, c.now)
	writeJSON(w, http.StatusOK, a)
	return nil
}

func (s *Server) handleLabels(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	c.target = id
	var p cpapi.LabelsPatch
	if err := s.decodeJSON(w, r, &p); err != nil {
		return err
	}
	if len(p.Set) == 0 && len(p.Remove) == 0 {
		return badRequest("body: nothing to change (give \"set\" and/or \"remove\")")
	}
	if err := validLabels("set", p.Set); err != nil {
		return err
	}
	if len(p.Remove) > maxLabels {
		return badRequest("remove: %d keys, limit %d", len(p.Remove), maxLabels)
	}
	for _, k := range p.Remove {
		if err := validLabelKey("remove", k); err != nil {
			return err
		}
	}
	a, err := s.store.UpdateAgentLabels(r.Context(), id, p.Set, p.Remove, c.entry())
	if err != nil {
		return err
	}
	s.updateAgentKeyLabels(keyCtx(r.Context(), c), id, a.Labels)
	s.models.watch.notify() // the agent's model assignments may change
	a.State = s.stateOf(a, c.now)
	writeJSON(w, http.StatusOK, a)
	return nil
}

func (s *Server) handleDecommission(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	c.target = id
	cur, err := s.store.GetAgent(r.Context(), id)
	if err != nil {
		return err
	}
	// Refuse the agent from this moment on; undone below only if the
	// change is not committed.
	wasRevoked := s.isRevoked(cur.CertSerial)
	s.setRevoked(cur.CertSerial, true)
	a, err := s.store.DecommissionAgent(r.Context(), id, c.now, c.entry())
	if err != nil {
		if !wasRevoked && cur.DecommissionedAt == nil {
			s.setRevoked(cur.CertSerial, false)
		}
		return err
	}
	s.log.Info("agent decommissioned", "agent", id, "by", c.actor, "serial", a.CertSerial)
	// The list first: the key rotation below wakes held key requests,
	// which answer with the list.
	s.revocationChanged(context.WithoutCancel(r.Context()))
	s.revokeAgentKeys(keyCtx(context.WithoutCancel(r.Context()), c), id)
	s.models.watch.notify() // its held model request ends with 403
	a.State = cpapi.StateDecommissioned
	writeJSON(w, http.StatusOK, a)
	return nil
}

// ---- telemetry query ----

func parseQueryTime(field, v string, def time.Time) (time.Time, error) {
	if v == "" {
		return def, nil
	}
	var t time.Time
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 || n > cpapi.MaxQueryTime.Unix() {
			return t, badRequest("%s: Unix time %d out of range 0..%d", field, n, cpapi.MaxQueryTime.Unix())
		}
		t = time.Unix(n, 0).UTC()
	} else {
		var perr error
		t, perr = time.Parse(time.RFC3339Nano, v)
		if perr != nil {
			return t, badRequest("%s: %q is neither RFC 3339 (2024-05-01T12:00:00Z) nor Unix seconds", field, v)
		}
	}
	if t.Before(time.Unix(0, 0)) || t.After(cpapi.MaxQueryTime) {
		return t, badRequest("%s: %s out of range %s..%s", field, t.Format(time.RFC3339), time.Unix(0, 0).UTC().Format(time.RFC3339), cpapi.MaxQueryTime.Format(time.RFC3339))
	}
	return t.UTC(), nil
}

func (s *Server) handleTelemetryQuery(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	if err := checkQuery(q, "agent", "device", "metric", "from", "to", "bucket", "limit"); err != nil {
		return err
	}
	tq := cpapi.TelemetryQuery{Agent: q.Get("agent"), Device: q.Get("device"), Metric: q.Get("metric")}
	for _, f := range []struct{ name, v string }{{"agent", tq.Agent}, {"device", tq.Device}, {"metric", tq.Metric}} {
		if err := validText(f.name, f.v, maxNameLen); err != nil {
			return err
		}
	}
	var err error
	if tq.To, err = parseQueryTime("to", q.Get("to"), c.now.UTC()); err != nil {
		return err
	}
	if tq.From, err = parseQueryTime("from", q.Get("from"), tq.To.Add(-time.Hour)); err != nil {
		return err
	}
	if !tq.From.Before(tq.To) {
		return badRequest("from %s must be before to %s", tq.From.Format(time.RFC3339Nano), tq.To.Format(time.RFC3339Nano))
	}
	if v := q.Get("bucket"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			n, nerr := strconv.ParseInt(v, 10, 64)
			if nerr != nil {
				return badRequest("bucket: %q is neither a duration (\"5m\") nor whole seconds", v)
			}
			d = time.Duration(n) * time.Second
		}
		if d < time.Millisecond {
			return badRequest("bucket: %q must be at least 1ms", v)
		}
		if n := tq.To.Sub(tq.From) / d; n > maxBuckets {
			return badRequest("bucket: %s over %s makes %d buckets, limit %d", d, tq.To.Sub(tq.From), n, maxBuckets)
		}
		tq.Bucket = d
	}
	tq.Limit = defaultPointLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxPointLimit {
			return badRequest("limit: %q must be an integer in 1..%d", v, maxPointLimit)
		}
		tq.Limit = n
	}
	res, err := s.store.QueryTelemetry(r.Context(), tq)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// ---- API tokens ----

func (s *Server) handleCreateAPIToken(w http.ResponseWriter, r *http.Request, c *call) error {
	var req cpapi.CreateAPITokenRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.Name == "" {
		return badRequest("name: missing")
	}
	if err := validText("name", req.Name, maxFieldLen); err != nil {
		return err
	}
	if !req.Role.Valid() {
		return badRequest("role: %q must be admin, operator or viewer", req.Role)
	}
	ttl, err := parseTTL("ttl", req.TTL, 0, 10*365*24*time.Hour)
	if err != nil {
		return err
	}
	secret, err := newSecret(s.cfg.Rand, apiTokenPrefix)
	if err != nil {
		return err
	}
	id, err := newID(s.cfg.Rand, "tok_")
	if err != nil {
		return err
	}
	c.target = id
	tok := cpapi.APIToken{ID: id, Hash: hashToken(secret), Name: req.Name, Role: req.Role, CreatedAt: c.now.UTC(), CreatedBy: c.actor}
	if ttl > 0 {
		exp := c.now.Add(ttl).UTC()
		tok.ExpiresAt = &exp
	}
	if err := s.store.CreateAPIToken(r.Context(), tok, c.entry()); err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, cpapi.NewAPIToken{APIToken: tok, Token: secret})
	return nil
}

func (s *Server) handleListAPITokens(w http.ResponseWriter, r *http.Request, c *call) error {
	toks, err := s.store.ListAPITokens(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, cpapi.APITokensResponse{Tokens: toks})
	return nil
}

func (s *Server) handleRevokeAPIToken(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	c.target = id
	tok, err := s.store.RevokeAPIToken(r.Context(), id, c.now, c.entry())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, tok)
	return nil
}

// ---- audit ----

func (s *Server) handleListAudit(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	for k := range q {
		if k != "after" && k != "limit" {
			return badRequest("query parameter %q unknown (accepted: after, limit)", k)
		}
	}
	var after int64
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return badRequest("after: %q must be a non-negative integer", v)
		}
		after = n
	}
	limit := defaultAuditPage
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxAuditPage {
			return badRequest("limit: %q must be an integer in 1..%d", v, maxAuditPage)
		}
		limit = n
	}
	recs, err := s.store.ListAudit(r.Context(), after, limit)
	if err != nil {
		return err
	}
	head, _, err := s.store.AuditHead(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, cpapi.AuditResponse{Records: recs, HeadSeq: head})
	return nil
}

func (s *Server) handleVerifyAudit(w http.ResponseWriter, r *http.Request, c *call) error {
	v, err := VerifyAudit(r.Context(), s.store)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

// ---- status ----

func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request, c *call) error {
	st, err := s.Status(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

// Status reports the server's version, uptime, memory and agent counts.
func (s *Server) Status(ctx context.Context) (cpapi.ServerStatus, error) {
	now := s.cfg.Clock.Now()
	agents, err := s.store.ListAgents(ctx)
	if err != nil {
		return cpapi.ServerStatus{}, err
	}
	counts := map[cpapi.AgentState]int{cpapi.StateOnline: 0, cpapi.StateStale: 0, cpapi.StateOffline: 0, cpapi.StateDecommissioned: 0}
	for _, a := range agents {
		counts[s.stateOf(a, now)]++
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return cpapi.ServerStatus{
		HeapBytes: ms.HeapInuse, StackBytes: ms.StackInuse, GoSysBytes: ms.Sys, CPUSeconds: procstat.CPUSeconds(),
		Version: s.cfg.Version, StartedAt: s.started.UTC(), Now: now.UTC(),
		UptimeSeconds: now.Sub(s.started).Seconds(), RSSBytes: procstat.RSS(), Goroutines: runtime.NumGoroutine(),
		Agents: counts, TotalAgents: len(agents), HeartbeatIntervalSeconds: s.cfg.HeartbeatInterval.Seconds(),
	}, nil
}
