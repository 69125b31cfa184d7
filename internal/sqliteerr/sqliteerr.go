// Package sqliteerr classifies SQLite write errors: whether a failure
// says the storage is unavailable (the disk is full, failing, locked or
// read-only), so the write should be retried later, or may concern what
// was being written.
package sqliteerr

import (
	"errors"
	"syscall"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// unavailable are the primary SQLite result codes that describe the
// database file, the disk or the process, never the data written.
var unavailable = map[int]bool{
	sqlite3.SQLITE_FULL:     true, // database or disk is full
	sqlite3.SQLITE_IOERR:    true, // disk I/O error (any extended code)
	sqlite3.SQLITE_BUSY:     true, // database locked by another connection
	sqlite3.SQLITE_LOCKED:   true, // table locked
	sqlite3.SQLITE_CANTOPEN: true, // cannot open the file (a journal, a temporary file)
	sqlite3.SQLITE_NOMEM:    true, // out of memory
	sqlite3.SQLITE_READONLY: true, // database or file system read-only
	sqlite3.SQLITE_PROTOCOL: true, // WAL locking protocol race
	sqlite3.SQLITE_NOLFS:    true, // large files unsupported
	sqlite3.SQLITE_PERM:     true, // access permission denied
	sqlite3.SQLITE_CORRUPT:  true, // the file is damaged: no write will succeed
	sqlite3.SQLITE_NOTADB:   true, // the file is not a database
}

// Code returns the primary SQLite result code err carries, or 0.
func Code(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() & 0xff
	}
	return 0
}

// Unavailable reports whether err says the storage cannot take writes
// now (disk full, I/O error, busy or locked, read-only, cannot open,
// out of memory, corrupt): retry later, and do not blame the data.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	if unavailable[Code(err)] {
		return true
	}
	for _, e := range []error{syscall.ENOSPC, syscall.EDQUOT, syscall.EIO, syscall.EROFS} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Full reports whether err says the disk (or the database's size limit)
// is full: SQLITE_FULL, ENOSPC or EDQUOT.
func Full(err error) bool {
	return Code(err) == sqlite3.SQLITE_FULL || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
