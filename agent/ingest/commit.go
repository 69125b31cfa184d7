package ingest

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// envelope is one received message on its way to the store.
type envelope struct {
	topic    string
	payload  []byte
	dup      bool      // MQTT DUP flag: the broker delivered it before
	pid      uint16    // MQTT packet id
	recv     time.Time // receive time
	hash     uint64    // fnv1a(topic, 0, payload), once hashed (msgHash)
	hashed   bool
	device   string
	readings []Reading
	from, to int   // the readings' place in their batch's arena (batch.withViews)
	received bool  // some reading took the receive time
	err      error // decode error: dead-letter it
	ack      func()
	// set by commit
	stored    int  // new readings stored
	committed bool // committed on its own (Ingestor.commitEach)
}

// msgHash returns the message's hash, computing it on first use: only
// dead letters and messages stamped with the receive time need it.
func (e *envelope) msgHash() uint64 {
	if !e.hashed {
		e.hash, e.hashed = messageHash(e.topic, e.payload), true
	}
	return e.hash
}

// messageHash is the 64-bit FNV-1a hash of topic, a zero byte and the
// payload: the identity of an MQTT message.
func messageHash(topic string, payload []byte) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(topic); i++ {
		h ^= uint64(topic[i])
		h *= prime
	}
	h *= prime // the zero separator
	for _, c := range payload {
		h ^= uint64(c)
		h *= prime
	}
	return h
}

// deliveryKey identifies one delivery of a message for redelivery
// checks: its content hash mixed with its MQTT packet id (a broker
// redelivers with the original packet id).
func deliveryKey(hash uint64, pid uint16) int64 {
	const prime = 1099511628211
	h := hash
	h ^= uint64(pid)
	h *= prime
	h ^= uint64(pid >> 8)
	h *= prime
	return int64(h)
}

// commitResult reports what one group commit did.
type commitResult struct {
	seq         int64 // outbox batch sequence, 0 when none
	stored      int   // new readings
	duplicates  int   // readings already stored
	dupMessages int   // redelivered receive-time messages skipped
	deadLetters int
	newReadings []Reading // the readings stored, in arrival order, for the sink
	devices     []DeviceSeen
}

// DeviceSeen reports a device's activity in one group commit.
type DeviceSeen struct {
	Device   string
	At       time.Time // receive time of its last message in the commit
	Messages int       // its messages in the commit (dead letters excluded)
	Readings int       // new readings stored from them
}

type rollKey struct {
	series int64
	bucket int64 // µs, bucket start
}

type agg struct {
	count         int64
	sum, min, max float64
}

func (a *agg) add(v float64) {
	if a.count == 0 {
		a.min, a.max = v, v
	} else {
		a.min, a.max = min(a.min, v), max(a.max, v)
	}
	a.count++
	a.sum += v
}

type lastVal struct {
	ts    int64
	kind  Kind
	value float64
	text  string
	unit  string
}

type devBatch struct {
	name     string
	last     int64
	messages int
	readings int
}

// slot is a series' state within one commit: its current minute and
// hour aggregates (a reading in another bucket moves the finished one to
// the spill list), its latest reading, and its outbox string indexes.
type slot struct {
	series          int64
	minB, hourB     int64
	minAgg, hourAgg agg
	last            lastVal
	hasLast         bool
	devIdx, metIdx  uint64
	unit            string
	unitIdx         uint64
	unitSet, encSet bool
}

// spilled is a finished bucket aggregate of one slot.
type spilled struct {
	res int64 // seconds
	key rollKey
	agg agg
}

// commitScratch is reused across commits (one committer at a time).
type commitScratch struct {
	gen      uint64 // increments per commit; seriesEntry.gen == gen means slot is valid
	slots    []slot
	spill    []spilled
	devs     map[int64]*devBatch
	devOrder []int64
	enc      batchEncoder
	meta     map[string]int64
	obAdd    int64 // payload bytes of the outbox batch written
	rows     []pendingRow
	fresh    []*pendingRow
	sorted   []*pendingRow
	counts   []int
	args     []any
	// accepted are the readings stored, in the order they were stored
	// (numeric ones grouped by series, older ones last), with their
	// place in the batch: the sink gets them back in arrival order.
	accepted []acceptedReading
	arrival  int32 // readings of the batch seen so far
}

