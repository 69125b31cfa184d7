package uplink

import (
	"context"
	"errors"
	"net/http"

	"github.com/edgefleet/edgefleet/controlplane"
)

var (
	// ErrInvalidConfig is returned by Config.Validate and New for a
	// missing or out-of-range setting; the message names the YAML field.
	ErrInvalidConfig = errors.New("uplink: invalid config")
	// ErrNoEnrollmentToken means the agent holds no identity and has no
	// enrollment token (enrollment_token or enrollment_token_file) to get
	// one with.
	ErrNoEnrollmentToken = errors.New("uplink: not enrolled and no enrollment token configured")
	// ErrIdentity means the identity stored in DataDir/controlplane/ is
	// unreadable or inconsistent.
	ErrIdentity = errors.New("uplink: stored identity unusable")
	// ErrBreakerOpen means a request was not sent because the circuit
	// breaker is open (the control plane failed repeatedly).
	ErrBreakerOpen = errors.New("uplink: circuit breaker open")
	// ErrAlreadyStarted is returned by Start after Start or Stop.
	ErrAlreadyStarted = errors.New("uplink: already started or stopped")
)

// outcome classifies the result of one request.
type outcome int

const (
	outcomeOK           outcome = iota
	outcomeFailed               // network error, timeout, 5xx, 408, 429: the server may be down; counts for the breaker
	outcomeRejected             // another 4xx: the server is up and refuses this request
	outcomeUnauthorized         // 401/403: the agent's credentials are refused
	outcomeCanceled             // the uplink is stopping
)

func (o outcome) String() string {
	switch o {
	case outcomeOK:
		return "ok"
	case outcomeFailed:
		return "failed"
	case outcomeRejected:
		return "rejected"
	case outcomeUnauthorized:
		return "unauthorized"
	case outcomeCanceled:
		return "canceled"
	}
	return "unknown"
}

// classify sorts a request error. parent is the loop's context: an error
// after it was canceled is a shutdown, not a failure of the server.
func classify(parent context.Context, err error) outcome {
	if err == nil {
		return outcomeOK
	}
	if parent.Err() != nil {
		return outcomeCanceled
	}
	var ae *controlplane.APIError
	if !errors.As(err, &ae) {
		return outcomeFailed
	}
	switch {
	case ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden:
		return outcomeUnauthorized
	case ae.Status == http.StatusRequestTimeout || ae.Status == http.StatusTooManyRequests || ae.Status >= 500:
		return outcomeFailed
	case ae.Status >= 400:
		return outcomeRejected
	}
	return outcomeFailed
}
