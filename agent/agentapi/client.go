// Package agentapi is the wire of an edge-agent's local HTTP API (see
// package agent/localapi for the endpoints): the types the agent encodes
// and a Client with one method per endpoint. It imports nothing but the
// standard library, so commands can use it without linking the agent in.
package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// MaxAnswerBytes bounds an answer read from the agent (a page of 1000
// dead letters with 4 KiB payloads is about 6 MB).
const MaxAnswerBytes = 64 << 20

// Client talks to one agent's local API. Every call takes a context, which
// bounds it; the Client sets no timeout of its own.
type Client struct {
	base string
	hc   *http.Client
	// UserAgent is sent with every request when not empty.
	UserAgent string
}

// New returns a client of the agent API at base ("http://host:port"). A
// nil hc uses a client of its own (close it with CloseIdleConnections).
func New(base string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	return &Client{base: strings.TrimRight(base, "/"), hc: hc}
}

// BaseURL is the agent API's base URL.
func (c *Client) BaseURL() string { return c.base }

// CloseIdleConnections closes the connections the client keeps open.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// Error is an answer of the agent with a status other than the one the
// call expects. Message is the agent's {"error"} message; when the answer
// is not an agent API error (something else listens there), Message is
// empty and Body holds the start of the answer.
type Error struct {
	Method     string
	Path       string
	URL        string // base URL of the agent API
	StatusCode int
	Status     string // "404 Not Found"
	Message    string
	Body       string
}

func (e *Error) Error() string {
	if e.Message != "" {
		return fmt.Sprintf("agentapi: %s %s at %s: %s: %s", e.Method, e.Path, e.URL, e.Status, e.Message)
	}
	s := fmt.Sprintf("agentapi: %s %s at %s: %s (the answer is not an agent API error; is %s an edge-agent's API?)", e.Method, e.Path, e.URL, e.Status, e.URL)
	if e.Body != "" {
		s += ": " + strconv.Quote(e.Body)
	}
	return s
}

// StatusCode is the HTTP status of an *Error in err's chain; 0 when err
// is not an answer of the agent.
func StatusCode(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.StatusCode
	}
	return 0
}

// UnreachableError is a request that got no (complete) answer: nothing
// listens, the connection broke, or the context ended first (Err is then
// the context's error).
type UnreachableError struct {
	Method string
	Path   string
	URL    string
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("agentapi: %s %s: no answer from %s: %v", e.Method, e.Path, e.URL, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// ErrUnexpectedAnswer is wrapped by errors for answers with the expected
// status whose body is not what the endpoint returns.
var ErrUnexpectedAnswer = errors.New("unexpected answer")

// do makes one request and decodes the JSON answer into out when its
// status is want.
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body []byte, want int, out any) error {
	data, err := c.raw(ctx, method, path, query, body, want)
	if err != nil || out == nil {
		return err
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("agentapi: %s %s at %s: %w (is %s an edge-agent's API?): %v", method, path, c.base, ErrUnexpectedAnswer, c.base, err)
	}
	return nil
}

// raw makes one request and returns the answer's body when its status is
// want.
func (c *Client) raw(ctx context.Context, method, path string, query url.Values, body []byte, want int) ([]byte, error) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return nil, fmt.Errorf("agentapi: %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if c.UserAgent != "" {
		req.Header.Set("User-Agent", c.UserAgent)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, &UnreachableError{Method: method, Path: path, URL: c.base, Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswerBytes+1))
	if err != nil {
		return nil, &UnreachableError{Method: method, Path: path, URL: c.base, Err: fmt.Errorf("reading the answer: %w", err)}
	}
	if len(data) > MaxAnswerBytes {
		return nil, fmt.Errorf("agentapi: %s %s at %s: answer larger than %d bytes", method, path, c.base, MaxAnswerBytes)
	}
	if resp.StatusCode != want {
		e := &Error{Method: method, Path: path, URL: c.base, StatusCode: resp.StatusCode, Status: resp.Status}
		var msg ErrorBody
		if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err == nil && mt == "application/json" &&
			json.Unmarshal(data, &msg) == nil && msg.Error != "" {
			e.Message = msg.Error
		} else {
			e.Body = snippet(data)
		}
		return nil, e
	}
	return data, nil
}

// snippet is the start of an unexpected answer.
func snippet(b []byte) string {
	const n = 120
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}

// statePath is the path of a collection, or of a key in it. A key may
// hold '/'; its segments are escaped one by one.
func statePath(coll string, key ...string) string {
	p := "/v1/state/" + url.PathEscape(coll)
	for _, k := range key {
		segs := strings.Split(k, "/")
		for i, s := range segs {
			segs[i] = url.PathEscape(s)
		}
		p += "/" + strings.Join(segs, "/")
	}
	return p
}

// Health calls GET /healthz: the process is up.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	return h, c.do(ctx, http.MethodGet, "/healthz", nil, nil, http.StatusOK, &h)
}

// Ready calls GET /readyz; an agent that is not ready answers an *Error
// with status 503.
func (c *Client) Ready(ctx context.Context) (Ready, error) {
	var r Ready
	return r, c.do(ctx, http.MethodGet, "/readyz", nil, nil, http.StatusOK, &r)
}

// Metrics returns GET /metrics: the Prometheus text format.
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	return c.raw(ctx, http.MethodGet, "/metrics", nil, nil, http.StatusOK)
}

// Collections lists the collections the agent holds.
func (c *Client) Collections(ctx context.Context) ([]Collection, error) {
	var out []Collection
	return out, c.do(ctx, http.MethodGet, "/v1/state", nil, nil, http.StatusOK, &out)
}

