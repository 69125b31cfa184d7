package ingest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// SalvageReport counts what Salvage copied from a damaged ingestion
// database and what it could not read.
type SalvageReport struct {
	// Tables maps a table name to its counts.
	Tables map[string]SalvageCount
	// Readings and ReadingsLost are the numeric and text readings
	// copied, and those the damaged database's own counters say it held
	// beyond them (-1 when its counters were unreadable).
	Readings, ReadingsLost int64
	// OutboxBatches and OutboxLost are the outbox rows copied, and the
	// rows estimated lost from the gaps in their sequence numbers
	// (acknowledged batches leave gaps too, so it is an upper bound).
	OutboxBatches, OutboxLost int64
}

// SalvageCount is one table's salvage.
type SalvageCount struct {
	// Copied rows were read cleanly and written to the new database.
	Copied int64 `json:"copied"`
	// Unreadable is how many key ranges could not be read.
	Unreadable int `json:"unreadable_ranges"`
	// LostEstimate is the rows estimated lost: the width of the key gaps
	// around unreadable ranges of integer-keyed tables (rowids), 0 where
	// keys are sparse (times), plus rows read but refused by the new
	// database.
	LostEstimate int64 `json:"lost_estimate"`
}

// salvageBatch is how many rows one read and one write transaction move.
const salvageBatch = 2000

// rollupResolutions are the rollups' res values (schema: per-minute and
// per-hour).
var rollupResolutions = []int64{60, 3600}

// salvageTable describes how to walk a table by its primary key: the
// rows of each partition (equal values of parts) ordered by key, an
// integer column.
type salvageTable struct {
	name  string
	parts []string
	key   string
	dense bool // keys are rowids: their gaps estimate lost rows
}

// Salvage copies what can still be read of the damaged ingestion
// database at from (opened read-only, never changed) into a new
// database created with cfg (cfg.Path must not exist yet or be empty;
// Salvage closes it again: open it afterwards with OpenStore). SQLite's
// recovery extension is not available to the pure-Go driver, so Salvage
// walks each table by its primary key in batches; when a read fails
// (a damaged page), it looks for the next key from which reading works
// again, by doubling steps then bisection, counts the skipped range, and
// goes on. Devices and series keep their ids, so readings stay attached;
// outbox rows keep their sequence numbers (their batch identity) and
// every column the new schema shares with the old one. Readings whose
// series row is lost are not copied (nothing would name them). The
// counters in meta are copied, with the row counters set to the rows
// copied.
func Salvage(ctx context.Context, cfg StoreConfig, from string) (SalvageReport, error) {
	rep := SalvageReport{Tables: map[string]SalvageCount{}, ReadingsLost: -1}
	cfg.Registry = nil
	fresh, err := OpenStore(cfg)
	if err != nil {
		return rep, err
	}
	if err := fresh.Close(); err != nil {
		return rep, err
	}
	// The quarantined file is read once, page by page: a small cache
	// (SQLite's default 2 MB would fill, and what it takes stays with
	// the process after the connection closes).
	src, err := sql.Open("sqlite", fmt.Sprintf("file:%s?mode=ro&_pragma=query_only(1)&_pragma=busy_timeout(10000)&_pragma=cache_size(%d)", from, -readCacheKiB))
	if err != nil {
		return rep, fmt.Errorf("ingest: salvage: open %s: %w", from, err)
	}
	defer src.Close()
	src.SetMaxOpenConns(1)
	dst, err := sql.Open("sqlite", DSN(cfg.Path))
	if err != nil {
		return rep, fmt.Errorf("ingest: salvage: open %s: %w", cfg.Path, err)
	}
	defer dst.Close()
	dst.SetMaxOpenConns(1)
	sv := &salvager{ctx: ctx, src: src, dst: dst}

	var seriesIDs []int64
	for _, t := range []salvageTable{
		{name: "devices", key: "id", dense: true},
		{name: "series", key: "id", dense: true},
		{name: "dead_letters", key: "id", dense: true},
		{name: "recent_messages", key: "seq", dense: true},
	} {
		var keys []int64
		c, err := sv.copyTable(t, nil, func(k int64) {
			if t.name == "series" {
				keys = append(keys, k)
			}
		})
		if err != nil {
			return rep, err
		}
		if t.name == "series" {
			seriesIDs = keys
		}
		rep.Tables[t.name] = c
	}
	outbox, oc, err := sv.readOutbox()
	if err != nil {
		return rep, err
	}
	for _, t := range []salvageTable{
		{name: "readings", parts: []string{"series"}, key: "ts"},
		{name: "text_readings", parts: []string{"series"}, key: "ts"},
		{name: "rollups", parts: []string{"res", "series"}, key: "bucket"},
	} {
		var total SalvageCount
		for _, id := range seriesIDs {
			var parts [][]any
			if t.name == "rollups" {
				for _, res := range rollupResolutions {
					parts = append(parts, []any{res, id})
				}
			} else {
				parts = append(parts, []any{id})
			}
			for _, p := range parts {
				c, err := sv.copyTable(t, p, nil)
				if err != nil {
					return rep, err
				}
				total.Copied += c.Copied
				total.Unreadable += c.Unreadable
				total.LostEstimate += c.LostEstimate
			}
		}
		rep.Tables[t.name] = total
	}
	rep.Readings = rep.Tables["readings"].Copied + rep.Tables["text_readings"].Copied
	held, err := sv.copyMeta(rep.Tables["readings"].Copied, rep.Tables["text_readings"].Copied)
	if err != nil {
		return rep, err
	}
	if held >= 0 {
		rep.ReadingsLost = max(0, held-rep.Readings)
	}
	if err := dst.Close(); err != nil {
		return rep, fmt.Errorf("ingest: salvage: close %s: %w", cfg.Path, err)
	}
	// The outbox goes in through ImportOutbox: each row keeps its
	// identity (epoch, seq) and its batch, and the new database numbers
	// its own rows in a new epoch.
	if len(outbox) > 0 {
		st, err := OpenStore(cfg)
		if err != nil {
			return rep, err
		}
		err = st.ImportOutbox(ctx, outbox)
		if cerr := st.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return rep, fmt.Errorf("ingest: salvage: %w", err)
		}
		oc.Copied = int64(len(outbox))
	}
	rep.Tables["outbox"] = oc
	rep.OutboxBatches, rep.OutboxLost = oc.Copied, oc.LostEstimate
	return rep, nil
}

