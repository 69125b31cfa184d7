package crdt

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
)

// InspectReport describes a store's database as found on disk.
type InspectReport struct {
	Path        string           `json:"path"`
	Replica     string           `json:"replica"`
	Seq         uint64           `json:"seq"`        // last local op sequence number
	Ops         int              `json:"ops"`        // ops in the op log
	Tombstones  int              `json:"tombstones"` // LWW delete markers plus removed-dot records
	DBBytes     int64            `json:"db_bytes"`   // database file plus WAL
	Origins     map[string]int64 `json:"origins"`    // version vector: highest op seen per origin
	Collections []CollectionJSON `json:"collections"`
}

// CollectionJSON is a CollectionInfo with JSON names.
type CollectionJSON struct {
	Name string `json:"name"`
	Type Type   `json:"type"`
	Keys int    `json:"keys"`
}

// Inspect reads the store at path without changing it (read-only, query
// only): it works while the owning agent runs and on a stopped agent's
// file. A missing file is os.ErrNotExist.
func Inspect(ctx context.Context, path string) (InspectReport, error) {
	rep := InspectReport{Path: path, Origins: map[string]int64{}}
	if _, err := os.Stat(path); err != nil {
		return rep, fmt.Errorf("crdt: inspect: %w", err)
	}
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "query_only(1)")
	q.Set("mode", "ro")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return rep, fmt.Errorf("crdt: inspect %s: %w", path, err)
	}
	defer db.Close()
	var seq int64
	err = db.QueryRowContext(ctx, `SELECT replica, seq FROM meta WHERE id = 1`).Scan(&rep.Replica, &seq)
	if errors.Is(err, sql.ErrNoRows) {
		return rep, fmt.Errorf("crdt: inspect %s: %w: no replica metadata", path, ErrCorrupt)
	}
	if err != nil {
		return rep, fmt.Errorf("crdt: inspect %s: %w", path, err)
	}
	if seq < 0 {
		return rep, fmt.Errorf("crdt: inspect %s: %w: negative sequence %d", path, ErrCorrupt, seq)
	}
	rep.Seq = uint64(seq)
	if err := db.QueryRowContext(ctx, `SELECT
		(SELECT count(*) FROM ops),
		(SELECT count(*) FROM lww WHERE deleted <> 0) + (SELECT count(*) FROM removed)`).Scan(&rep.Ops, &rep.Tombstones); err != nil {
		return rep, fmt.Errorf("crdt: inspect %s: %w", path, err)
	}
	rows, err := db.QueryContext(ctx, `SELECT origin, seq FROM vv ORDER BY origin`)
	if err != nil {
		return rep, fmt.Errorf("crdt: inspect %s: %w", path, err)
	}
	for rows.Next() {
		var o string
		var n int64
		if err := rows.Scan(&o, &n); err != nil {
			rows.Close()
			return rep, fmt.Errorf("crdt: inspect %s: version vector: %w: %v", path, ErrCorrupt, err)
		}
		rep.Origins[o] = n
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return rep, fmt.Errorf("crdt: inspect %s: %w", path, err)
	}
	if rep.Origins[rep.Replica] < seq {
		rep.Origins[rep.Replica] = seq // the local entry lives in meta
	}
	colls, err := listCollections(ctx, db)
	if err != nil {
		return rep, fmt.Errorf("crdt: inspect %s: %w", path, err)
	}
	rep.Collections = make([]CollectionJSON, 0, len(colls))
	for _, c := range colls {
		rep.Collections = append(rep.Collections, CollectionJSON(c))
	}
	for _, p := range []string{path, path + "-wal"} {
		if fi, err := os.Stat(p); err == nil {
			rep.DBBytes += fi.Size()
		}
	}
	return rep, nil
}
