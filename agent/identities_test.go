package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/devices"
	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

// TestDisableClosesConnectionsOnEveryAgent: a device registered on one
// agent is admitted by all three (replicated identity); disabling it on
// another agent closes its live connection on each within 5 s, and
// refuses it; enabling it lets it back everywhere.
func TestDisableClosesConnectionsOnEveryAgent(t *testing.T) {
	c := newCluster(t)
	var as []*Agent
	for i := 0; i < 3; i++ {
		var seeds []string
		if i > 0 {
			seeds = []string{as[0].GossipAddr()}
		}
		as = append(as, c.start(fmt.Sprintf("g%d", i), seeds, func(cfg *Config) {
			withIngest(cfg)
			cfg.Ingest.Broker.AllowAnonymous = false
		}))
	}
	ctx := context.Background()
	id, secret, err := as[0].RegisterDevice(ctx, "sensor-7", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if id.State != devices.StateActive || id.Publish[0] != "devices/sensor-7/telemetry" || len(id.Subscribe) != 2 {
		t.Fatalf("registered %+v", id)
	}
	// Admitted by every agent once the identity has arrived.
	lost := make([]chan time.Time, len(as))
	start := time.Now()
	for i, a := range as {
		lost[i] = make(chan time.Time, 1)
		waitFor(t, 10*time.Second, "device admitted by "+a.Name(), func() (bool, string) {
			cl, err := mqtttest.DialDevice(a.MQTTURL(), "sensor-7", secret, lost[i])
			if err != nil {
				return false, err.Error()
			}
			t.Cleanup(func() { cl.Disconnect(0) })
			return true, ""
		})
	}
	t.Logf("admitted on all 3 agents %v after registering", time.Since(start).Round(time.Millisecond))

	t0 := time.Now()
	if _, err := as[1].SetDeviceState(ctx, "sensor-7", devices.StateDisabled); err != nil {
		t.Fatal(err)
	}
	for i := range as {
		select {
		case at := <-lost[i]:
			t.Logf("disable on g1: connection on g%d closed after %v", i, at.Sub(t0).Round(time.Millisecond))
		case <-time.After(5*time.Second - time.Since(t0)):
			t.Fatalf("g%d: the disabled device's connection still open 5s after disable", i)
		}
	}
	for i, a := range as {
		if cl, err := mqtttest.DialDevice(a.MQTTURL(), "sensor-7", secret, nil); err == nil {
			cl.Disconnect(0)
			t.Fatalf("g%d admits the disabled device", i)
		}
		if n := metricValue(t, a, "edgefleet_broker_auth_refused_total", "disabled"); n != 1 {
			t.Fatalf("g%d counted %v refusals of a disabled device, want 1", i, n)
		}
		if n := metricValue(t, a, "edgefleet_broker_auth_disconnects_total", "disabled"); n != 1 {
			t.Fatalf("g%d counted %v disconnects of a disabled device, want 1", i, n)
		}
	}

	t0 = time.Now()
	if _, err := as[2].SetDeviceState(ctx, "sensor-7", devices.StateActive); err != nil {
		t.Fatal(err)
	}
	for i, a := range as {
		waitFor(t, 10*time.Second, "enabled device admitted", func() (bool, string) {
			cl, err := mqtttest.DialDevice(a.MQTTURL(), "sensor-7", secret, nil)
			if err != nil {
				return false, err.Error()
			}
			cl.Disconnect(0)
			return true, ""
		})
		t.Logf("enable on g2: admitted on g%d after %v", i, time.Since(t0).Round(time.Millisecond))
	}

	// The identity API refuses what it should.
	if _, _, err := as[0].RegisterDevice(ctx, "sensor-7", nil, nil); !errors.Is(err, ErrDeviceRegistered) {
		t.Fatalf("second register: %v", err)
	}
	if _, _, err := as[0].RotateDeviceSecret(ctx, "nobody"); !errors.Is(err, ErrDeviceNotRegistered) {
		t.Fatalf("rotate of an unknown device: %v", err)
	}
	if _, _, err := as[0].RegisterDevice(ctx, "bad/id", nil, nil); !errors.Is(err, ErrBadIdentity) {
		t.Fatalf("bad id: %v", err)
	}
	if _, _, err := as[0].RegisterDevice(ctx, "x1", []string{"devices/#/x"}, nil); !errors.Is(err, ErrBadIdentity) {
		t.Fatalf("bad topic: %v", err)
	}
}

// metricValue reads a counter of the agent's registry by its one label's
// value.
func metricValue(t *testing.T, a *Agent, name, label string) float64 {
	t.Helper()
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) == 1 && m.GetLabel()[0].GetValue() == label {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no metric %s{%s}", name, label)
	return 0
}

// TestInvalidIdentitySkipped: a value in device_identities that is not a
// valid identity (written around the API, e.g. by a faulty peer) admits
// no one and hides no valid identity; the local API refuses generic
// writes to the collection.
func TestInvalidIdentitySkipped(t *testing.T) {
	c := newCluster(t)
	a := c.start("solo", nil, func(cfg *Config) {
		withIngest(cfg)
		cfg.Ingest.Broker.AllowAnonymous = false
		cfg.Ingest.Broker.IdentityPoll = 50 * time.Millisecond
	})
	ctx := context.Background()
	_, secret, err := a.RegisterDevice(ctx, "ok-1", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for key, val := range map[string]string{
		"bad-1": `{"id":"bad-1","hash":"","state":"active"}`,
		"bad-2": `{"id":"other","hash":"$7$101$k6NdYsnn/MLMDKSh$JxJImt6dOABI1/oJCEhJ+gCRPyPhRRx6fYnZGwTsKE9UEjCL/56jnnXhQ/ZGb1AD1bichVZgMYnzPir+Da/grQ==","state":"active"}`,
		"bad-3": `not json`,
	} {
		if _, err := a.Store().Put(ctx, IdentitiesCollection, key, []byte(val)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(200 * time.Millisecond) // a few polls
	ids, err := a.DeviceIdentities(ctx)
	if err != nil || len(ids) != 1 || ids[0].ID != "ok-1" {
		t.Fatalf("identities %+v, %v", ids, err)
	}
	if cl, err := mqtttest.DialDevice(a.MQTTURL(), "ok-1", secret, nil); err != nil {
		t.Fatalf("valid device refused beside invalid entries: %v", err)
	} else {
		cl.Disconnect(0)
	}
	for _, id := range []string{"bad-1", "bad-2", "other"} {
		if cl, err := mqtttest.DialDevice(a.MQTTURL(), id, "secret", nil); err == nil {
			cl.Disconnect(0)
			t.Fatalf("%s admitted", id)
		}
	}
	req, _ := http.NewRequest(http.MethodPut, "http://"+a.APIAddr()+"/v1/state/"+IdentitiesCollection+"/x", strings.NewReader(`{}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("generic write to %s: %s, want 403", IdentitiesCollection, resp.Status)
	}
}
