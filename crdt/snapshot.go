package crdt

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
)

// Snapshot errors.
var (
	// ErrInvalidSnapshot: an encoded snapshot is malformed, too large or
	// holds rows out of range; nothing was installed.
	ErrInvalidSnapshot = errors.New("crdt: invalid snapshot")
	// ErrSnapshotHash: a snapshot's rows do not hash to the state hash it
	// claims; nothing was installed.
	ErrSnapshotHash = errors.New("crdt: snapshot state hash mismatch")
)

// MaxSnapshotBytes bounds an encoded snapshot.
const MaxSnapshotBytes = 256 << 20

// snapshotVersion is the version of the snapshot encoding.
const snapshotVersion = 1

// snapshot is a replica's whole replicated state: the materialized rows of
// every collection (LWW delete markers and removed-dot records included),
// its op log, version vector, compaction horizon and the state hash of the
// rows. Encoded as JSON: snapshots are rare and boring beats compact.
type snapshot struct {
	Version    int           `json:"version"`
	Replica    string        `json:"replica"`
	VV         VersionVector `json:"vv"`
	Horizon    VersionVector `json:"horizon"`
	HorizonHLC Timestamp     `json:"horizon_hlc"`
	Hash       string        `json:"hash"`
	Colls      []snapColl    `json:"colls"`
	LWW        []snapLWW     `json:"lww"`
	ORSet      []snapDotRow  `json:"orset"`
	Counter    []snapCounter `json:"counter"`
	MVReg      []snapDotRow  `json:"mvreg"`
	Removed    []snapRemoved `json:"removed"`
	Ops        []Op          `json:"ops"`
}

type snapColl struct {
	Name string `json:"name"`
	Type Type   `json:"type"`
}

type snapLWW struct {
	Coll    string    `json:"coll"`
	Key     string    `json:"key"`
	HLC     Timestamp `json:"hlc"`
	Origin  string    `json:"origin"`
	Seq     uint64    `json:"seq"`
	Deleted bool      `json:"deleted,omitempty"`
	Value   []byte    `json:"value,omitempty"`
}

// snapDotRow is an OR-set tag (Key is the element) or a multi-value
// register value.
type snapDotRow struct {
	Origin string    `json:"origin"`
	Seq    uint64    `json:"seq"`
	Coll   string    `json:"coll"`
	Key    string    `json:"key"`
	HLC    Timestamp `json:"hlc,omitempty"`
	Value  []byte    `json:"value,omitempty"`
}

type snapCounter struct {
	Coll   string `json:"coll"`
	Key    string `json:"key"`
	Origin string `json:"origin"`
	P      uint64 `json:"p"`
	N      uint64 `json:"n"`
}

type snapRemoved struct {
	Type   Type   `json:"type"`
	Origin string `json:"origin"`
	Seq    uint64 `json:"seq"`
}

// SnapshotInfo describes an exported or installed snapshot.
type SnapshotInfo struct {
	From    string        // replica that exported it
	VV      VersionVector // its version vector
	Hash    string        // its state hash
	Bytes   int           // encoded size
	OwnKept int           // InstallSnapshot: own ops beyond the snapshot re-applied
	OwnLost int           // InstallSnapshot: own stale LWW writes dropped (see InstallSnapshot)
}

// ExportSnapshot encodes this store's whole replicated state, read in one
// transaction, for InstallSnapshot on a replica that cannot catch up by
// deltas (it is behind the compaction horizon, or its database is new under
// a replica id the fleet knows).
func (s *Store) ExportSnapshot(ctx context.Context) ([]byte, SnapshotInfo, error) {
	if err := s.readCheck("export snapshot"); err != nil {
		return nil, SnapshotInfo{}, err
	}
	tx, err := s.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, SnapshotInfo{}, fmt.Errorf("crdt: export snapshot: %w", err)
	}
	defer tx.Rollback()
	snap := snapshot{Version: snapshotVersion, Replica: s.id}
	if err := s.readSnapshot(ctx, tx, &snap); err != nil {
		return nil, SnapshotInfo{}, s.corrupt(fmt.Errorf("crdt: export snapshot: %w", err))
	}
	b, err := json.Marshal(&snap)
	if err != nil {
		return nil, SnapshotInfo{}, fmt.Errorf("crdt: export snapshot: %w", err)
	}
	if len(b) > MaxSnapshotBytes {
		return nil, SnapshotInfo{}, fmt.Errorf("crdt: export snapshot: %d bytes exceed the limit of %d", len(b), MaxSnapshotBytes)
	}
	return b, SnapshotInfo{From: s.id, VV: snap.VV, Hash: snap.Hash, Bytes: len(b)}, nil
}

