package ingest

import "github.com/edgefleet/edgefleet/internal/sqlitecheck"

// Damaged returns the first error since OpenStore with which a write
// transaction (a commit, an outbox or retention change) found the
// database file damaged (SQLITE_CORRUPT or SQLITE_NOTADB); nil while none
// did. Failed commits are not acknowledged: their messages stay with the
// broker. The owner should stop ingesting, set the file aside and salvage
// it (the agent does so at its next start).
func (s *Store) Damaged() error {
	if p := s.damaged.Load(); p != nil {
		return *p
	}
	return nil
}

// noteDamage records err when it shows the file damaged and returns it.
func (s *Store) noteDamage(err error) error {
	if sqlitecheck.IsCorrupt(err) && s.damaged.CompareAndSwap(nil, &err) {
		s.log.Error("ingest: database file damaged", "path", s.cfg.Path, "err", err)
	}
	return err
}
