package crdt

import (
	"errors"
	"strings"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Damaged returns the first error since Open that showed the database
// file damaged (SQLite reported SQLITE_CORRUPT or SQLITE_NOTADB); nil
// while none did. A damaged store keeps answering what it still can; its
// owner should stop using it, set the file aside and start from a new
// one (the agent quarantines it at its next start).
func (s *Store) Damaged() error {
	if p := s.damaged.Load(); p != nil {
		return *p
	}
	return nil
}

// noteDamage records err when it shows the file damaged.
func (s *Store) noteDamage(err error) {
	if !isDamage(err) {
		return
	}
	if s.damaged.CompareAndSwap(nil, &err) {
		s.log.Error("crdt: database file damaged", "path", s.path, "err", err)
	}
}

// isDamage reports whether err is SQLite finding the file damaged (also
// when only its message survived wrapping with %v).
func isDamage(err error) bool {
	if err == nil {
		return false
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
			return true
		}
	}
	msg := err.Error()
	return strings.Contains(msg, "database disk image is malformed") || strings.Contains(msg, "file is not a database")
}
