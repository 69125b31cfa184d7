package provider

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// maxBody caps a provider's response body; a larger one is refused as
// bad JSON rather than read into memory.
const maxBody = 8 << 20

// httpGetter does the HTTP GETs of one provider.
type httpGetter struct {
	client  *http.Client
	timeout time.Duration
}

// httpStatusError is a non-2xx answer.
type httpStatusError struct {
	status int
	body   string
}

func (e *httpStatusError) Error() string {
	if e.body == "" {
		return http.StatusText(e.status)
	}
	return fmt.Sprintf("%s: %s", http.StatusText(e.status), e.body)
}

// get sends GET base+path?query with the headers and returns the status
// and body of a 2xx answer. Failures are *FetchError with Op and Zone to be
// filled by the caller (fetchErr).
func (g httpGetter) get(ctx context.Context, rawURL string, header http.Header) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return 0, nil, &FetchError{Reason: ReasonNetwork, Err: err}
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	req.Header.Set("Accept", "application/json")
	resp, err := g.client.Do(req)
	if err != nil {
		return 0, nil, &FetchError{Reason: netReason(ctx, err), Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		r := netReason(ctx, err)
		if r == ReasonNetwork {
			r = ReasonBadJSON // the body broke off: truncated
		}
		return resp.StatusCode, nil, &FetchError{Reason: r, Status: resp.StatusCode, Err: fmt.Errorf("reading body: %w", err)}
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return resp.StatusCode, nil, &FetchError{Reason: statusReason(resp.StatusCode), Status: resp.StatusCode,
			Err: &httpStatusError{status: resp.StatusCode, body: snippet(body)}}
	}
	if len(body) > maxBody {
		return resp.StatusCode, nil, &FetchError{Reason: ReasonBadJSON, Status: resp.StatusCode, Err: fmt.Errorf("body larger than %d bytes", maxBody)}
	}
	return resp.StatusCode, body, nil
}

// netReason classifies a transport error.
func netReason(ctx context.Context, err error) string {
	if errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded {
		return ReasonTimeout
	}
	var ne interface{ Timeout() bool }
	if errors.As(err, &ne) && ne.Timeout() {
		return ReasonTimeout
	}
	return ReasonNetwork
}

func statusReason(code int) string {
	switch {
	case code == http.StatusUnauthorized:
		return ReasonUnauthorized
	case code == http.StatusForbidden:
		return ReasonForbidden
	case code == http.StatusTooManyRequests:
		return ReasonRateLimited
	case code >= 500:
		return ReasonServerError
	}
	return ReasonHTTPStatus
}

// snippet returns the start of an error body for the error message.
func snippet(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}

// fetchErr completes err (a *FetchError from get or a decoder) with the
// provider, op (unless set: "login") and zone.
func fetchErr(provider, op, zone string, err error) error {
	var fe *FetchError
	if errors.As(err, &fe) {
		fe.Provider, fe.Zone = provider, zone
		if fe.Op == "" {
			fe.Op = op
		}
		return fe
	}
	return &FetchError{Provider: provider, Op: op, Zone: zone, Reason: reasonOf(err), Err: err}
}

// joinURL appends path and query to base (which may carry a path prefix).
func joinURL(base, path string, q url.Values) string {
	u := strings.TrimRight(base, "/") + "/" + strings.TrimLeft(path, "/")
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }
