package crdt

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
)

// StateHash returns the hex SHA-256 of the canonical encoding of the
// replicated state: live LWW entries (with their winning timestamp and
// origin), OR-set elements with their tags, per-origin counter totals and
// multi-value register values with their dots, each in a fixed order. It
// leaves out the op log, version vector, LWW delete markers and removed-dot
// records, so replicas that applied the same ops have the same hash
// whatever they compacted.
func (s *Store) StateHash(ctx context.Context) (string, error) {
	return s.StateHashPrefix(ctx, "")
}

// StateHashPrefix is StateHash restricted to the collections whose names
// start with prefix ("" means every collection). It lets a caller compare
// the collections it writes while other collections keep changing.
func (s *Store) StateHashPrefix(ctx context.Context, prefix string) (string, error) {
	if err := s.readCheck("state hash"); err != nil {
		return "", err
	}
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return "", fmt.Errorf("crdt: state hash: %w", err)
	}
	defer tx.Rollback()
	sum, err := stateHashTx(ctx, tx, prefix)
	if err != nil {
		return "", s.corrupt(fmt.Errorf("crdt: state hash: %w", err))
	}
	return sum, nil
}

// stateHashTx computes StateHashPrefix inside tx (a snapshot install
// checks the rows it wrote before committing them).
func stateHashTx(ctx context.Context, tx *sql.Tx, prefix string) (string, error) {
	h := sha256.New()
	parts := []struct {
		tag   string
		query string
		n     int // columns; all TEXT or BLOB except the ints listed below
		ints  []bool
	}{
		{"lww", `SELECT coll, key, hlc, origin, value FROM lww WHERE deleted = 0 AND substr(CAST(coll AS BLOB), 1, ?1) = CAST(?2 AS BLOB) ORDER BY coll, key`, 5, []bool{false, false, true, false, false}},
		{"orset", `SELECT coll, elem, origin, seq FROM orset WHERE substr(CAST(coll AS BLOB), 1, ?1) = CAST(?2 AS BLOB) ORDER BY coll, elem, origin, seq`, 4, []bool{false, false, false, true}},
		{"counter", `SELECT coll, key, origin, p, n FROM counter WHERE substr(CAST(coll AS BLOB), 1, ?1) = CAST(?2 AS BLOB) ORDER BY coll, key, origin`, 5, []bool{false, false, false, true, true}},
		{"mvreg", `SELECT coll, key, origin, seq, hlc, value FROM mvreg WHERE substr(CAST(coll AS BLOB), 1, ?1) = CAST(?2 AS BLOB) ORDER BY coll, key, origin, seq`, 6, []bool{false, false, false, true, true, false}},
	}
	for _, p := range parts {
		writeField(h, []byte(p.tag))
		if err := hashRows(ctx, tx, h, p.query, p.ints, len(prefix), prefix); err != nil {
			return "", fmt.Errorf("%s: %w", p.tag, err)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func writeField(h hash.Hash, b []byte) {
	var l [binary.MaxVarintLen64]byte
	h.Write(l[:binary.PutUvarint(l[:], uint64(len(b)))])
	h.Write(b)
}

func hashRows(ctx context.Context, tx *sql.Tx, h hash.Hash, query string, ints []bool, args ...any) error {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	defer rows.Close()
	n := len(ints)
	bufs := make([][]byte, n)
	nums := make([]int64, n)
	dst := make([]any, n)
	for i := range dst {
		if ints[i] {
			dst[i] = &nums[i]
		} else {
			dst[i] = &bufs[i]
		}
	}
	var num [8]byte
	for rows.Next() {
		if err := rows.Scan(dst...); err != nil {
			return fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		h.Write([]byte{0xff}) // row marker
		for i := range ints {
			if ints[i] {
				if nums[i] < 0 {
					return fmt.Errorf("%w: negative value %d in column %d", ErrCorrupt, nums[i], i)
				}
				binary.BigEndian.PutUint64(num[:], uint64(nums[i]))
				h.Write(num[:])
			} else {
				writeField(h, bufs[i])
			}
		}
	}
	return rows.Err()
}
