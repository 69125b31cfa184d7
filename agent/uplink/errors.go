package uplink

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
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
	// ErrKeyring means the agent's keyring (Deps.Keyring) could not be
	// opened: a damaged file or another device key.
	ErrKeyring = errors.New("uplink: agent keyring unusable")
	// ErrNoTelemetryKey means an upload waits because the agent holds no
	// version of the key "telemetry" yet (see Status.UploadsWaiting).
	ErrNoTelemetryKey = errors.New("uplink: no telemetry key yet")
)

// outcome classifies the result of one request.
type outcome int

const (
	outcomeOK           outcome = iota
	outcomeFailed               // network error, timeout, 5xx, 408, 429: the server may be down; counts for the breaker
	outcomeRejected             // another 4xx: the server is up and refuses this request
	outcomeUnauthorized         // 401/403: the agent's credentials are refused
	outcomeCanceled             // the uplink is stopping
	outcomeSealed               // 503 from a sealed key service: the server is up, keys are not available
	outcomeWaiting              // nothing sent: the agent has no telemetry key yet
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
	case outcomeSealed:
		return "sealed"
	case outcomeWaiting:
		return "waiting"
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
	var ae *cpapi.APIError
	if !errors.As(err, &ae) {
		return outcomeFailed
	}
	switch {
	case keyServiceSealed(ae):
		return outcomeSealed
	case ae.Status == http.StatusUnauthorized || ae.Status == http.StatusForbidden:
		return outcomeUnauthorized
	case ae.Status == http.StatusRequestTimeout || ae.Status == http.StatusTooManyRequests || ae.Status >= 500:
		return outcomeFailed
	case ae.Status >= 400:
		return outcomeRejected
	}
	return outcomeFailed
}

// keyServiceSealed reports a 503 from the control plane's sealed key
// service (its message says so), as opposed to a server failing.
func keyServiceSealed(ae *cpapi.APIError) bool {
	return ae.Status == http.StatusServiceUnavailable && errors.Is(ae, cpapi.ErrSealed) &&
		strings.Contains(ae.Message, "key service sealed")
}

// FieldError is an invalid field of Config. It matches ErrInvalidConfig
// (errors.Is).
type FieldError struct {
	// Field is the field's YAML name.
	Field string
	// Msg says what is wrong with it.
	Msg string
}

func (e *FieldError) Error() string { return ErrInvalidConfig.Error() + ": " + e.Field + ": " + e.Msg }

// Is reports whether target is ErrInvalidConfig.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidConfig }
