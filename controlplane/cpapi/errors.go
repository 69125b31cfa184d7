package cpapi

import (
	"errors"
	"fmt"
	"net/http"
)

// Errors of the API. The server answers each with its HTTP status; a
// Client's *APIError unwraps to the one matching the status, so callers on
// both sides use errors.Is. Their texts keep the "controlplane:" prefix
// that server answers and client errors have always carried.
var (
	// ErrInvalidConfig is returned by NewClient when a ClientConfig value
	// is missing or out of range.
	ErrInvalidConfig = errors.New("controlplane: invalid client config")
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
	// ErrSealed means the key service is sealed: key operations are refused
	// (HTTP 503) until enough root key shares were given to POST
	// /v1/keys/unseal.
	ErrSealed = errors.New("controlplane: key service sealed")
)

// APIError is an error answer from the control plane as seen by Client. It
// unwraps to the sentinel matching its status code (ErrUnauthorized,
// ErrForbidden, ErrNotFound, ErrConflict, ErrBadRequest, ErrTooLarge,
// ErrSealed), so callers can use errors.Is.
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
	return StatusError(e.Status)
}

// StatusError returns the sentinel error an answer with this HTTP status
// stands for, or nil.
func StatusError(status int) error {
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

// ErrorBody is every error answer's JSON shape.
type ErrorBody struct {
	Error string `json:"error"`
}
