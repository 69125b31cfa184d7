package controlplane

import (
	"errors"
	"fmt"
	"net/http"
)

var (
	// ErrInvalidConfig is returned by New and NewClient when a configuration
	// value is missing or out of range.
	ErrInvalidConfig = errors.New("controlplane: invalid config")
	// ErrNotFound means the requested record (agent, token, series) does not
	// exist.
	ErrNotFound = errors.New("controlplane: not found")
	// ErrUnauthorized means the request carried no credentials, or
	// credentials that are unknown, expired or revoked (HTTP 401).
	ErrUnauthorized = errors.New("controlplane: unauthorized")
	// ErrForbidden means the caller is known but may not perform the call:
	// a viewer attempting a change, or a decommissioned agent (HTTP 403).
	ErrForbidden = errors.New("controlplane: forbidden")
	// ErrConflict means the request clashes with existing state, such as an
	// enrollment token that was already used (HTTP 409).
	ErrConflict = errors.New("controlplane: conflict")
	// ErrBadRequest means the request was malformed or out of range
	// (HTTP 400).
	ErrBadRequest = errors.New("controlplane: bad request")
	// ErrTooLarge means a request body, or its decompressed form, exceeded
	// the configured limit (HTTP 413).
	ErrTooLarge = errors.New("controlplane: request too large")
	// ErrTokenUsed means an enrollment token has already been consumed.
	ErrTokenUsed = errors.New("controlplane: enrollment token already used")
	// ErrTokenExpired means an enrollment token is past its expiry time.
	ErrTokenExpired = errors.New("controlplane: enrollment token expired")
	// ErrDecommissioned means the agent was decommissioned; its certificate
	// is revoked.
	ErrDecommissioned = errors.New("controlplane: agent decommissioned")
	// ErrAuditTampered means the audit chain does not verify: a record was
	// edited, removed or reordered.
	ErrAuditTampered = errors.New("controlplane: audit log tampered")
	// ErrClosed is returned by a Server or Store used after Close.
	ErrClosed = errors.New("controlplane: closed")
)

// APIError is an error answer from the control plane as seen by Client. It
// unwraps to the sentinel matching its status code (ErrUnauthorized,
// ErrForbidden, ErrNotFound, ErrConflict, ErrBadRequest, ErrTooLarge), so
// callers can use errors.Is.
type APIError struct {
	// Status is the HTTP status code.
	Status int
	// Message is the server's explanation.
	Message string
	// Method and Path identify the call.
	Method, Path string
}

// Error implements error.
func (e *APIError) Error() string {
	return fmt.Sprintf("controlplane: %s %s: %d %s: %s", e.Method, e.Path, e.Status, http.StatusText(e.Status), e.Message)
}

// Unwrap returns the sentinel error for the status code, or nil.
func (e *APIError) Unwrap() error {
	return statusSentinel(e.Status)
}

func statusSentinel(status int) error {
	switch status {
	case http.StatusBadRequest:
		return ErrBadRequest
	case http.StatusUnauthorized:
		return ErrUnauthorized
	case http.StatusForbidden:
		return ErrForbidden
	case http.StatusNotFound:
		return ErrNotFound
	case http.StatusConflict:
		return ErrConflict
	case http.StatusRequestEntityTooLarge:
		return ErrTooLarge
	case http.StatusServiceUnavailable:
		return ErrSealed
	}
	return nil
}

// httpError is an error with the HTTP status a handler should answer with.
type httpError struct {
	status int
	msg    string
	err    error
}

func (e *httpError) Error() string { return e.msg }
func (e *httpError) Unwrap() error { return e.err }

func errorf(status int, format string, args ...any) *httpError {
	return &httpError{status: status, msg: fmt.Sprintf(format, args...), err: statusSentinel(status)}
}
