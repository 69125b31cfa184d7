package crdt

import "github.com/edgefleet/edgefleet/internal/sqlitecheck"

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
	if !sqlitecheck.IsCorrupt(err) {
		return
	}
	if s.damaged.CompareAndSwap(nil, &err) {
		s.log.Error("crdt: database file damaged", "path", s.path, "err", err)
	}
}
