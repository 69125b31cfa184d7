package agent

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/crdt"
)

// TestStateWriteStorageUnavailable: a local write the state store could
// not take (disk full: crdt.ErrUnavailable) is answered 503 with its
// reason, so the caller retries; never 200, never a 4xx.
func TestStateWriteStorageUnavailable(t *testing.T) {
	w := httptest.NewRecorder()
	writeStoreError(w, fmt.Errorf("crdt: put: insert op a:1: database or disk is full (13): %w", crdt.ErrUnavailable))
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "database or disk is full") {
		t.Fatalf("%d %s", w.Code, w.Body)
	}
}
