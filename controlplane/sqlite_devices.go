package controlplane

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// The device identities of SQLiteStore (devices.go): one row per device,
// the identity as JSON, and seq, the number of its latest change, which
// orders the feed to the agents.

const devicesSQL = `
CREATE TABLE device_identities (
	id       TEXT PRIMARY KEY,
	seq      INTEGER NOT NULL UNIQUE,
	identity TEXT NOT NULL
) WITHOUT ROWID;
`

// ChangeDevice applies change to the identity of device id (found false
// and a zero identity when it has none) in one transaction with the
// audit record. change returns the new identity, or an error that is
// returned as is (nothing written). The stored identity gets the next
// sequence number.
func (s *SQLiteStore) ChangeDevice(ctx context.Context, id string, change func(cur cpapi.DeviceIdentity, found bool) (cpapi.DeviceIdentity, error), audit AuditEntry) (cpapi.DeviceIdentity, error) {
	var out cpapi.DeviceIdentity
	err := s.inTx(ctx, "change device", func(ctx context.Context, tx *sql.Tx) error {
		cur, found, err := getDevice(ctx, tx, id)
		if err != nil {
			return err
		}
		next, err := change(cur, found)
		if err != nil {
			return err
		}
		if next.ID != id {
			return fmt.Errorf("controlplane: change device %s: the change names device %q", id, next.ID)
		}
		if err := tx.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) + 1 FROM device_identities`).Scan(&next.Seq); err != nil {
			return fmt.Errorf("controlplane: change device %s: %w", id, err)
		}
		b, err := json.Marshal(next)
		if err != nil {
			return fmt.Errorf("controlplane: change device %s: %w", id, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO device_identities (id, seq, identity) VALUES (?, ?, ?)
			ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, identity = excluded.identity`, id, next.Seq, string(b)); err != nil {
			return fmt.Errorf("controlplane: change device %s: %w", id, err)
		}
		if _, err := s.appendAudit(ctx, tx, audit); err != nil {
			return err
		}
		out = next
		return nil
	})
	return out, err
}

type queryRower interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func getDevice(ctx context.Context, q queryRower, id string) (cpapi.DeviceIdentity, bool, error) {
	var js string
	err := q.QueryRowContext(ctx, `SELECT identity FROM device_identities WHERE id = ?`, id).Scan(&js)
	if errors.Is(err, sql.ErrNoRows) {
		return cpapi.DeviceIdentity{}, false, nil
	}
	if err != nil {
		return cpapi.DeviceIdentity{}, false, fmt.Errorf("controlplane: device %s: %w", id, err)
	}
	var d cpapi.DeviceIdentity
	if err := json.Unmarshal([]byte(js), &d); err != nil {
		return d, false, fmt.Errorf("controlplane: stored device %s: %w", id, err)
	}
	return d, true, nil
}

// GetDevice returns one device's identity; cpapi.ErrNotFound when it has
// none.
func (s *SQLiteStore) GetDevice(ctx context.Context, id string) (cpapi.DeviceIdentity, error) {
	d, found, err := getDevice(ctx, s.r, id)
	if err == nil && !found {
		err = fmt.Errorf("controlplane: device %s: %w", id, cpapi.ErrNotFound)
	}
	return d, err
}

// DevicesAfter returns the identities whose latest change is numbered
// after seq, in sequence order, at most limit of them (0: all), and the
// highest sequence number stored.
func (s *SQLiteStore) DevicesAfter(ctx context.Context, after int64, limit int) ([]cpapi.DeviceIdentity, int64, error) {
	if limit <= 0 {
		limit = -1
	}
	var top int64
	if err := s.r.QueryRowContext(ctx, `SELECT coalesce(max(seq), 0) FROM device_identities`).Scan(&top); err != nil {
		return nil, 0, fmt.Errorf("controlplane: devices: %w", err)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT identity FROM device_identities WHERE seq > ? ORDER BY seq LIMIT ?`, after, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("controlplane: devices: %w", err)
	}
	defer rows.Close()
	out := []cpapi.DeviceIdentity{}
	for rows.Next() {
		var js string
		if err := rows.Scan(&js); err != nil {
			return nil, 0, fmt.Errorf("controlplane: devices: %w", err)
		}
		var d cpapi.DeviceIdentity
		if err := json.Unmarshal([]byte(js), &d); err != nil {
			return nil, 0, fmt.Errorf("controlplane: stored device: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("controlplane: devices: %w", err)
	}
	return out, top, nil
}
