package greensched

import (
	"math"
	"reflect"
	"testing"
	"time"
)

func roundClients() []RoundClient {
	return []RoundClient{
		{ID: "a", Zone: "DE", Intensity: 300, Battery: &Battery{Present: true, Level: 0.9}},
		{ID: "b", Zone: "FR", Intensity: 50, Battery: &Battery{Present: true, Level: 0.1}},
		{ID: "c", Zone: "FR", Intensity: 60, Battery: &Battery{Present: true, Level: 0.1, Charging: true}},
		{ID: "d", Zone: "GB", Intensity: 150},
		{ID: "e", Intensity: math.NaN()},
		{ID: "f", Zone: "DE", Intensity: 300, Battery: &Battery{Present: false, Level: 1}},
	}
}

func TestPlanRoundSelectsCleanEligibleClients(t *testing.T) {
	now := hour(10)
	d, err := PlanRound(RoundRequest{Now: now, Ready: now, Duration: 10 * time.Minute, Clients: roundClients(), Select: 2, MinBattery: 0.3})
	if err != nil {
		t.Fatal(err)
	}
	if !d.Open || !d.Start.Equal(now) {
		t.Fatalf("not open now: %+v", d)
	}
	if want := []string{"c", "d", "a", "f", "e"}; !reflect.DeepEqual(d.Clients, want) {
		t.Fatalf("clients %v, want %v", d.Clients, want)
	}
	if _, ok := d.Excluded["b"]; !ok || len(d.Excluded) != 1 {
		t.Fatalf("excluded %v", d.Excluded)
	}
	if d.Intensity != 105 { // (60 + 150) / 2
		t.Fatalf("intensity %v", d.Intensity)
	}
}

func TestPlanRoundWaitsForGreenerWindow(t *testing.T) {
	now := hour(10)
	fr := hourly(make([]float64, 24)...)
	gb := hourly(make([]float64, 24)...)
	for i := range fr.Points {
		fr.Points[i].Intensity, gb.Points[i].Intensity = 60, 150
	}
	fr.Points[12].Intensity, gb.Points[12].Intensity = 20, 100 // 12:00 is greener
	req := RoundRequest{Now: now, Ready: now, Window: 3 * time.Hour, Duration: 10 * time.Minute, Clients: roundClients(),
		Select: 2, MinBattery: 0.3, Forecasts: map[string]Series{"FR": fr, "GB": gb}}
	d, err := PlanRound(req)
	if err != nil {
		t.Fatal(err)
	}
	if d.Open || !d.Start.Equal(hour(12)) || d.Intensity != 60 || d.AtNow != 105 {
		t.Fatalf("want to wait for 12:00 at 60: %+v", d)
	}
	// at 12:00 it opens
	req.Now = hour(12)
	if d, _ = PlanRound(req); !d.Open || d.Intensity != 60 {
		t.Fatalf("at 12:00: %+v", d)
	}
	// the window is over: open now whatever the forecast
	req.Now, req.Ready = now, hour(7)
	if d, _ = PlanRound(req); !d.Open {
		t.Fatalf("window over: %+v", d)
	}
	// the deadline leaves no room for the remaining rounds: open now
	req.Ready, req.Deadline, req.Remaining = now, now.Add(time.Hour), 6
	if d, _ = PlanRound(req); !d.Open || !d.Latest.Equal(now) {
		t.Fatalf("deadline: %+v", d)
	}
	// with room for 6 rounds of 10 min before a deadline at 13:05, it waits
	req.Deadline = hour(13).Add(5 * time.Minute)
	if d, _ = PlanRound(req); d.Open || !d.Latest.Equal(hour(12).Add(5*time.Minute)) {
		t.Fatalf("deadline with room: %+v", d)
	}
}

func TestPlanRoundRefusesBadRequests(t *testing.T) {
	for _, r := range []RoundRequest{
		{Select: 0, Duration: time.Minute},
		{Select: 1, Duration: 0},
		{Select: 1, Duration: time.Minute, Window: -time.Minute},
		{Select: 1, Duration: time.Minute, MinBattery: 1.5},
		{Select: 1, Duration: time.Minute, MinBattery: math.NaN()},
	} {
		if _, err := PlanRound(r); err == nil {
			t.Errorf("%+v accepted", r)
		}
	}
}
