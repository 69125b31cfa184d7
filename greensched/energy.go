package greensched

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Profile is a device's power model: power = IdleW + (MaxW − IdleW) ×
// utilisation (watts), and its battery size (0: no battery).
type Profile struct {
	Name      string  `yaml:"name" json:"name"`
	IdleW     float64 `yaml:"idle_w" json:"idle_w"`
	MaxW      float64 `yaml:"max_w" json:"max_w"`
	BatteryWh float64 `yaml:"battery_wh" json:"battery_wh"`
}

// Validate checks 0 <= IdleW <= MaxW and BatteryWh >= 0, all finite.
func (p Profile) Validate() error {
	for _, v := range []float64{p.IdleW, p.MaxW, p.BatteryWh} {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			return fmt.Errorf("greensched: profile %q: idle_w, max_w and battery_wh must be finite and >= 0", p.Name)
		}
	}
	if p.IdleW > p.MaxW {
		return fmt.Errorf("greensched: profile %q: idle_w %v exceeds max_w %v", p.Name, p.IdleW, p.MaxW)
	}
	return nil
}

// Power is the draw in watts at utilisation u (0..1).
func (p Profile) Power(u float64) (float64, error) {
	if math.IsNaN(u) || u < 0 || u > 1 {
		return 0, fmt.Errorf("greensched: profile %q: utilisation %v outside [0, 1]", p.Name, u)
	}
	return p.IdleW + (p.MaxW-p.IdleW)*u, nil
}

// EnergyWh is the energy in watt-hours of running at utilisation u for d.
func (p Profile) EnergyWh(u float64, d time.Duration) (float64, error) {
	w, err := p.Power(u)
	if err != nil {
		return 0, err
	}
	return w * d.Hours(), nil
}

// Battery is a device's battery state.
type Battery struct {
	// Present is false for a device without a battery (mains powered).
	Present bool `json:"present"`
	// Level is the charge, 0..1 (1 when there is no battery).
	Level float64 `json:"level"`
	// Charging is true when the device is on external power: a battery
	// reporting Charging or Full, or a mains/USB supply online.
	Charging bool `json:"charging"`
	// Source says where the state came from: "sysfs" or "config".
	Source string `json:"source"`
}

// ErrNoPowerSupply is returned by ReadPowerSupply when the sysfs tree has
// no battery and no mains supply to report on.
var ErrNoPowerSupply = errors.New("greensched: no power supply in sysfs")

// ReadPowerSupply reads the battery state from a Linux sysfs tree rooted at
// root ("/sys" on a device; a fixture tree in tests): every entry of
// class/power_supply with type "Battery" (level from capacity, in percent,
// else energy_now/energy_full or charge_now/charge_full; status) and with
// type "Mains" or "USB" (online). Several batteries are averaged. Without
// a battery but with a mains supply it reports a device without battery;
// without either it returns ErrNoPowerSupply (then use BatteryFromConfig).
func ReadPowerSupply(root string) (Battery, error) {
	dir := filepath.Join(root, "class", "power_supply")
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return Battery{}, ErrNoPowerSupply
	}
	if err != nil {
		return Battery{}, fmt.Errorf("greensched: power supply: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	var (
		levels     []float64
		mains      bool
		mainsOn    bool
		batCharges bool
	)
	for _, name := range names {
		d := filepath.Join(dir, name)
		typ, err := sysfsString(d, "type")
		if err != nil {
			continue // not a supply directory
		}
		switch typ {
		case "Battery":
			if present, err := sysfsString(d, "present"); err == nil && present == "0" {
				continue
			}
			lvl, err := batteryLevel(d)
			if err != nil {
				return Battery{}, fmt.Errorf("greensched: power supply %s: %w", name, err)
			}
			levels = append(levels, lvl)
			if st, err := sysfsString(d, "status"); err == nil && (st == "Charging" || st == "Full") {
				batCharges = true
			}
		case "Mains", "USB", "USB_C", "USB_PD":
			mains = true
			if on, err := sysfsString(d, "online"); err == nil && on == "1" {
				mainsOn = true
			}
		}
	}
	switch {
	case len(levels) > 0:
		var sum float64
		for _, l := range levels {
			sum += l
		}
		return Battery{Present: true, Level: sum / float64(len(levels)), Charging: batCharges || mainsOn, Source: "sysfs"}, nil
	case mains:
		return Battery{Present: false, Level: 1, Charging: mainsOn, Source: "sysfs"}, nil
	}
	return Battery{}, ErrNoPowerSupply
}

func batteryLevel(d string) (float64, error) {
	if s, err := sysfsString(d, "capacity"); err == nil {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || v < 0 || v > 100 {
			return 0, fmt.Errorf("capacity %q is not a percentage", clip(s))
		}
		return v / 100, nil
	}
	for _, pair := range [][2]string{{"energy_now", "energy_full"}, {"charge_now", "charge_full"}} {
		now, err1 := sysfsString(d, pair[0])
		full, err2 := sysfsString(d, pair[1])
		if err1 != nil || err2 != nil {
			continue
		}
		n, err1 := strconv.ParseFloat(now, 64)
		f, err2 := strconv.ParseFloat(full, 64)
		if err1 != nil || err2 != nil || n < 0 || f <= 0 {
			return 0, fmt.Errorf("%s %q / %s %q is not a charge level", pair[0], clip(now), pair[1], clip(full))
		}
		return min(n/f, 1), nil
	}
	return 0, errors.New("battery without capacity, energy_now/energy_full or charge_now/charge_full")
}

func sysfsString(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// BatteryFromConfig is the battery state stated in configuration, for
// devices whose sysfs does not report one. level is 0..1; without a
// battery (present false) the level is 1.
func BatteryFromConfig(present bool, level float64, charging bool) (Battery, error) {
	if !present {
		return Battery{Present: false, Level: 1, Charging: charging, Source: "config"}, nil
	}
	if math.IsNaN(level) || level < 0 || level > 1 {
		return Battery{}, fmt.Errorf("greensched: configured battery level %v outside [0, 1]", level)
	}
	return Battery{Present: true, Level: level, Charging: charging, Source: "config"}, nil
}

// CanRun reports whether a job of energyWh may run on a device with
// profile p and battery b when the battery must stay at minLevel (0..1) or
// above: always when there is no battery or it is charging; otherwise the
// level after the job (level − energyWh / BatteryWh) must be >= minLevel.
func (b Battery) CanRun(p Profile, energyWh, minLevel float64) bool {
	if !b.Present || b.Charging {
		return true
	}
	if p.BatteryWh <= 0 {
		return b.Level >= minLevel
	}
	return b.Level-energyWh/p.BatteryWh >= minLevel
}

// BatteryState reads the battery from the sysfs tree at root and falls
// back to configured (see BatteryFromConfig) when sysfs reports no power
// supply (no such tree, or no battery and no mains entry). A malformed
// sysfs entry is an error, not a silent fallback.
func BatteryState(root string, configured Battery) (Battery, error) {
	b, err := ReadPowerSupply(root)
	if errors.Is(err, ErrNoPowerSupply) {
		return configured, nil
	}
	return b, err
}
