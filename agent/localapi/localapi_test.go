package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/devices"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/agent/keys"
	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/agent/models"
	"github.com/edgefleet/edgefleet/agent/training"
	"github.com/edgefleet/edgefleet/agent/uplink"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/prometheus/client_golang/prometheus"
)

var (
	errDown     = errors.New("fake: not running")
	errDisabled = errors.New("fake: ingestion disabled")
)

// fake is a Backend without an agent: a real store (nil while "down"),
// no ingestion and no control plane; SendCommand answers cmdErr.
type fake struct {
	store     *crdt.Store
	types     map[string]crdt.Type
	cmdErr    error
	commitErr error // answered by Commit instead of running the op
	training  *training.Manager
	models    *models.Manager
}

func (f *fake) LiveStore() (*crdt.Store, error) {
	if f.store == nil {
		return nil, errDown
	}
	return f.store, nil
}

func (f *fake) Commit(op func(s *crdt.Store) (crdt.Delta, error)) (crdt.Delta, error) {
	s, err := f.LiveStore()
	if err != nil {
		return crdt.Delta{}, err
	}
	if f.commitErr != nil {
		return crdt.Delta{}, f.commitErr
	}
	return op(s)
}

func (f *fake) CollectionType(coll string) crdt.Type {
	if t, ok := f.types[coll]; ok {
		return t
	}
	return crdt.TypeLWW
}

func (f *fake) Name() string         { return "n1" }
func (f *fake) Running() bool        { return f.store != nil }
func (f *fake) StartedAt() time.Time { return time.Time{} }
func (f *fake) Ready(context.Context) (int, string, error) {
	if f.store == nil {
		return 0, "", errors.New("agent not running")
	}
	return 1, "", nil
}
func (f *fake) Members() []membership.Member {
	return []membership.Member{{Name: "n1", State: membership.StateAlive}, {Name: "n2", State: membership.StateDead}}
}
func (f *fake) Health() *cpapi.Health { return &cpapi.Health{Status: "ok"} }
func (f *fake) Devices(context.Context) ([]devices.Record, error) {
	return nil, errDown
}
func (f *fake) Device(context.Context, string) (devices.Record, bool, error) {
	return devices.Record{}, false, nil
}
func (f *fake) SendCommand(context.Context, string, []byte) (string, error) {
	return "", f.cmdErr
}
func (f *fake) Ingestor() (*ingest.Ingestor, error)      { return nil, errDisabled }
func (f *fake) Uplink() (uplink.Status, bool)            { return uplink.Status{}, false }
func (f *fake) HeldKeys() []dkms.KeyInfo                 { return nil }
func (f *fake) GossipKeys() (st keys.RingState, ok bool) { return keys.RingState{}, false }
func (f *fake) Training() (*training.Manager, error) {
	if f.training == nil {
		return nil, errDisabled
	}
	return f.training, nil
}

func (f *fake) Models() (*models.Manager, error) {
	if f.models == nil {
		return nil, errDisabled
	}
	return f.models, nil
}

func newServer(t *testing.T, f *fake) string {
	t.Helper()
	srv := httptest.NewServer(New(f, Config{
		MaxBodyBytes: 64, MaxCommandBytes: 16, Version: "v-test",
		Unavailable: []error{errDown, errDisabled}, Registry: prometheus.NewRegistry(),
		Clock: clock.NewManual(time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)),
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func call(t *testing.T, base, method, path, body string, want int) []byte {
	t.Helper()
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, want, raw)
	}
	if want >= 400 {
		var e agentapi.ErrorBody
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			t.Fatalf("%s %s: error body is not {\"error\": ...}: %s", method, path, raw)
		}
	}
	return raw
}

// decodeStrict decodes raw into a T with unknown fields disallowed.
func decodeStrict[T any](t *testing.T, raw []byte) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s does not fit %T: %v", raw, v, err)
	}
	return v
}

// TestUnavailable checks that the backend's Unavailable errors answer 503
// and the disabled parts their one-field answers, with no agent.
func TestUnavailable(t *testing.T) {
	f := &fake{cmdErr: errDisabled}
	base := newServer(t, f)
	call(t, base, "GET", "/readyz", "", 503)
	call(t, base, "GET", "/v1/state", "", 503)
	call(t, base, "GET", "/v1/state/c/k", "", 503)
	call(t, base, "PUT", "/v1/state/c/k", "v", 503)
	call(t, base, "GET", "/v1/devices", "", 503)
	call(t, base, "GET", "/v1/dead-letters?limit=0", "", 503) // 503 before the bad limit
	call(t, base, "POST", "/v1/devices/d1/commands", "on", 503)
	call(t, base, "POST", "/v1/devices/d1/commands", strings.Repeat("x", 17), 400)
	f.cmdErr = errors.New("broker said no")
	call(t, base, "POST", "/v1/devices/d1/commands", "on", 502)
	for _, p := range []string{"/v1/ingest", "/v1/uplink"} {
		if got := strings.TrimSpace(string(call(t, base, "GET", p, "", 200))); got != `{"enabled":false}` {
			t.Errorf("GET %s: %s", p, got)
		}
	}
	st := decodeStrict[agentapi.Status](t, call(t, base, "GET", "/v1/status", "", 200))
	if st.Running || st.Health != nil || st.Members.Alive != 1 || st.Members.Dead != 1 || st.Version != "v-test" ||
		!st.At.Equal(time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("status: %+v", st)
	}
}

