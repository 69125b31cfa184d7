package controlplane

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/devcred"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// TestDeviceIdentities: an operator registers, rotates, disables and
// enables a device; operators never see the hash, agents get it in the
// feed; every change is in the audit chain; bad input is refused with a
// reason and changes nothing.
func TestDeviceIdentities(t *testing.T) {
	e := newTestEnv(t, nil)
	op := e.client(e.tokenFor(cpapi.RoleOperator))
	viewer := e.client(e.tokenFor(cpapi.RoleViewer))
	ag := e.enroll("gw-1", nil)

	r, err := op.RegisterDevice(e.ctx(), cpapi.RegisterDeviceRequest{ID: "room-1"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Device.ID != "room-1" || r.Device.State != cpapi.DeviceActive || r.Device.Hash != "" || len(r.Secret) < 22 ||
		strings.Join(r.Device.Publish, ",") != "devices/room-1/telemetry" ||
		strings.Join(r.Device.Subscribe, ",") != "devices/room-1/commands,devices/room-1/inference" {
		t.Fatalf("registered: %+v", r)
	}
	if _, err := op.RegisterDevice(e.ctx(), cpapi.RegisterDeviceRequest{ID: "room-1"}); err == nil {
		t.Fatal("second registration accepted")
	} else {
		wantStatus(t, err, http.StatusConflict)
	}
	_, err = viewer.RegisterDevice(e.ctx(), cpapi.RegisterDeviceRequest{ID: "room-2"})
	wantStatus(t, err, http.StatusForbidden)

	// The agent's feed carries the hash, which verifies the secret.
	feed, err := ag.client.WatchDevices(e.ctx(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(feed.Changes) != 1 || feed.Seq != feed.Changes[0].Seq {
		t.Fatalf("feed: %+v", feed)
	}
	h, err := devcred.ParseHash(feed.Changes[0].Hash)
	if err != nil || !h.Verify(r.Secret) {
		t.Fatalf("hash in the feed does not verify the secret: %v", err)
	}

	// A held request wakes at the next change.
	got := make(chan cpapi.AgentDevicesResponse, 1)
	go func() {
		resp, err := ag.client.WatchDevices(e.ctx(), feed.Seq, 20*time.Second)
		if err != nil {
			t.Error(err)
		}
		got <- resp
	}()
	time.Sleep(200 * time.Millisecond)
	if _, err := op.SetDeviceState(e.ctx(), "room-1", false); err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-got:
		if len(resp.Changes) != 1 || resp.Changes[0].State != cpapi.DeviceDisabled || resp.Seq <= feed.Seq {
			t.Fatalf("held answer: %+v", resp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("held device request did not wake at the change")
	}

	rot, err := op.RotateDeviceSecret(e.ctx(), "room-1")
	if err != nil || rot.Secret == r.Secret || rot.Device.State != cpapi.DeviceDisabled {
		t.Fatalf("rotate: %+v %v", rot, err)
	}
	if d, err := op.SetDeviceState(e.ctx(), "room-1", true); err != nil || d.State != cpapi.DeviceActive {
		t.Fatalf("enable: %+v %v", d, err)
	}
	all, err := ag.client.WatchDevices(e.ctx(), 0, 0)
	if err != nil || len(all.Changes) != 1 {
		t.Fatalf("feed from 0: %+v %v", all, err)
	}
	if h, _ := devcred.ParseHash(all.Changes[0].Hash); h.Verify(r.Secret) || !h.Verify(rot.Secret) {
		t.Error("after rotation the feed's hash must verify the new secret only")
	}
	// A cursor past the newest change (a replaced database) gets
	// everything.
	if past, err := ag.client.WatchDevices(e.ctx(), all.Seq+100, 0); err != nil || len(past.Changes) != 1 {
		t.Errorf("cursor past the end: %+v %v", past, err)
	}

	list, err := viewer.ListDevices(e.ctx())
	if err != nil || len(list) != 1 || list[0].Hash != "" || list[0].State != cpapi.DeviceActive {
		t.Fatalf("list: %+v %v", list, err)
	}

	// Bad input.
	for name, call := range map[string]func() error{
		"bad id": func() error {
			_, err := op.RegisterDevice(e.ctx(), cpapi.RegisterDeviceRequest{ID: "room/1"})
			return err
		},
		"bad topic": func() error {
			_, err := op.RegisterDevice(e.ctx(), cpapi.RegisterDeviceRequest{ID: "room-3", Publish: []string{"devices/#/x"}})
			return err
		},
		"system topic": func() error {
			_, err := op.RegisterDevice(e.ctx(), cpapi.RegisterDeviceRequest{ID: "room-3", Subscribe: []string{"$SYS/#"}})
			return err
		},
	} {
		if err := call(); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			wantStatus(t, err, http.StatusBadRequest)
		}
	}
	_, err = op.RotateDeviceSecret(e.ctx(), "nobody")
	wantStatus(t, err, http.StatusNotFound)
	if st, msg := e.rawRequest("GET", "/v1/agent/devices?after=-1", "", nil, nil, &ag.cert); st != http.StatusBadRequest || !strings.Contains(msg, "after") {
		t.Errorf("after=-1: %d %s", st, msg)
	}

	// Audit: one record per change, in order.
	au, err := e.admin.ListAudit(e.ctx(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, rec := range au.Records {
		if strings.HasPrefix(rec.Action, "device.") && rec.Target == "room-1" && rec.Result == "ok" {
			actions = append(actions, rec.Action)
		}
	}
	if want := "device.register,device.disable,device.rotate_secret,device.enable"; strings.Join(actions, ",") != want {
		t.Errorf("audit: %v, want %s", actions, want)
	}

	// A decommissioned agent gets no identities.
	if _, err := e.admin.Decommission(e.ctx(), ag.id); err != nil {
		t.Fatal(err)
	}
	_, err = ag.client.WatchDevices(e.ctx(), 0, 0)
	wantStatus(t, err, http.StatusForbidden)
}
