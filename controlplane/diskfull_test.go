package controlplane

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestTelemetryUploadDiskFull: an upload whose insert fails because the
// database cannot grow (SQLITE_FULL, as on a full disk; here
// max_page_count caps it) is answered 503, retryable, so the agent keeps
// the batch; nothing of it is stored, and the same batch goes in once
// there is room.
func TestTelemetryUploadDiskFull(t *testing.T) {
	e := newTestEnv(t, nil)
	a := e.enroll("full", nil)
	st := e.srv.store.(*SQLiteStore)
	ctx := e.ctx()
	var pages int64
	if err := st.w.QueryRowContext(ctx, `PRAGMA page_count`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if _, err := st.w.ExecContext(ctx, fmt.Sprintf(`PRAGMA max_page_count = %d`, pages)); err != nil {
		t.Fatal(err)
	}
	start := e.clock.Now().Add(-30 * time.Minute)
	batch := makeBatch(1, start, 5000, "dev-1", "dev-2")
	_, err := a.client.UploadTelemetry(ctx, batch)
	ae := wantStatus(t, err, http.StatusServiceUnavailable)
	if !strings.Contains(ae.Message, "full") {
		t.Fatalf("503 without its reason: %q", ae.Message)
	}
	if _, err := st.w.ExecContext(ctx, `PRAGMA max_page_count = 1073741823`); err != nil {
		t.Fatal(err)
	}
	res, err := a.client.UploadTelemetry(ctx, batch)
	if err != nil || res.Duplicate || res.Accepted != 5000 {
		t.Fatalf("retry once there is room: %+v, %v", res, err)
	}
}
