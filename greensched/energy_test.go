package greensched

import (
	"errors"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestProfilePower(t *testing.T) {
	p := Profile{Name: "pi4", IdleW: 2.7, MaxW: 6.4, BatteryWh: 0}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ u, w float64 }{{0, 2.7}, {1, 6.4}, {0.5, 4.55}} {
		w, err := p.Power(c.u)
		if err != nil || math.Abs(w-c.w) > 1e-12 {
			t.Errorf("Power(%v) = %v, %v; want %v", c.u, w, err, c.w)
		}
	}
	e, err := p.EnergyWh(0.5, 90*time.Minute)
	if err != nil || math.Abs(e-4.55*1.5) > 1e-12 {
		t.Errorf("EnergyWh = %v, %v", e, err)
	}
	for _, u := range []float64{-0.1, 1.1, math.NaN()} {
		if _, err := p.Power(u); err == nil || !strings.Contains(err.Error(), "utilisation") {
			t.Errorf("Power(%v): err %v", u, err)
		}
	}
	if err := (Profile{Name: "x", IdleW: 5, MaxW: 3}).Validate(); err == nil {
		t.Error("idle above max accepted")
	}
	if err := (Profile{Name: "x", IdleW: math.NaN(), MaxW: 3}).Validate(); err == nil {
		t.Error("NaN idle accepted")
	}
}

func TestReadPowerSupply(t *testing.T) {
	root := func(name string) string { return filepath.Join("testdata", "sysfs", name) }
	for _, c := range []struct {
		tree string
		want Battery
	}{
		{"laptop", Battery{Present: true, Level: 0.42, Charging: false, Source: "sysfs"}},
		{"laptop-charging", Battery{Present: true, Level: 0.87, Charging: true, Source: "sysfs"}},
		{"energy", Battery{Present: true, Level: 0.75, Charging: false, Source: "sysfs"}},
		{"board-mains", Battery{Present: false, Level: 1, Charging: true, Source: "sysfs"}},
	} {
		got, err := ReadPowerSupply(root(c.tree))
		if err != nil || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v", c.tree, got, err, c.want)
		}
	}
	for _, tree := range []string{"board-none", "no-such-tree"} {
		if _, err := ReadPowerSupply(root(tree)); !errors.Is(err, ErrNoPowerSupply) {
			t.Errorf("%s: err %v, want ErrNoPowerSupply", tree, err)
		}
	}
	if _, err := ReadPowerSupply(root("bad")); err == nil || !strings.Contains(err.Error(), `BAT0: capacity "lots"`) {
		t.Errorf("bad: err %v", err)
	}

	cfg, err := BatteryFromConfig(true, 0.3, false)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := BatteryState(root("board-none"), cfg); err != nil || got != cfg {
		t.Errorf("fallback: %+v, %v", got, err)
	}
	if got, err := BatteryState(root("laptop"), cfg); err != nil || got.Source != "sysfs" || got.Level != 0.42 {
		t.Errorf("sysfs over config: %+v, %v", got, err)
	}
	if _, err := BatteryState(root("bad"), cfg); err == nil {
		t.Error("malformed sysfs fell back silently")
	}
	if _, err := BatteryFromConfig(true, 1.5, false); err == nil {
		t.Error("level 1.5 accepted")
	}
}

func TestBatteryCanRun(t *testing.T) {
	p := Profile{Name: "phone", IdleW: 1, MaxW: 5, BatteryWh: 10}
	low := Battery{Present: true, Level: 0.35}
	if !low.CanRun(p, 0.4, 0.3) { // 0.35 - 0.04 = 0.31
		t.Error("0.31 after the job should pass a 0.3 minimum")
	}
	if low.CanRun(p, 0.6, 0.3) { // 0.29
		t.Error("0.29 after the job should fail a 0.3 minimum")
	}
	low.Charging = true
	if !low.CanRun(p, 5, 0.3) {
		t.Error("a charging device may run")
	}
	if !(Battery{Present: false, Level: 1}).CanRun(p, 100, 0.9) {
		t.Error("mains device may run")
	}
}