// readOutbox reads the outbox rows that still read, with the epochs
// that number them, as ImportOutbox takes them. Rows whose epoch or
// payload cannot be read are counted lost. A database from before epochs
// (schema 3) gets a new epoch for its rows, as its migration would have.
func (sv *salvager) readOutbox() ([]OutboxRow, SalvageCount, error) {
	names := map[int64]string{}
	var ec SalvageCount
	if cols, err := sv.srcColumns("epochs"); err == nil && len(cols) > 0 {
		c, err := sv.scanTable(salvageTable{name: "epochs", key: "id", dense: true}, []string{"id", "epoch"}, nil,
			func(rows [][]any) (int64, error) {
				for _, r := range rows {
					if name, ok := r[1].(string); ok && validEpoch(name) {
						names[r[0].(int64)] = name
					}
				}
				return int64(len(rows)), nil
			})
		if err != nil {
			return nil, ec, err
		}
		ec = c
	} else {
		e, err := newEpoch()
		if err != nil {
			return nil, ec, fmt.Errorf("ingest: salvage: %w", err)
		}
		names[1] = e
	}
	have, err := sv.srcColumns("outbox")
	if err != nil || len(have) == 0 {
		return nil, SalvageCount{Unreadable: 1}, nil
	}
	cols := []string{"seq", "created", "payload", "grp", "epoch", "eseq"}
	for i, c := range cols {
		if !have[c] {
			cols[i] = "0" // a column of a later schema: its default
		}
	}
	type raw struct {
		seq, created, grp, epoch, eseq int64
		payload                        []byte
	}
	var rows []raw
	oc, err := sv.scanTable(salvageTable{name: "outbox", key: "seq", dense: true}, cols, nil, func(got [][]any) (int64, error) {
		for _, r := range got {
			var x raw
			var ok [5]bool
			x.seq, ok[0] = r[0].(int64)
			x.created, ok[1] = r[1].(int64)
			x.payload, ok[2] = r[2].([]byte)
			x.grp, ok[3] = r[3].(int64)
			x.epoch, ok[4] = r[4].(int64)
			x.eseq, _ = r[5].(int64)
			if ok != [5]bool{true, true, true, true, true} {
				continue
			}
			if !have["epoch"] {
				x.epoch = 1
			}
			rows = append(rows, x)
		}
		return int64(len(got)), nil
	})
	if err != nil {
		return nil, oc, err
	}
	oc.Unreadable += ec.Unreadable
	// A row's identity is its eseq in its epoch (its own seq for this
	// database's rows, epoch 1); a group is named by its first row.
	ident := func(x raw) int64 {
		if x.eseq != 0 {
			return x.eseq
		}
		return x.seq
	}
	bySeq := make(map[int64]raw, len(rows))
	for _, x := range rows {
		bySeq[x.seq] = x
	}
	out := make([]OutboxRow, 0, len(rows))
	for _, x := range rows {
		name, ok := names[x.epoch]
		if !ok {
			oc.LostEstimate++ // its epoch's row is lost: no identity
			continue
		}
		if _, _, _, err := DecodeOutboxBatch(x.payload); err != nil {
			oc.LostEstimate++
			continue
		}
		r := OutboxRow{Epoch: name, Seq: ident(x), Created: time.UnixMicro(x.created), Payload: x.payload}
		if x.grp != 0 {
			if first, ok := bySeq[x.grp]; ok {
				r.Group = ident(first)
			} else {
				r.Group = r.Seq // its group's first row is lost: it forms a batch of its own
			}
		}
		out = append(out, r)
	}
	return out, oc, nil
}

