package crdt

import (
	"errors"

	"github.com/edgefleet/edgefleet/internal/sqliteerr"
)

// ErrUnavailable: the database could not take the write (disk full, I/O
// error, locked, read-only): nothing of the call was applied, and the
// same call may succeed later. The error wrapping it keeps SQLite's
// message.
var ErrUnavailable = errors.New("crdt: storage unavailable")

// unavailableError is a storage failure: it reads as the failure and
// matches both it and ErrUnavailable.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string   { return e.err.Error() }
func (e *unavailableError) Unwrap() []error { return []error{e.err, ErrUnavailable} }

// unavailable marks err as ErrUnavailable when it says the storage
// cannot take writes (sqliteerr.Unavailable); other errors are returned
// as they are.
func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || !sqliteerr.Unavailable(err) {
		return err
	}
	return &unavailableError{err: err}
}