// acceptedReading is a stored reading and its place in the batch.
type acceptedReading struct {
	at int32
	r  *Reading
}

func (c *commitScratch) reset() {
	if c.devs == nil {
		c.devs = map[int64]*devBatch{}
		c.meta = map[string]int64{}
	}
	c.gen++
	clear(c.slots)
	c.slots = c.slots[:0]
	c.spill = c.spill[:0]
	clear(c.devs)
	clear(c.meta)
	clear(c.rows) // drop references to envelopes
	c.rows = c.rows[:0]
	clear(c.fresh)
	c.fresh = c.fresh[:0]
	clear(c.sorted)
	c.sorted = c.sorted[:0]
	c.devOrder = c.devOrder[:0]
	clear(c.accepted)
	c.accepted = c.accepted[:0]
	c.arrival = 0
	c.enc.reset()
}

// inArrivalOrder appends the accepted readings to dst in the order they
// arrived: a sink that follows each device's readings in time (the
// inference runtime) must not see a device's later reading of one
// metric before its earlier reading of another.
func (c *commitScratch) inArrivalOrder(dst []Reading) []Reading {
	byArrival := func(a, b acceptedReading) int { return cmp.Compare(a.at, b.at) }
	if !slices.IsSortedFunc(c.accepted, byArrival) {
		slices.SortFunc(c.accepted, byArrival)
	}
	for _, a := range c.accepted {
		dst = append(dst, *a.r)
	}
	return dst
}

// slotOf returns the commit-local slot of a series.
func (c *commitScratch) slotOf(se *seriesEntry) int32 {
	if se.gen != c.gen {
		se.gen = c.gen
		se.slot = int32(len(c.slots))
		c.slots = append(c.slots, slot{series: se.id, minB: -1 << 62, hourB: -1 << 62})
	}
	return se.slot
}

// add accounts a numeric reading to the slot's rollups.
func (c *commitScratch) addRollups(sl *slot, ts int64, v float64) {
	if b := floorTo(ts, minuteUS); b != sl.minB {
		if sl.minAgg.count > 0 {
			c.spill = append(c.spill, spilled{60, rollKey{sl.series, sl.minB}, sl.minAgg})
		}
		sl.minB, sl.minAgg = b, agg{}
	}
	sl.minAgg.add(v)
	if b := floorTo(ts, hourUS); b != sl.hourB {
		if sl.hourAgg.count > 0 {
			c.spill = append(c.spill, spilled{3600, rollKey{sl.series, sl.hourB}, sl.hourAgg})
		}
		sl.hourB, sl.hourAgg = b, agg{}
	}
	sl.hourAgg.add(v)
}

const (
	minuteUS = int64(time.Minute / time.Microsecond)
	hourUS   = int64(time.Hour / time.Microsecond)
)

func floorTo(ts, step int64) int64 {
	b := ts / step * step
	if ts < 0 && b != ts {
		b -= step
	}
	return b
}

// commit writes the envelopes in one transaction: their new readings,
// rollups, device and series updates, dead letters, and one outbox
// batch. When it returns nil everything is on disk and the messages may
// be acknowledged. On error nothing was written.
func (s *Store) commit(ctx context.Context, envs []*envelope) (commitResult, error) {
	return s.commitInto(ctx, envs, nil)
}

