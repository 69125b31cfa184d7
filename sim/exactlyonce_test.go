package sim

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestExactlyOnceCheckFailsWithoutDedup: with every third upload answer
// lost, agents retry batches the control plane already stored. With
// de-duplication the check passes and counts the retries answered
// duplicate; with it switched off the control plane stores the retries
// again, and the check fails.
func TestExactlyOnceCheckFailsWithoutDedup(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet: skipped with -short")
	}
	data := dataSets(t)
	if data == "" {
		t.Skip("needs the occupancy data set (EDGEFLEET_DATA)")
	}
	run := func(noDedup bool) *DevicesReport {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		rep, err := Run(ctx, Options{
			Agents: 2, NoPartition: true, WritesPerAgent: 3, Idle: 500 * time.Millisecond, Profile: "test",
			DataDir: t.TempDir(), Timeout: 60 * time.Second, DevicesPerAgent: 2, DataSets: data,
			faults: uplinkFaults{loseAnswerEvery: 3, noDedup: noDedup},
		})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Devices == nil || rep.Devices.Delivery == nil {
			t.Fatalf("no delivery report: %+v", rep.Devices)
		}
		d := rep.Devices.Delivery
		if d.Sent == 0 || d.LostAnswers == 0 {
			t.Fatalf("nothing sent, or no answer lost: %+v", d)
		}
		t.Logf("dedup off %v: %+v", noDedup, d)
		return rep.Devices
	}
	on := run(false).Delivery
	if err := on.Err(); err != nil || on.DuplicateBatches == 0 {
		t.Fatalf("with de-duplication: %v, %+v", err, on)
	}
	devs := run(true)
	off := devs.Delivery
	if err := off.Err(); err == nil || !strings.Contains(err.Error(), "more than once") || off.StoredTwice == 0 || off.DuplicateBatches != 0 || devs.Duplicates != off.StoredTwice {
		t.Fatalf("without de-duplication the check must fail: %v, %+v", err, off)
	}
	// Counting rows could not tell: the control plane holds one row per
	// series and time, however often it stored it.
	if devs.AtControlPlane != devs.StoredAtAgents {
		t.Fatalf("counts %+v", devs)
	}
}