// TestStateWriteStorageUnavailable: a local write the state store could
// not take (disk full: crdt.ErrUnavailable) is answered 503 with its
// reason, so the caller retries; never 200, never a 4xx.
func TestStateWriteStorageUnavailable(t *testing.T) {
	s, err := crdt.Open(filepath.Join(t.TempDir(), "state.db"), crdt.Options{ReplicaID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	f := &fake{store: s, commitErr: fmt.Errorf("crdt: put: insert op n1:1: database or disk is full (13): %w", crdt.ErrUnavailable)}
	body := call(t, newServer(t, f), "PUT", "/v1/state/c/k", `"v"`, 503)
	if !strings.Contains(string(body), "database or disk is full") {
		t.Fatalf("503 without the store's reason: %s", body)
	}
}

// TestStateAnswers drives the state endpoints against a real store and
// decodes every answer strictly into agentapi's types.
func TestStateAnswers(t *testing.T) {
	s, err := crdt.Open(filepath.Join(t.TempDir(), "state.db"), crdt.Options{ReplicaID: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	f := &fake{store: s, types: map[string]crdt.Type{"tags": crdt.TypeORSet, "hits": crdt.TypeCounter, "conf": crdt.TypeMVReg}}
	base := newServer(t, f)

	for _, coll := range []string{"cfg", "tags", "hits", "conf"} {
		l := decodeStrict[agentapi.Listing](t, call(t, base, "GET", "/v1/state/"+coll, "", 200))
		if l.Entries == nil && l.Members == nil && l.Counters == nil && l.Registers == nil {
			t.Errorf("empty %s lists nothing, want []: %+v", coll, l)
		}
	}
	w := decodeStrict[agentapi.WriteResult](t, call(t, base, "PUT", "/v1/state/cfg/a", "a<b", 200))
	if w.Origin != "n1" || w.Seq != 1 || w.Type != agentapi.TypeLWW {
		t.Errorf("write: %+v", w)
	}
	if raw := call(t, base, "GET", "/v1/state/cfg/a", "", 200); !bytes.Contains(raw, []byte(`"value":"a<b"`)) {
		t.Errorf("text value escaped or lost: %s", raw)
	}
	call(t, base, "PUT", "/v1/state/cfg/bin", "\xff\x00", 200)
	if it := decodeStrict[agentapi.Item](t, call(t, base, "GET", "/v1/state/cfg/bin", "", 200)); it.Encoding != "base64" || string(it.Value) != `"/wA="` {
		t.Errorf("binary value: %+v", it)
	}
	call(t, base, "PUT", "/v1/state/cfg/big", strings.Repeat("x", 65), 413)
	call(t, base, "PUT", "/v1/state/hits/h", `{"add":-3}`, 200)
	call(t, base, "PUT", "/v1/state/hits/h", `{"sub":1}`, 400)
	if it := decodeStrict[agentapi.Item](t, call(t, base, "GET", "/v1/state/hits/h", "", 200)); string(it.Value) != "-3" {
		t.Errorf("counter: %+v", it)
	}
	call(t, base, "DELETE", "/v1/state/hits/h", "", 405)
	call(t, base, "PUT", "/v1/state/tags/x", "", 200)
	if it := decodeStrict[agentapi.Item](t, call(t, base, "GET", "/v1/state/tags/x", "", 200)); it.Present == nil || !*it.Present {
		t.Errorf("orset: %+v", it)
	}
	call(t, base, "PUT", "/v1/state/conf/c", "\xff", 200)
	reg := decodeStrict[agentapi.Item](t, call(t, base, "GET", "/v1/state/conf/c", "", 200))
	if len(reg.Values) != 1 || string(reg.Values[0]) != `{"encoding":"base64","value":"/w=="}` {
		t.Errorf("mvreg: %+v", reg)
	}
	call(t, base, "GET", "/v1/state/conf/none", "", 404)
	call(t, base, "GET", "/v1/state/bad%20name", "", 400)
	colls := decodeStrict[[]agentapi.Collection](t, call(t, base, "GET", "/v1/state", "", 200))
	if len(colls) != 4 {
		t.Errorf("collections: %+v", colls)
	}
	call(t, base, "PATCH", "/v1/state/cfg/a", "", 405)
	call(t, base, "GET", "/nowhere", "", 404)
}