// List lists a collection.
func (c *Client) List(ctx context.Context, coll string) (Listing, error) {
	var l Listing
	return l, c.do(ctx, http.MethodGet, statePath(coll), nil, nil, http.StatusOK, &l)
}

// Get reads one key; a missing key of an lww or mvreg collection is an
// *Error with status 404 (an OR-set answers Present false, a counter 0).
func (c *Client) Get(ctx context.Context, coll, key string) (Item, error) {
	var it Item
	return it, c.do(ctx, http.MethodGet, statePath(coll, key), nil, nil, http.StatusOK, &it)
}

// Put writes value to key: the value of an lww key, a new value of an
// mvreg key (replacing the siblings this agent has seen), or adds key to
// an OR-set (value ignored). For counters use CounterAdd.
func (c *Client) Put(ctx context.Context, coll, key string, value []byte) (WriteResult, error) {
	if value == nil {
		value = []byte{}
	}
	var r WriteResult
	return r, c.do(ctx, http.MethodPut, statePath(coll, key), nil, value, http.StatusOK, &r)
}

// CounterAdd adds n (negative to subtract) to a counter.
func (c *Client) CounterAdd(ctx context.Context, coll, key string, n int64) (WriteResult, error) {
	body, _ := json.Marshal(map[string]int64{"add": n})
	var r WriteResult
	return r, c.do(ctx, http.MethodPut, statePath(coll, key), nil, body, http.StatusOK, &r)
}

// Delete deletes an lww key, clears an mvreg key, or removes key from an
// OR-set; counters cannot be deleted (an *Error with status 405).
func (c *Client) Delete(ctx context.Context, coll, key string) (WriteResult, error) {
	var r WriteResult
	return r, c.do(ctx, http.MethodDelete, statePath(coll, key), nil, nil, http.StatusOK, &r)
}

// Members lists the members the agent knows, itself included.
func (c *Client) Members(ctx context.Context) ([]Member, error) {
	var out []Member
	return out, c.do(ctx, http.MethodGet, "/v1/members", nil, nil, http.StatusOK, &out)
}

// Devices lists the fleet's device registry, sorted by id.
func (c *Client) Devices(ctx context.Context) ([]DeviceRecord, error) {
	var body DeviceList
	if err := c.do(ctx, http.MethodGet, "/v1/devices", nil, nil, http.StatusOK, &body); err != nil {
		return nil, err
	}
	return body.Devices, nil
}

// Device reads one device's record; an unknown device is an *Error with
// status 404.
func (c *Client) Device(ctx context.Context, id string) (DeviceRecord, error) {
	var r DeviceRecord
	return r, c.do(ctx, http.MethodGet, "/v1/devices/"+url.PathEscape(id), nil, nil, http.StatusOK, &r)
}

// SendCommand publishes payload to the device's command topic (QoS 1) on
// the agent's broker.
func (c *Client) SendCommand(ctx context.Context, id string, payload []byte) (CommandSent, error) {
	var s CommandSent
	return s, c.do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(id)+"/commands", nil, payload, http.StatusAccepted, &s)
}

// DeadLetterQuery selects a page of dead letters; zero fields are unset.
type DeadLetterQuery struct {
	After  int64  // ids above this one
	Limit  int    // at most this many (the agent allows 1..1000; 0: its default)
	Reason string // only this reason
}

// DeadLetters returns one page of the agent's dead letters.
func (c *Client) DeadLetters(ctx context.Context, q DeadLetterQuery) (DeadLetterPage, error) {
	v := url.Values{}
	if q.After != 0 {
		v.Set("after", strconv.FormatInt(q.After, 10))
	}
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Reason != "" {
		v.Set("reason", q.Reason)
	}
	var p DeadLetterPage
	return p, c.do(ctx, http.MethodGet, "/v1/dead-letters", v, nil, http.StatusOK, &p)
}

// DeadLetterPurge selects the dead letters to delete: All, or any of
// Before, Reason and IDs.
type DeadLetterPurge struct {
	All    bool
	Before time.Time
	Reason string
	IDs    []int64
}

// PurgeDeadLetters deletes dead letters and returns how many.
func (c *Client) PurgeDeadLetters(ctx context.Context, p DeadLetterPurge) (PurgeResult, error) {
	v := url.Values{}
	if p.All {
		v.Set("all", "true")
	}
	if !p.Before.IsZero() {
		v.Set("before", p.Before.UTC().Format(time.RFC3339Nano))
	}
	if p.Reason != "" {
		v.Set("reason", p.Reason)
	}
	for _, id := range p.IDs {
		v.Add("id", strconv.FormatInt(id, 10))
	}
	var r PurgeResult
	return r, c.do(ctx, http.MethodDelete, "/v1/dead-letters", v, nil, http.StatusOK, &r)
}

// Ingest returns the ingestion status.
func (c *Client) Ingest(ctx context.Context) (IngestStatus, error) {
	var s IngestStatus
	return s, c.do(ctx, http.MethodGet, "/v1/ingest", nil, nil, http.StatusOK, &s)
}

// Uplink returns the uplink's status.
func (c *Client) Uplink(ctx context.Context) (UplinkStatus, error) {
	var s UplinkStatus
	return s, c.do(ctx, http.MethodGet, "/v1/uplink", nil, nil, http.StatusOK, &s)
}

// Status returns the agent at a glance.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var s Status
	return s, c.do(ctx, http.MethodGet, "/v1/status", nil, nil, http.StatusOK, &s)
}