func (s *Store) readSnapshot(ctx context.Context, tx *sql.Tx, snap *snapshot) error {
	var seq int64
	if err := tx.QueryRowContext(ctx, `SELECT seq FROM meta WHERE id = 1`).Scan(&seq); err != nil || seq < 0 {
		return fmt.Errorf("%w: meta seq %d: %v", ErrCorrupt, seq, err)
	}
	var err error
	if snap.VV, err = readVV(ctx, tx, s.id, uint64(seq)); err != nil {
		return err
	}
	// The horizon of the op log read here, in the same transaction.
	if snap.Horizon, snap.HorizonHLC, err = readHorizon(ctx, tx); err != nil {
		return err
	}
	if snap.Hash, err = stateHashTx(ctx, tx, ""); err != nil {
		return err
	}
	each := func(query string, scan func(*sql.Rows) error) error {
		rows, err := tx.QueryContext(ctx, query)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			if err := scan(rows); err != nil {
				return fmt.Errorf("%w: %v", ErrCorrupt, err)
			}
		}
		return rows.Err()
	}
	steps := []struct {
		query string
		scan  func(*sql.Rows) error
	}{
		{`SELECT name, type FROM colls ORDER BY name, type`, func(r *sql.Rows) error {
			var c snapColl
			err := r.Scan(&c.Name, &c.Type)
			snap.Colls = append(snap.Colls, c)
			return err
		}},
		{`SELECT coll, key, hlc, origin, seq, deleted, value FROM lww ORDER BY coll, key`, func(r *sql.Rows) error {
			var l snapLWW
			err := r.Scan(&l.Coll, &l.Key, &l.HLC, &l.Origin, &l.Seq, &l.Deleted, &l.Value)
			snap.LWW = append(snap.LWW, l)
			return err
		}},
		{`SELECT origin, seq, coll, elem FROM orset ORDER BY origin, seq`, func(r *sql.Rows) error {
			var d snapDotRow
			err := r.Scan(&d.Origin, &d.Seq, &d.Coll, &d.Key)
			snap.ORSet = append(snap.ORSet, d)
			return err
		}},
		{`SELECT coll, key, origin, p, n FROM counter ORDER BY coll, key, origin`, func(r *sql.Rows) error {
			var c snapCounter
			err := r.Scan(&c.Coll, &c.Key, &c.Origin, &c.P, &c.N)
			snap.Counter = append(snap.Counter, c)
			return err
		}},
		{`SELECT origin, seq, coll, key, hlc, value FROM mvreg ORDER BY origin, seq`, func(r *sql.Rows) error {
			var d snapDotRow
			err := r.Scan(&d.Origin, &d.Seq, &d.Coll, &d.Key, &d.HLC, &d.Value)
			snap.MVReg = append(snap.MVReg, d)
			return err
		}},
		{`SELECT type, origin, seq FROM removed ORDER BY type, origin, seq`, func(r *sql.Rows) error {
			var d snapRemoved
			err := r.Scan(&d.Type, &d.Origin, &d.Seq)
			snap.Removed = append(snap.Removed, d)
			return err
		}},
	}
	for _, st := range steps {
		if err := each(st.query, st.scan); err != nil {
			return err
		}
	}
	var origins []string
	if err := each(`SELECT DISTINCT origin FROM ops ORDER BY origin`, func(r *sql.Rows) error {
		var o string
		err := r.Scan(&o)
		origins = append(origins, o)
		return err
	}); err != nil {
		return err
	}
	for _, o := range origins {
		ops, err := readOps(ctx, tx, o, 0)
		if err != nil {
			return err
		}
		snap.Ops = append(snap.Ops, ops...)
	}
	return nil
}