// commitInto is commit, appending the new readings it reports to
// buf[:0] (reused across commits).
func (s *Store) commitInto(ctx context.Context, envs []*envelope, buf []Reading) (commitResult, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed {
		return commitResult{}, ErrClosed
	}
	var res commitResult
	sc := &s.commitScr
	sc.reset()
	n := 0
	for _, e := range envs {
		n += len(e.readings)
	}
	res.newReadings = slices.Grow(buf[:0], n)
	newRecent, pruned := int64(0), int64(0)
	deadByReason := map[Reason]int{}
	err := s.withTx(ctx, func(tx *sql.Tx) error {
		if s.commitHook != nil {
			if err := s.commitHook(envs); err != nil {
				return err
			}
		}
		st := s.stmts
		insText := tx.StmtContext(ctx, st.insText)
		var recentGet, recentIns *sql.Stmt
		for _, e := range envs {
			e.stored = 0
			recvUS := e.recv.UnixMicro()
			if e.err != nil {
				if err := s.insertDeadLetter(ctx, tx, e, recvUS); err != nil {
					return err
				}
				res.deadLetters++
				deadByReason[reasonOf(e.err)]++
				continue
			}
			dev, err := s.device(ctx, tx, e.device, recvUS)
			if err != nil {
				return err
			}
			if e.received && e.pid != 0 && s.cfg.DedupMessages > 0 { // pid 0: QoS 0, never redelivered
				if recentGet == nil {
					recentGet = tx.StmtContext(ctx, st.recentGet)
					recentIns = tx.StmtContext(ctx, st.recentIns)
				}
				key := deliveryKey(e.msgHash(), e.pid)
				if e.dup {
					var one int
					err := recentGet.QueryRowContext(ctx, key, s.recentMax-int64(s.cfg.DedupMessages)).Scan(&one)
					if err == nil {
						res.dupMessages++
						continue
					}
					if !errors.Is(err, sql.ErrNoRows) {
						return fmt.Errorf("ingest: look up message hash: %w", err)
					}
				}
				newRecent++
				if _, err := recentIns.ExecContext(ctx, s.recentMax+newRecent, key); err != nil {
					return fmt.Errorf("ingest: remember message hash: %w", err)
				}
			}
			db := sc.devs[dev.id]
			if db == nil {
				db = &devBatch{name: e.device}
				sc.devs[dev.id] = db
				sc.devOrder = append(sc.devOrder, dev.id)
			}
			db.messages++
			db.last = max(db.last, recvUS)
			for i := range e.readings {
				r := &e.readings[i]
				ser, err := s.series(ctx, tx, dev, r)
				if err != nil {
					return err
				}
				row := pendingRow{series: ser.id, ts: r.timeUS(), slot: sc.slotOf(ser), at: sc.arrival, r: r, env: e, dev: db}
				sc.arrival++
				if r.Kind.numeric() {
					if row.ts > ser.maxTS {
						row.fresh, ser.maxTS = true, row.ts
					}
					sc.rows = append(sc.rows, row)
					continue
				}
				out, err := insText.ExecContext(ctx, ser.id, row.ts, int64(r.Kind), []byte(r.Text))
				if err != nil {
					return fmt.Errorf("ingest: insert text reading: %w", err)
				}
				if n, _ := out.RowsAffected(); n == 0 {
					res.duplicates++
					continue
				}
				s.accept(sc, &res, &row)
			}
		}
		dups, err := s.insertNumeric(ctx, tx, sc, &res)
		if err != nil {
			return err
		}
		res.duplicates += dups
		res.newReadings = sc.inArrivalOrder(res.newReadings)
		res.stored = len(res.newReadings)
		if err := s.flushAggregates(ctx, tx, sc); err != nil {
			return err
		}
		if res.stored > 0 && !s.cfg.Outbox.Disabled {
			p := sc.enc.payload(BatchReadings)
			out, err := tx.StmtContext(ctx, st.obIns).ExecContext(ctx, int64(BatchReadings), s.cfg.Clock.Now().UnixMicro(),
				int64(sc.enc.n), sc.enc.minTS, sc.enc.maxTS, int64(len(p)), p)
			if err != nil {
				return fmt.Errorf("ingest: insert outbox batch: %w", err)
			}
			res.seq, _ = out.LastInsertId()
			sc.obAdd = int64(len(p))
		}
		if newRecent > 0 {
			// Forget hashes beyond the newest DedupMessages, in steps.
			if cut := s.recentMax + newRecent - int64(s.cfg.DedupMessages); cut >= s.recentPruned+1024 {
				if _, err := tx.StmtContext(ctx, st.recentPrune).ExecContext(ctx, cut); err != nil {
					return fmt.Errorf("ingest: prune message hashes: %w", err)
				}
				pruned = cut
			}
		}
		sc.meta[metaDuplicates] += int64(res.duplicates)
		sc.meta[metaDupMessages] += int64(res.dupMessages)
		sc.meta[metaDeadLetters] += int64(res.deadLetters)
		sc.meta[metaMessages] += int64(len(envs))
		sc.meta[metaStoredReadings] += int64(res.stored)
		if err := addMeta(ctx, tx, st.metaAdd, sc.meta); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		// The transaction rolled back: ids cached during it may not exist.
		clear(s.cache)
		sc.obAdd = 0
		return commitResult{}, err
	}
	s.recentMax += newRecent
	s.recentPruned = max(s.recentPruned, pruned)
	s.applyMeta(sc.meta)
	if res.seq != 0 {
		s.obBytes += sc.obAdd
		s.obBatches++
		s.obReadings += int64(sc.enc.n)
	}
	sc.obAdd = 0
	for _, id := range sc.devOrder {
		d := sc.devs[id]
		res.devices = append(res.devices, DeviceSeen{Device: d.name, At: time.UnixMicro(d.last).UTC(), Messages: d.messages, Readings: d.readings})
	}
	s.m.commit(s, deadByReason)
	if s.ctr[metaDeadLetters] > int64(s.cfg.MaxDeadLetters) {
		if err := s.trimDeadLetters(ctx); err != nil {
			s.log.Warn("trim dead letters", "err", err)
		}
	}
	return res, nil
}

// pendingRow is a reading resolved to its series, waiting to be inserted.
type pendingRow struct {
	series, ts int64
	slot       int32
	at         int32 // place in the batch's arrival order
	fresh      bool  // later than every stored reading of the series
	r          *Reading
	env        *envelope
	dev        *devBatch
}

// insertChunks are the row counts of the multi-row INSERT statements
// (prepared once each); fewer rows go one by one.
var insertChunks = []int{256, 16}

// insertNumeric inserts the batch's numeric readings. A reading later
// than every stored reading of its series (the series' high-water
// time, known to the cache) is certainly new: those go in multi-row
// statements. The others (out of order, or redelivered) go one by one,
// and a row the table already holds is counted as a duplicate. It
// returns the number of duplicates.
func (s *Store) insertNumeric(ctx context.Context, tx *sql.Tx, sc *commitScratch, res *commitResult) (int, error) {
	st := s.stmts
	one := tx.StmtContext(ctx, st.insReading)
	dups := 0
	// Fresh rows first: a later row with the same key (a duplicate
	// within the batch, never fresh) then finds it stored.
	fresh := sc.fresh[:0]
	for i := range sc.rows {
		if sc.rows[i].fresh {
			fresh = append(fresh, &sc.rows[i])
		}
	}
	sc.fresh = fresh
	// Group the rows by series (a stable counting sort on the slot), so
	// consecutive inserts land on the same B-tree pages.
	if len(sc.slots) > 1 && len(fresh) > 1 {
		counts := sc.counts[:0]
		for range len(sc.slots) + 1 {
			counts = append(counts, 0)
		}
		for _, row := range fresh {
			counts[row.slot+1]++
		}
		for i := 1; i < len(counts); i++ {
			counts[i] += counts[i-1]
		}
		sorted := sc.sorted[:0]
		sorted = append(sorted, fresh...)
		for _, row := range fresh {
			sorted[counts[row.slot]] = row
			counts[row.slot]++
		}
		sc.counts, sc.sorted = counts, sorted
		fresh = sorted
	}
	for len(fresh) > 0 {
		k := 1
		for _, c := range insertChunks {
			if len(fresh) >= c {
				k = c
				break
			}
		}
		chunk := fresh[:k]
		fresh = fresh[k:]
		args := sc.args[:0]
		for _, row := range chunk {
			args = append(args, row.series, row.ts, row.r.Value)
		}
		sc.args = args
		stmt := one
		if k > 1 {
			stmt = tx.StmtContext(ctx, st.insMany[k])
		}
		out, err := stmt.ExecContext(ctx, args...)
		if err != nil {
			return dups, fmt.Errorf("ingest: insert readings: %w", err)
		}
		if n, _ := out.RowsAffected(); n != int64(k) {
			// The cached high-water time was wrong (another writer?):
			// fail the transaction; the retry reloads the cache.
			return dups, fmt.Errorf("ingest: %d of %d readings above their series' latest time were already stored", int64(k)-n, k)
		}
		for _, row := range chunk {
			s.accept(sc, res, row)
		}
	}
	for i := range sc.rows {
		row := &sc.rows[i]
		if row.fresh {
			continue
		}
		out, err := one.ExecContext(ctx, row.series, row.ts, row.r.Value)
		if err != nil {
			return dups, fmt.Errorf("ingest: insert reading: %w", err)
		}
		if n, _ := out.RowsAffected(); n == 0 {
			dups++
			continue
		}
		s.accept(sc, res, row)
	}
	return dups, nil
}

// accept records a newly stored reading: counters, last value, rollups,
// the outbox batch and the sink's list.
func (s *Store) accept(sc *commitScratch, res *commitResult, row *pendingRow) {
	r := row.r
	row.env.stored++
	row.dev.readings++
	sc.accepted = append(sc.accepted, acceptedReading{at: row.at, r: r})
	sl := &sc.slots[row.slot]
	if !sl.hasLast || row.ts >= sl.last.ts {
		sl.last, sl.hasLast = lastVal{ts: row.ts, kind: r.Kind, value: r.Value, text: r.Text, unit: r.Unit}, true
	}
	if r.Kind.numeric() {
		sc.addRollups(sl, row.ts, r.Value)
		sc.meta[metaRawReadings]++
	} else {
		sc.meta[metaTextReadings]++
	}
	if !s.cfg.Outbox.Disabled {
		e := &sc.enc
		if !sl.encSet {
			sl.devIdx, sl.metIdx, sl.encSet = e.str(r.Device), e.str(r.Metric), true
		}
		if !sl.unitSet || sl.unit != r.Unit {
			sl.unit, sl.unitIdx, sl.unitSet = r.Unit, e.str(r.Unit), true
		}
		e.addIdx(sl.devIdx, sl.metIdx, sl.unitIdx, row.ts, r.Kind, r.Value, r.Text)
	}
}

// flushAggregates writes rollups, series last values and device counters.
func (s *Store) flushAggregates(ctx context.Context, tx *sql.Tx, sc *commitScratch) error {
	st := s.stmts
	for i := range sc.slots {
		sl := &sc.slots[i]
		if sl.minAgg.count > 0 {
			sc.spill = append(sc.spill, spilled{60, rollKey{sl.series, sl.minB}, sl.minAgg})
			sc.spill = append(sc.spill, spilled{3600, rollKey{sl.series, sl.hourB}, sl.hourAgg})
		}
	}
	if len(sc.spill) > 0 {
		// Upserts merge, so a bucket spilled twice (out-of-order
		// readings) adds up correctly.
		up := tx.StmtContext(ctx, st.rollup)
		for _, sp := range sc.spill {
			if _, err := up.ExecContext(ctx, sp.res, sp.key.series, sp.key.bucket, sp.agg.count, sp.agg.sum, sp.agg.min, sp.agg.max); err != nil {
				return fmt.Errorf("ingest: update rollup: %w", err)
			}
		}
	}
	var num, txt *sql.Stmt
	for i := range sc.slots {
		sl := &sc.slots[i]
		if !sl.hasLast {
			continue
		}
		if num == nil {
			num, txt = tx.StmtContext(ctx, st.serLast), tx.StmtContext(ctx, st.serLastText)
		}
		lv := sl.last
		var err error
		if lv.kind.numeric() {
			_, err = num.ExecContext(ctx, lv.ts, lv.value, lv.unit, int64(lv.kind), sl.series, lv.ts)
		} else {
			_, err = txt.ExecContext(ctx, lv.ts, []byte(lv.text), lv.unit, int64(lv.kind), sl.series, lv.ts)
		}
		if err != nil {
			return fmt.Errorf("ingest: update series: %w", err)
		}
	}
	if len(sc.devOrder) > 0 {
		upd := tx.StmtContext(ctx, st.devUpd)
		for _, id := range sc.devOrder {
			d := sc.devs[id]
			if _, err := upd.ExecContext(ctx, d.last, d.messages, d.readings, id); err != nil {
				return fmt.Errorf("ingest: update device: %w", err)
			}
		}
	}
	return nil
}

// device returns the cached entry of a device, creating its row.
func (s *Store) device(ctx context.Context, tx *sql.Tx, name string, recvUS int64) (*devEntry, error) {
	if d, ok := s.cache[name]; ok {
		return d, nil
	}
	var id int64
	err := tx.StmtContext(ctx, s.stmts.devGet).QueryRowContext(ctx, name).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		out, err := tx.StmtContext(ctx, s.stmts.devIns).ExecContext(ctx, name, recvUS, recvUS)
		if err != nil {
			return nil, fmt.Errorf("ingest: insert device %q: %w", name, err)
		}
		id, _ = out.LastInsertId()
	} else if err != nil {
		return nil, fmt.Errorf("ingest: look up device %q: %w", name, err)
	}
	d := &devEntry{id: id, series: map[string]*seriesEntry{}}
	s.cache[name] = d
	return d, nil
}

// series returns the cached entry of a device's metric, creating its
// row. Its unit and kind follow its latest stored reading (see
// flushAggregates).
func (s *Store) series(ctx context.Context, tx *sql.Tx, dev *devEntry, r *Reading) (*seriesEntry, error) {
	if se, ok := dev.series[r.Metric]; ok {
		return se, nil
	}
	se := &seriesEntry{maxTS: math.MinInt64}
	err := tx.StmtContext(ctx, s.stmts.serGet).QueryRowContext(ctx, dev.id, r.Metric).Scan(&se.id)
	if errors.Is(err, sql.ErrNoRows) {
		out, err := tx.StmtContext(ctx, s.stmts.serIns).ExecContext(ctx, dev.id, r.Metric, r.Unit, int64(r.Kind))
		if err != nil {
			return nil, fmt.Errorf("ingest: insert series %q: %w", r.Metric, err)
		}
		se.id, _ = out.LastInsertId()
	} else if err != nil {
		return nil, fmt.Errorf("ingest: look up series %q: %w", r.Metric, err)
	} else {
		var mx sql.NullInt64
		if err := tx.StmtContext(ctx, s.stmts.serMax).QueryRowContext(ctx, se.id).Scan(&mx); err != nil {
			return nil, fmt.Errorf("ingest: latest time of series %q: %w", r.Metric, err)
		}
		if mx.Valid {
			se.maxTS = mx.Int64
		}
	}
	dev.series[r.Metric] = se
	return se, nil
}

// insertDeadLetter stores a refused message: receive time, topic, reason,
// error, and the payload up to MaxDeadLetterPayload bytes.
func (s *Store) insertDeadLetter(ctx context.Context, tx *sql.Tx, e *envelope, recvUS int64) error {
	p := e.payload
	if len(p) > s.cfg.MaxDeadLetterPayload {
		p = p[:s.cfg.MaxDeadLetterPayload]
	}
	if p == nil {
		p = []byte{} // an empty blob, not NULL
	}
	msg := e.err.Error()
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	topic := e.topic
	if len(topic) > 1024 {
		topic = topic[:1024]
	}
	topic = strings.ToValidUTF8(topic, "\uFFFD")
	msg = strings.ToValidUTF8(msg, "\uFFFD")
	_, err := tx.StmtContext(ctx, s.stmts.deadIns).ExecContext(ctx, recvUS, topic, string(reasonOf(e.err)), msg,
		p, int64(len(e.payload)), int64(e.msgHash()))
	if err != nil {
		return fmt.Errorf("ingest: insert dead letter: %w", err)
	}
	return nil
}
