package cpapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ClientConfig configures a Client.
type ClientConfig struct {
	// URL is the server's base URL, e.g. "https://127.0.0.1:8443".
	URL string
	// Token is an operator API token, sent as a bearer token.
	Token string
	// CAPEM is the control plane CA (DataDir/ca.pem) used to verify the
	// server. Nil uses the system roots.
	CAPEM []byte
	// Certificate is an agent's client certificate for mutual TLS, as
	// returned by AgentCertificate after enrollment.
	Certificate *tls.Certificate
	// Timeout bounds each call (default 30s).
	Timeout time.Duration
	// Transport replaces the HTTP transport built from CAPEM and
	// Certificate (for tests and load generators).
	Transport http.RoundTripper
	// UserAgent is sent with every request (default "edgefleet-controlplane-client").
	UserAgent string
}

// Client is a typed client of the control plane API, used by edgectl
// (operator calls, with Token) and by agents (enrollment without
// credentials, then heartbeat and telemetry with Certificate). It is safe
// for concurrent use.
type Client struct {
	base    *url.URL
	token   string
	hc      *http.Client
	watch   *http.Client // no Timeout of its own: held requests set theirs
	timeout time.Duration
	ua      string
}

// ClientTLSConfig returns the TLS settings a Client uses: TLS 1.3 only,
// the given CA bundle (nil: system roots), and an optional client
// certificate. Go's default key exchanges are kept, which include the
// hybrid post-quantum X25519MLKEM768.
func ClientTLSConfig(caPEM []byte, cert *tls.Certificate) (*tls.Config, error) {
	conf := &tls.Config{MinVersion: tls.VersionTLS13}
	if len(caPEM) > 0 {
		pool, err := CertPoolFromPEM(caPEM)
		if err != nil {
			return nil, err
		}
		conf.RootCAs = pool
	}
	if cert != nil {
		conf.Certificates = []tls.Certificate{*cert}
	}
	return conf, nil
}

// NewClient checks cfg and builds a client.
func NewClient(cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(cfg.URL, "/"))
	if err != nil {
		return nil, fmt.Errorf("%w: URL %q: %v", ErrInvalidConfig, cfg.URL, err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("%w: URL %q must be https://host[:port]", ErrInvalidConfig, cfg.URL)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("%w: Timeout %s is negative", ErrInvalidConfig, cfg.Timeout)
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "edgefleet-controlplane-client"
	}
	rt := cfg.Transport
	if rt == nil {
		tconf, err := ClientTLSConfig(cfg.CAPEM, cfg.Certificate)
		if err != nil {
			return nil, err
		}
		rt = &http.Transport{
			Proxy:               http.ProxyFromEnvironment,
			TLSClientConfig:     tconf,
			TLSHandshakeTimeout: 10 * time.Second,
			// No ResponseHeaderTimeout: the server may hold a request
			// (WatchKeyMessages); http.Client.Timeout bounds other calls.
			MaxIdleConns:        16,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     90 * time.Second,
		}
	}
	// The API never redirects; following one would resend the bearer
	// token to wherever it points.
	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{
		base:    u,
		token:   cfg.Token,
		hc:      &http.Client{Transport: rt, Timeout: cfg.Timeout, CheckRedirect: noRedirect},
		watch:   &http.Client{Transport: rt, CheckRedirect: noRedirect},
		timeout: cfg.Timeout,
		ua:      cfg.UserAgent,
	}, nil
}

// CloseIdleConnections closes kept-alive connections.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// do sends a request and decodes a JSON answer into out (if not nil).
// body is JSON-encoded unless it is a rawBody.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body any, out any) error {
	return c.doWith(c.hc, ctx, method, path, query, body, out)
}