type salvager struct {
	ctx context.Context
	src *sql.DB
	dst *sql.DB
}

// columns lists the columns of table that both databases hold.
func (sv *salvager) columns(table string) ([]string, error) {
	read := func(db *sql.DB) (map[string]bool, []string, error) {
		rows, err := db.QueryContext(sv.ctx, `SELECT name FROM pragma_table_info(?)`, table)
		if err != nil {
			return nil, nil, err
		}
		defer rows.Close()
		set := map[string]bool{}
		var order []string
		for rows.Next() {
			var n string
			if err := rows.Scan(&n); err != nil {
				return nil, nil, err
			}
			set[n] = true
			order = append(order, n)
		}
		return set, order, rows.Err()
	}
	have, _, err := read(sv.src)
	if err != nil {
		return nil, err
	}
	_, want, err := read(sv.dst)
	if err != nil {
		return nil, fmt.Errorf("ingest: salvage: columns of %s: %w", table, err)
	}
	var cols []string
	for _, c := range want {
		if have[c] {
			cols = append(cols, c)
		}
	}
	return cols, nil
}

// srcColumns returns the set of columns of table in the damaged database.
func (sv *salvager) srcColumns(table string) (map[string]bool, error) {
	rows, err := sv.src.QueryContext(sv.ctx, `SELECT name FROM pragma_table_info(?)`, table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	set := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		set[n] = true
	}
	return set, rows.Err()
}

// copyTable copies the rows of t in partition part (values of t.parts)
// into the new database, with the columns both databases hold. A table
// whose schema cannot be read counts as one unreadable range. seen is
// called with each copied row's key.
func (sv *salvager) copyTable(t salvageTable, part []any, seen func(int64)) (SalvageCount, error) {
	cols, err := sv.columns(t.name)
	if err != nil || len(cols) == 0 {
		return SalvageCount{Unreadable: 1}, nil
	}
	keyAt := slices.Index(cols, t.key)
	ins := fmt.Sprintf(`INSERT OR IGNORE INTO %s (%s) VALUES (%s)`,
		t.name, strings.Join(cols, ", "), strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", "))
	return sv.scanTable(t, cols, part, func(rows [][]any) (int64, error) {
		n, err := sv.write(ins, rows)
		if err == nil && seen != nil && keyAt >= 0 {
			for _, r := range rows {
				seen(r[keyAt].(int64))
			}
		}
		return n, err
	})
}

// scanTable reads the rows of t in partition part, columns cols (which
// hold t.key), in key order and batches, going on past unreadable key
// ranges, and hands each batch to put, which returns how many rows it
// kept (the rest count as lost).
func (sv *salvager) scanTable(t salvageTable, cols []string, part []any, put func([][]any) (int64, error)) (SalvageCount, error) {
	var c SalvageCount
	keyAt := -1
	for i, col := range cols {
		if col == t.key {
			keyAt = i
		}
	}
	if keyAt < 0 {
		return c, fmt.Errorf("ingest: salvage: %s has no column %s", t.name, t.key)
	}
	where := make([]string, 0, len(t.parts)+1)
	for _, p := range t.parts {
		where = append(where, p+" = ?")
	}
	where = append(where, t.key+" >= ?")
	sel := fmt.Sprintf(`SELECT %s FROM %s WHERE %s ORDER BY %s LIMIT ?`,
		strings.Join(cols, ", "), t.name, strings.Join(where, " AND "), t.key)

	// read returns the rows from key lo on (at most n), and the error
	// that ended the read early, if any.
	read := func(lo int64, n int) ([][]any, error) {
		args := append(append([]any{}, part...), lo, n)
		rows, err := sv.src.QueryContext(sv.ctx, sel, args...)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		var out [][]any
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				return out, err
			}
			if _, ok := vals[keyAt].(int64); !ok {
				return out, fmt.Errorf("%w: %s.%s is %T", ErrCorrupt, t.name, t.key, vals[keyAt])
			}
			out = append(out, vals)
		}
		return out, rows.Err()
	}
	// readable reports whether reading from lo works (or finds the end).
	readable := func(lo int64) bool {
		_, err := read(lo, 1)
		return err == nil
	}

	lo := int64(math.MinInt64)
	lastKey, haveLast := int64(0), false
	for {
		if err := sv.ctx.Err(); err != nil {
			return c, fmt.Errorf("ingest: salvage: %w", err)
		}
		got, rerr := read(lo, salvageBatch)
		if len(got) > 0 {
			n, err := put(got)
			if err != nil {
				return c, err
			}
			c.Copied += n
			c.LostEstimate += int64(len(got)) - n
			lastKey, haveLast = got[len(got)-1][keyAt].(int64), true
		}
		if rerr == nil && len(got) < salvageBatch {
			return c, nil
		}
		if rerr == nil {
			if lastKey == math.MaxInt64 {
				return c, nil
			}
			lo = lastKey + 1
			continue
		}
		if errors.Is(rerr, context.Canceled) || errors.Is(rerr, context.DeadlineExceeded) {
			return c, fmt.Errorf("ingest: salvage: %w", rerr)
		}
		// Reading fails from bad on: find the first key from which it
		// works again.
		bad := lo
		if haveLast && lastKey >= lo {
			bad = lastKey + 1
		}
		c.Unreadable++
		next, ok := skipUnreadable(bad, readable)
		if !ok {
			return c, nil // nothing readable after bad
		}
		if t.dense && haveLast {
			if first, err := read(next, 1); err == nil && len(first) == 1 {
				c.LostEstimate += max(0, first[0][keyAt].(int64)-lastKey-1)
			}
		}
		lo = next
	}
}

