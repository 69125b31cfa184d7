package localapi

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/devices"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/agent/membership"
	"github.com/edgefleet/edgefleet/agent/uplink"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// fill sets every field of v (a pointer) to a value that is not zero, so
// that a field a conversion drops, or a tag that differs, shows in JSON.
func fill(t *testing.T, v reflect.Value) {
	t.Helper()
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		fill(t, v.Elem())
	case reflect.Struct:
		if v.Type() == reflect.TypeFor[time.Time]() {
			v.Set(reflect.ValueOf(time.Date(2026, 12, 7, 3, 4, 5, 6, time.UTC)))
			return
		}
		for i := range v.NumField() {
			fill(t, v.Field(i))
		}
	case reflect.String:
		v.SetString("s-" + v.Type().Name())
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int64, reflect.Int32:
		v.SetInt(7)
	case reflect.Uint32, reflect.Uint64, reflect.Uint8:
		v.SetUint(9)
	case reflect.Float64:
		v.SetFloat(1.5)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 2, 2)
		for i := range 2 {
			fill(t, s.Index(i))
		}
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(t, k)
		fill(t, e)
		m.SetMapIndex(k, e)
		v.Set(m)
	default:
		t.Fatalf("fill: %s not handled", v.Type())
	}
}

func filled[T any](t *testing.T) T {
	var v T
	fill(t, reflect.ValueOf(&v))
	return v
}

func sameJSON(t *testing.T, name string, domain, wire any) {
	t.Helper()
	d, err := json.Marshal(domain)
	if err != nil {
		t.Fatal(err)
	}
	w, err := json.Marshal(wire)
	if err != nil {
		t.Fatal(err)
	}
	if string(d) != string(w) {
		t.Errorf("%s: the wire form differs from the domain form\ndomain: %s\nwire:   %s", name, d, w)
	}
}

// TestWireMatchesDomain checks that every conversion of wire.go keeps
// every field of the domain type under the same JSON name.
func TestWireMatchesDomain(t *testing.T) {
	st := filled[ingest.Stats](t)
	sameJSON(t, "ingest.Stats", st, wireIngestStats(st))
	ss := filled[ingest.StoreStats](t)
	sameJSON(t, "ingest.StoreStats", ss, wireStoreStats(ss))
	up := filled[uplink.Status](t)
	sameJSON(t, "uplink.Status", up, wireUplink(up))
	h := filled[*cpapi.Health](t)
	sameJSON(t, "cpapi.Health", h, wireHealth(h))
	if wireHealth(nil) != nil {
		t.Error("wireHealth(nil) is not nil")
	}
	rec := filled[devices.Record](t)
	sameJSON(t, "devices.Record", rec, agentapi.DeviceRecord(rec))
	ms := filled[[]membership.Member](t)
	sameJSON(t, "[]membership.Member", ms, wireMembers(ms))
	if got := wireMembers(nil); got == nil {
		t.Error("wireMembers(nil) is nil, want []")
	}
	dl := filled[ingest.DeadLetterPage](t)
	sameJSON(t, "ingest.DeadLetterPage", dl, wireDeadLetters(dl))
}

// TestDisabledParts checks the answers of /v1/ingest and /v1/uplink when
// ingestion is off or there is no control plane: {"enabled":false} only.
func TestDisabledParts(t *testing.T) {
	for _, v := range []any{agentapi.IngestStatus{}, agentapi.UplinkStatus{}} {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != `{"enabled":false}` {
			t.Errorf("%T disabled: %s", v, b)
		}
	}
}