// doWith is do on the given HTTP client.
func (c *Client) doWith(hc *http.Client, ctx context.Context, method, path string, query url.Values, body any, out any) error {
	u := *c.base
	u.Path = c.base.Path + path
	if len(query) > 0 {
		u.RawQuery = query.Encode()
	}
	var rd io.Reader
	var contentEncoding string
	contentType := "application/json"
	var header map[string]string
	switch b := body.(type) {
	case nil:
	case rawBody:
		rd, contentEncoding, header = bytes.NewReader(b.data), b.encoding, b.header
		if b.contentType != "" {
			contentType = b.contentType
		}
	default:
		buf, err := json.Marshal(b)
		if err != nil {
			return fmt.Errorf("controlplane: %s %s: encode body: %w", method, path, err)
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return fmt.Errorf("controlplane: %s %s: %w", method, path, err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", contentType)
	}
	if contentEncoding != "" {
		req.Header.Set("Content-Encoding", contentEncoding)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.ua)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("controlplane: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 256<<20))
	if err != nil {
		return fmt.Errorf("controlplane: %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var eb ErrorBody
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
			msg = eb.Error
		}
		return &APIError{Status: resp.StatusCode, Message: msg, Method: method, Path: path}
	}
	if out == nil {
		return nil
	}
	if raw, ok := out.(*[]byte); ok {
		*raw = data
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("controlplane: %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

type rawBody struct {
	data        []byte
	encoding    string
	contentType string            // "" means application/json
	header      map[string]string // extra request headers
}

// Health calls GET /healthz.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, "GET", "/healthz", nil, nil, nil)
}

// OpenAPI fetches the OpenAPI document.
func (c *Client) OpenAPI(ctx context.Context) ([]byte, error) {
	var b []byte
	err := c.do(ctx, "GET", "/openapi.json", nil, nil, &b)
	return b, err
}

// Metrics fetches the Prometheus text exposition (viewer or above).
func (c *Client) Metrics(ctx context.Context) (string, error) {
	var b []byte
	err := c.do(ctx, "GET", "/metrics", nil, nil, &b)
	return string(b), err
}

// ServerStatus fetches version, uptime, memory and agent counts.
func (c *Client) ServerStatus(ctx context.Context) (ServerStatus, error) {
	var st ServerStatus
	err := c.do(ctx, "GET", "/v1/server/status", nil, nil, &st)
	return st, err
}

// CreateEnrollmentTokens makes count single-use enrollment tokens valid for
// ttl that give enrolled agents labels. A zero ttl or count takes the
// server default (1h, 1).
func (c *Client) CreateEnrollmentTokens(ctx context.Context, ttl time.Duration, labels map[string]string, count int) ([]NewEnrollmentToken, error) {
	req := CreateEnrollmentTokensRequest{Labels: labels, Count: count}
	if ttl != 0 {
		req.TTL = ttl.String()
	}
	var resp EnrollmentTokensResponse
	err := c.do(ctx, "POST", "/v1/enrollment-tokens", nil, req, &resp)
	return resp.Tokens, err
}

// ListEnrollmentTokens lists enrollment tokens without their secrets.
func (c *Client) ListEnrollmentTokens(ctx context.Context) ([]EnrollmentToken, error) {
	var resp EnrollmentTokenList
	err := c.do(ctx, "GET", "/v1/enrollment-tokens", nil, nil, &resp)
	return resp.Tokens, err
}

// Enroll exchanges an enrollment token and a CSR for an agent identity.
// It needs no credentials beyond the token.
func (c *Client) Enroll(ctx context.Context, req EnrollRequest) (EnrollResponse, error) {
	var resp EnrollResponse
	err := c.do(ctx, "POST", "/v1/enroll", nil, req, &resp)
	return resp, err
}

// Self returns the calling agent's registry record (mutual TLS).
func (c *Client) Self(ctx context.Context) (Agent, error) {
	var a Agent
	err := c.do(ctx, "GET", "/v1/agents/self", nil, nil, &a)
	return a, err
}

// Heartbeat reports the calling agent's status (mutual TLS).
func (c *Client) Heartbeat(ctx context.Context, hb Heartbeat) (HeartbeatResponse, error) {
	var resp HeartbeatResponse
	err := c.do(ctx, "POST", "/v1/agents/self/heartbeat", nil, hb, &resp)
	return resp, err
}

// UploadTelemetry sends a gzip-compressed batch (mutual TLS). Re-sending a
// batch with the same Epoch, BatchSeq and readings is safe: the answer has
// Duplicate set and nothing is stored twice. The same identity with other
// readings is refused (409, ErrBatchConflict).
func (c *Client) UploadTelemetry(ctx context.Context, b TelemetryBatch) (IngestResult, error) {
	data, err := EncodeTelemetryBatch(b)
	if err != nil {
		return IngestResult{}, err
	}
	return c.UploadTelemetryEncoded(ctx, data)
}

// UploadTelemetryEncoded sends a batch already encoded by
// EncodeTelemetryBatch, so that a retry resends identical bytes.
func (c *Client) UploadTelemetryEncoded(ctx context.Context, gzippedJSON []byte) (IngestResult, error) {
	var res IngestResult
	err := c.do(ctx, "POST", "/v1/agents/self/telemetry", nil, rawBody{data: gzippedJSON, encoding: "gzip"}, &res)
	return res, err
}

// AgentFilter selects agents in ListAgents.
type AgentFilter struct {
	// State keeps agents in this state only (empty: all).
	State AgentState
	// Labels are selectors "key=value" (exact) or "key" (present); all
	// must match.
	Labels []string
}

// ListAgents lists the registry.
func (c *Client) ListAgents(ctx context.Context, f AgentFilter) ([]Agent, error) {
	q := url.Values{}
	if f.State != "" {
		q.Set("state", string(f.State))
	}
	for _, l := range f.Labels {
		q.Add("label", l)
	}
	var resp AgentsResponse
	err := c.do(ctx, "GET", "/v1/agents", q, nil, &resp)
	return resp.Agents, err
}

// GetAgent returns one agent, including its post-quantum public keys.
func (c *Client) GetAgent(ctx context.Context, id string) (Agent, error) {
	var a Agent
	if err := checkID(id); err != nil {
		return a, err
	}
	err := c.do(ctx, "GET", "/v1/agents/"+id, nil, nil, &a)
	return a, err
}

// UpdateLabels sets and removes an agent's labels.
func (c *Client) UpdateLabels(ctx context.Context, id string, p LabelsPatch) (Agent, error) {
	var a Agent
	if err := checkID(id); err != nil {
		return a, err
	}
	err := c.do(ctx, "PATCH", "/v1/agents/"+id+"/labels", nil, p, &a)
	return a, err
}

// Decommission revokes an agent's certificate; the agent is refused from
// then on.
func (c *Client) Decommission(ctx context.Context, id string) (Agent, error) {
	var a Agent
	if err := checkID(id); err != nil {
		return a, err
	}
	err := c.do(ctx, "POST", "/v1/agents/"+id+"/decommission", nil, nil, &a)
	return a, err
}

// QueryTelemetry queries readings; zero From/To take the server defaults
// (the hour before now), a zero Bucket returns raw points.
func (c *Client) QueryTelemetry(ctx context.Context, tq TelemetryQuery) (TelemetryResult, error) {
	q := url.Values{}
	for k, v := range map[string]string{"agent": tq.Agent, "device": tq.Device, "metric": tq.Metric} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if !tq.From.IsZero() {
		q.Set("from", tq.From.UTC().Format(time.RFC3339Nano))
	}
	if !tq.To.IsZero() {
		q.Set("to", tq.To.UTC().Format(time.RFC3339Nano))
	}
	if tq.Bucket > 0 {
		q.Set("bucket", tq.Bucket.String())
	}
	if tq.Limit > 0 {
		q.Set("limit", strconv.Itoa(tq.Limit))
	}
	var res TelemetryResult
	err := c.do(ctx, "GET", "/v1/telemetry", q, nil, &res)
	return res, err
}

// CreateAPIToken makes an operator token; the secret is in the answer only.
// A zero ttl means no expiry.
func (c *Client) CreateAPIToken(ctx context.Context, name string, role Role, ttl time.Duration) (NewAPIToken, error) {
	req := CreateAPITokenRequest{Name: name, Role: role}
	if ttl != 0 {
		req.TTL = ttl.String()
	}
	var tok NewAPIToken
	err := c.do(ctx, "POST", "/v1/tokens", nil, req, &tok)
	return tok, err
}

// ListAPITokens lists operator tokens without secrets.
func (c *Client) ListAPITokens(ctx context.Context) ([]APIToken, error) {
	var resp APITokensResponse
	err := c.do(ctx, "GET", "/v1/tokens", nil, nil, &resp)
	return resp.Tokens, err
}

// RevokeAPIToken revokes an operator token.
func (c *Client) RevokeAPIToken(ctx context.Context, id string) (APIToken, error) {
	var tok APIToken
	if err := checkID(id); err != nil {
		return tok, err
	}
	err := c.do(ctx, "DELETE", "/v1/tokens/"+id, nil, nil, &tok)
	return tok, err
}

// ListAudit returns up to limit audit records after sequence number after
// (limit 0: server default).
func (c *Client) ListAudit(ctx context.Context, after int64, limit int) (AuditResponse, error) {
	q := url.Values{}
	if after > 0 {
		q.Set("after", strconv.FormatInt(after, 10))
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var resp AuditResponse
	err := c.do(ctx, "GET", "/v1/audit", q, nil, &resp)
	return resp, err
}

// VerifyAudit asks the server to check the audit chain.
func (c *Client) VerifyAudit(ctx context.Context) (AuditVerification, error) {
	var v AuditVerification
	err := c.do(ctx, "GET", "/v1/audit/verify", nil, nil, &v)
	return v, err
}

// checkID refuses an id that would not stay one path segment: ids go into
// request paths unescaped.
func checkID(id string) error {
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/?#%\\") {
		return fmt.Errorf("controlplane: client: %w: id %q is not a valid id", ErrBadRequest, id)
	}
	for _, r := range id {
		if r < 0x21 || r == 0x7f {
			return fmt.Errorf("controlplane: client: %w: id %q has a space or control character", ErrBadRequest, id)
		}
	}
	return nil
}

// UploadTelemetrySealed sends a sealed upload (mutual TLS): envelope is
// the batch's EncodeTelemetryBatch form sealed under the key "telemetry"
// with TelemetryAAD(agentID, epoch, batchSeq). Re-sending is safe, as for
// UploadTelemetry, even sealed anew.
func (c *Client) UploadTelemetrySealed(ctx context.Context, agentID, epoch string, batchSeq uint64, envelope []byte) (IngestResult, error) {
	var res IngestResult
	err := c.do(ctx, "POST", "/v1/agents/self/telemetry", nil, rawBody{
		data: envelope, contentType: EnvelopeContentType,
		header: map[string]string{HeaderSealedAgent: agentID, HeaderSealedEpoch: epoch, HeaderSealedBatchSeq: strconv.FormatUint(batchSeq, 10)},
	}, &res)
	return res, err
}