// skipUnreadable finds the smallest key after bad from which readable
// holds, probing bad+1, bad+2, bad+4, ... and then bisecting; false when
// no key up to math.MaxInt64 works.
func skipUnreadable(bad int64, readable func(int64) bool) (int64, bool) {
	fail, step := bad, int64(1)
	var ok int64
	for {
		x := int64(math.MaxInt64)
		if fail <= math.MaxInt64-step {
			x = fail + step
		}
		if readable(x) {
			ok = x
			break
		}
		if x == math.MaxInt64 {
			return 0, false
		}
		fail = x
		if step < math.MaxInt64/2 {
			step *= 2
		}
	}
	for ok-fail > 1 {
		mid := fail + (ok-fail)/2
		if readable(mid) {
			ok = mid
		} else {
			fail = mid
		}
	}
	return ok, true
}

// write inserts rows into the new database in one transaction and
// returns how many it accepted.
func (sv *salvager) write(ins string, rows [][]any) (int64, error) {
	tx, err := sv.dst.BeginTx(sv.ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("ingest: salvage: %w", err)
	}
	defer tx.Rollback()
	st, err := tx.PrepareContext(sv.ctx, ins)
	if err != nil {
		return 0, fmt.Errorf("ingest: salvage: %w", err)
	}
	defer st.Close()
	var n int64
	for _, r := range rows {
		res, err := st.ExecContext(sv.ctx, r...)
		if err != nil {
			continue // a value the schema refuses: counted as lost
		}
		if k, _ := res.RowsAffected(); k > 0 {
			n++
		}
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("ingest: salvage: %w", err)
	}
	return n, nil
}

// copyMeta copies the damaged database's counters, sets the row
// counters to the rows copied, and returns the readings the damaged
// database said it held (-1 when its counters were unreadable).
func (sv *salvager) copyMeta(raw, text int64) (int64, error) {
	old := map[string]int64{}
	held := int64(-1)
	if rows, err := sv.src.QueryContext(sv.ctx, `SELECT key, value FROM meta`); err == nil {
		for rows.Next() {
			var k string
			var v int64
			if rows.Scan(&k, &v) == nil {
				old[k] = v
			}
		}
		if rows.Err() == nil {
			_, okRaw := old[metaRawReadings]
			_, okText := old[metaTextReadings]
			if okRaw && okText {
				held = old[metaRawReadings] + old[metaTextReadings]
			}
		}
		rows.Close()
	}
	delete(old, metaSchema)
	old[metaRawReadings], old[metaTextReadings] = raw, text
	tx, err := sv.dst.BeginTx(sv.ctx, nil)
	if err != nil {
		return held, fmt.Errorf("ingest: salvage: %w", err)
	}
	defer tx.Rollback()
	for _, k := range metaKeys {
		v, ok := old[k]
		if !ok {
			continue
		}
		if _, err := tx.ExecContext(sv.ctx, `UPDATE meta SET value = ? WHERE key = ?`, v, k); err != nil {
			return held, fmt.Errorf("ingest: salvage: meta: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return held, fmt.Errorf("ingest: salvage: meta: %w", err)
	}
	return held, nil
}