// readOps reads the op log of origin above seq, in sequence order.
func readOps(ctx context.Context, tx *sql.Tx, origin string, above uint64) ([]Op, error) {
	rows, err := tx.QueryContext(ctx, `SELECT `+opColumns+` FROM ops WHERE origin = ? AND seq > ? ORDER BY seq`, origin, int64(above))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Op
	for rows.Next() {
		op, err := scanOp(rows, origin)
		if err != nil {
			return nil, err
		}
		out = append(out, op)
	}
	return out, rows.Err()
}

// decodeSnapshot decodes and checks an encoded snapshot.
func decodeSnapshot(b []byte) (*snapshot, error) {
	if len(b) > MaxSnapshotBytes {
		return nil, fmt.Errorf("%w: %d bytes exceed the limit of %d", ErrInvalidSnapshot, len(b), MaxSnapshotBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var snap snapshot
	if err := dec.Decode(&snap); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSnapshot, err)
	}
	if err := snap.check(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidSnapshot, err)
	}
	return &snap, nil
}

func (snap *snapshot) check() error {
	if snap.Version != snapshotVersion {
		return fmt.Errorf("version %d, want %d", snap.Version, snapshotVersion)
	}
	if err := checkOrigin(snap.Replica, "replica"); err != nil {
		return err
	}
	if len(snap.Hash) != 64 {
		return fmt.Errorf("state hash %q is not a hex SHA-256", snap.Hash)
	}
	for _, vv := range []VersionVector{snap.VV, snap.Horizon} {
		for o, n := range vv {
			if checkOrigin(o, "version vector origin") != nil || n > maxSeq {
				return fmt.Errorf("version vector entry %q = %d out of range", o, n)
			}
		}
	}
	for _, c := range snap.Colls {
		if checkName(c.Name, "") != nil || !c.Type.Valid() {
			return fmt.Errorf("collection %q of type %q", c.Name, c.Type)
		}
	}
	for _, l := range snap.LWW {
		if checkName(l.Coll, l.Key) != nil || checkDot(Dot{l.Origin, l.Seq}, "lww") != nil || l.HLC == 0 || l.HLC > maxTimestamp || len(l.Value) > MaxValueLen {
			return fmt.Errorf("lww row %q/%q out of range", l.Coll, l.Key)
		}
	}
	for _, rows := range [][]snapDotRow{snap.ORSet, snap.MVReg} {
		for _, d := range rows {
			if checkName(d.Coll, d.Key) != nil || checkDot(Dot{d.Origin, d.Seq}, "tag") != nil || d.HLC > maxTimestamp || len(d.Value) > MaxValueLen {
				return fmt.Errorf("row %s:%d out of range", d.Origin, d.Seq)
			}
		}
	}
	for _, c := range snap.Counter {
		if checkName(c.Coll, c.Key) != nil || checkOrigin(c.Origin, "counter origin") != nil || c.P > maxSeq || c.N > maxSeq {
			return fmt.Errorf("counter row %q/%q out of range", c.Coll, c.Key)
		}
	}
	for _, r := range snap.Removed {
		if !r.Type.Valid() || checkDot(Dot{r.Origin, r.Seq}, "removed") != nil {
			return fmt.Errorf("removed row %s:%d out of range", r.Origin, r.Seq)
		}
	}
	for i := range snap.Ops {
		if err := snap.Ops[i].validate(); err != nil {
			return fmt.Errorf("op %d: %v", i, err)
		}
	}
	return nil
}

// maxHLC is the latest timestamp the snapshot holds.
func (snap *snapshot) maxHLC() Timestamp {
	var m Timestamp
	for _, l := range snap.LWW {
		m = max(m, l.HLC)
	}
	for _, d := range snap.MVReg {
		m = max(m, d.HLC)
	}
	for i := range snap.Ops {
		m = max(m, snap.Ops[i].HLC)
	}
	return m
}

