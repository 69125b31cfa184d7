package controlplane

import (
	"errors"
	"fmt"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// The errors a Client sees (cpapi.ErrNotFound, ErrUnauthorized,
// ErrForbidden, ErrConflict, ErrBadRequest, ErrTooLarge, ErrSealed) are
// the API's own, in package cpapi; the server and its Store return them
// too. These are the server's own.
var (
	// ErrInvalidConfig is returned by New when a configuration value is
	// missing or out of range.
	ErrInvalidConfig = errors.New("controlplane: invalid config")
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

// httpError is an error with the HTTP status a handler should answer with.
type httpError struct {
	status int
	msg    string
	err    error
}

func (e *httpError) Error() string { return e.msg }
func (e *httpError) Unwrap() error { return e.err }

func errorf(status int, format string, args ...any) *httpError {
	return &httpError{status: status, msg: fmt.Sprintf(format, args...), err: cpapi.StatusError(status)}
}