// InstallSnapshot replaces this store's replicated state with a snapshot
// exported by a peer (ExportSnapshot), in one transaction, after checking
// that the rows hash to the state hash the snapshot claims: a malformed
// snapshot is refused with ErrInvalidSnapshot, a mismatched one with
// ErrSnapshotHash, a clock too far ahead with ErrClockDrift, and then
// nothing changes.
//
// This replica's own ops beyond what the snapshot holds of its origin
// (written here but not yet shipped to the peer) are kept: re-applied on
// top of the snapshot, and shipped afterwards as usual. Except one kind:
// an own LWW write older than the snapshot's compaction horizon timestamp
// may have been overwritten by a delete that no longer exists anywhere, so
// re-applying it could resurrect a deleted key; such writes are dropped
// (counted in OwnLost and logged). Their sequence numbers stay used. The
// sequence number continues after the larger of this store's and the
// snapshot's, and the clock observes the snapshot's latest timestamp, so
// a fresh database under a replica id the fleet knows issues no sequence
// number twice. Local ops held by HoldLocalOps are released.
func (s *Store) InstallSnapshot(ctx context.Context, b []byte) (SnapshotInfo, error) {
	snap, err := decodeSnapshot(b)
	if err != nil {
		s.log.Warn("crdt: snapshot refused", "reason", "invalid", "err", err)
		return SnapshotInfo{}, fmt.Errorf("crdt: install snapshot: %w", err)
	}
	info := SnapshotInfo{From: snap.Replica, VV: snap.VV, Hash: snap.Hash, Bytes: len(b)}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed.Load() {
		return info, fmt.Errorf("crdt: install snapshot: %w", ErrClosed)
	}
	top := snap.maxHLC()
	if err := s.clock.CheckDrift(top); err != nil {
		s.log.Warn("crdt: snapshot refused", "reason", "drift", "from", snap.Replica, "err", err)
		return info, fmt.Errorf("crdt: install snapshot from %q: %w", snap.Replica, err)
	}
	tx, err := s.wc.BeginTx(ctx, nil)
	if err != nil {
		return info, fmt.Errorf("crdt: install snapshot: begin: %w", err)
	}
	defer tx.Rollback()
	// This replica's own ops the snapshot lacks, read before the op log
	// is replaced.
	own, err := readOps(ctx, tx, s.id, snap.VV[s.id])
	if err != nil {
		return info, s.corrupt(fmt.Errorf("crdt: install snapshot: %w", err))
	}
	if err := s.writeSnapshot(ctx, tx, snap); err != nil {
		return info, fmt.Errorf("crdt: install snapshot: %w", err)
	}
	got, err := stateHashTx(ctx, tx, "")
	if err != nil {
		return info, fmt.Errorf("crdt: install snapshot: state hash: %w", err)
	}
	if got != snap.Hash {
		err := fmt.Errorf("crdt: install snapshot from %q: %w: its rows hash to %s, it claims %s", snap.Replica, ErrSnapshotHash, got, snap.Hash)
		s.log.Warn("crdt: snapshot refused", "reason", "hash_mismatch", "from", snap.Replica, "err", err)
		return info, err
	}
	seq := max(s.seq, snap.VV[s.id])
	vv := snap.VV.Clone()
	delete(vv, s.id)
	for o, n := range vv {
		if _, err := tx.ExecContext(ctx, `INSERT INTO vv (origin, seq) VALUES (?, ?)`, o, int64(n)); err != nil {
			return info, fmt.Errorf("crdt: install snapshot: version vector: %w", err)
		}
	}
	if seq > 0 {
		vv[s.id] = seq
	}
	w := &wtx{ctx: ctx, tx: tx}
	for i := range own {
		op := &own[i]
		if op.Kind == KindPut && op.HLC <= snap.HorizonHLC {
			info.OwnLost++
			continue
		}
		if _, err := s.insertOp(w, op, true); err != nil {
			return info, fmt.Errorf("crdt: install snapshot: own op: %w", err)
		}
		if err := s.applyOp(w, op, vv); err != nil {
			return info, fmt.Errorf("crdt: install snapshot: own op: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO colls (name, type) VALUES (?, ?)`, op.Collection, string(op.Type)); err != nil {
			return info, fmt.Errorf("crdt: install snapshot: own op: %w", err)
		}
		info.OwnKept++
	}
	horizon := s.horizon.Clone()
	horizon.Merge(snap.Horizon)
	horizonHLC := max(s.horizonHLC, snap.HorizonHLC)
	if err := writeHorizon(ctx, tx, horizon, horizonHLC); err != nil {
		return info, fmt.Errorf("crdt: install snapshot: %w", err)
	}
	if top > 0 {
		if _, err := s.clock.Observe(top); err != nil {
			return info, fmt.Errorf("crdt: install snapshot: %w", err)
		}
	}
	if _, err := w.exec(s.st.setMeta, int64(seq), int64(s.clock.Last())); err != nil {
		return info, fmt.Errorf("crdt: install snapshot: update meta: %w", err)
	}
	colls, err := s.readColls(ctx, tx)
	if err != nil {
		return info, fmt.Errorf("crdt: install snapshot: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return info, fmt.Errorf("crdt: install snapshot: commit: %w", err)
	}
	s.seq, s.vv, s.colls = seq, vv, colls
	s.horizon, s.horizonHLC = horizon, horizonHLC
	s.hold = ""
	s.log.Info("crdt: snapshot installed", "from", snap.Replica, "hash", snap.Hash, "bytes", len(b),
		"seq", seq, "own_kept", info.OwnKept, "own_lost", info.OwnLost)
	if info.OwnLost > 0 {
		s.log.Warn("crdt: own writes older than the compaction horizon dropped: a delete they may predate is gone", "count", info.OwnLost)
	}
	return info, nil
}

// writeSnapshot replaces the replicated tables with the snapshot's rows
// (the version vector and horizon are written by the caller).
func (s *Store) writeSnapshot(ctx context.Context, tx *sql.Tx, snap *snapshot) error {
	for _, t := range []string{"ops", "colls", "lww", "orset", "counter", "mvreg", "removed", "vv"} {
		if _, err := tx.ExecContext(ctx, `DELETE FROM `+t); err != nil {
			return fmt.Errorf("clear %s: %w", t, err)
		}
	}
	ins := func(query string, args ...any) error {
		_, err := tx.ExecContext(ctx, query, args...)
		return err
	}
	for _, c := range snap.Colls {
		if err := ins(`INSERT OR IGNORE INTO colls (name, type) VALUES (?, ?)`, c.Name, string(c.Type)); err != nil {
			return fmt.Errorf("colls: %w", err)
		}
	}
	for _, l := range snap.LWW {
		var value any
		deleted := 0
		if l.Deleted {
			deleted = 1
		} else {
			value = nonNil(l.Value)
		}
		if err := ins(`INSERT INTO lww (coll, key, hlc, origin, seq, deleted, value) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			l.Coll, l.Key, int64(l.HLC), l.Origin, int64(l.Seq), deleted, value); err != nil {
			return fmt.Errorf("%w: lww %q/%q: %v", ErrInvalidSnapshot, l.Coll, l.Key, err)
		}
	}
	for _, d := range snap.ORSet {
		if err := ins(`INSERT INTO orset (origin, seq, coll, elem) VALUES (?, ?, ?, ?)`, d.Origin, int64(d.Seq), d.Coll, d.Key); err != nil {
			return fmt.Errorf("%w: orset %s:%d: %v", ErrInvalidSnapshot, d.Origin, d.Seq, err)
		}
	}
	for _, c := range snap.Counter {
		if err := ins(`INSERT INTO counter (coll, key, origin, p, n) VALUES (?, ?, ?, ?, ?)`, c.Coll, c.Key, c.Origin, int64(c.P), int64(c.N)); err != nil {
			return fmt.Errorf("%w: counter %q/%q: %v", ErrInvalidSnapshot, c.Coll, c.Key, err)
		}
	}
	for _, d := range snap.MVReg {
		if err := ins(`INSERT INTO mvreg (origin, seq, coll, key, hlc, value) VALUES (?, ?, ?, ?, ?, ?)`,
			d.Origin, int64(d.Seq), d.Coll, d.Key, int64(d.HLC), nonNil(d.Value)); err != nil {
			return fmt.Errorf("%w: mvreg %s:%d: %v", ErrInvalidSnapshot, d.Origin, d.Seq, err)
		}
	}
	for _, r := range snap.Removed {
		if err := ins(`INSERT OR IGNORE INTO removed (type, origin, seq) VALUES (?, ?, ?)`, string(r.Type), r.Origin, int64(r.Seq)); err != nil {
			return fmt.Errorf("removed: %w", err)
		}
	}
	w := &wtx{ctx: ctx, tx: tx}
	for i := range snap.Ops {
		if _, err := s.insertOp(w, &snap.Ops[i], false); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalidSnapshot, err)
		}
	}
	return nil
}
