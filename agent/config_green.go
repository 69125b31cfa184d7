package agent

import (
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/greensched"
	"github.com/edgefleet/edgefleet/greensched/provider"
)

// GreenConfig configures energy- and carbon-aware scheduling of the
// agent's deferrable work (package agent/deferred): local training jobs
// that declare a window (start_by) and state compaction run at the
// greenest start of the zone's forecast within their window, battery
// permitting; their energy and emissions are accounted, and the zone, the
// intensity now and the battery are reported in heartbeats.
type GreenConfig struct {
	// Zone is the grid zone the device draws power from (e.g. "DE"),
	// reported to the control plane, which picks federated-learning
	// clients in the cleanest zones. Default "" (unknown).
	Zone string `yaml:"zone"`
	// Carbon is the carbon-intensity provider (greensched/provider's
	// config: kind trace, carbonaware, electricitymaps or watttime). An
	// empty kind means none: deferrable work runs at arrival and only its
	// energy is accounted. carbon.zone defaults to zone. Default none.
	Carbon provider.Config `yaml:"carbon"`
	// Profile is the device's power model: power = idle_w + (max_w −
	// idle_w) × utilisation; battery_wh is the battery's size (0: none or
	// unknown). Default idle 2 W, max 6 W (a small ARM board), no battery.
	Profile greensched.Profile `yaml:"profile"`
	// Battery says where the battery state comes from.
	Battery BatteryConfig `yaml:"battery"`
	// MinBattery is the battery level (0..1) deferrable work must leave
	// unless the device is charging; work waits (until its latest start)
	// while it would go below. Default 0.2.
	MinBattery float64 `yaml:"min_battery"`
	// BatteryRecheck is how often work held by a low battery looks again.
	// Default 5m.
	BatteryRecheck time.Duration `yaml:"battery_recheck"`
	// CompactionWindow is how long a due compaction of the replicated
	// state may wait for a greener start (at most every
	// state.compaction_interval anyway); 0 compacts when due. Default 1h.
	CompactionWindow time.Duration `yaml:"compaction_window"`
	// TrainingDuration is the expected run time of a training job that
	// declares a window but no expected_duration. Default 10m.
	TrainingDuration time.Duration `yaml:"training_duration"`
	// UploadWindow is how long telemetry waiting in the outbox may wait
	// for a greener start before it is uploaded, in bulk (the readings
	// are durable and acknowledged to their devices meanwhile); 0 uploads
	// at once. Default 0.
	UploadWindow time.Duration `yaml:"upload_window"`
	// UpdateWindow is how long the install of models newly assigned by
	// the control plane may wait for a greener start (the models serving
	// keep serving); 0 installs at once. Default 0.
	UpdateWindow time.Duration `yaml:"update_window"`
	// UpdateDuration is the expected run time of a model update (fetch,
	// verify, load), for its energy estimate. Default 30s.
	UpdateDuration time.Duration `yaml:"update_duration"`
}

// BatteryConfig is where the battery state comes from: the Linux sysfs
// power-supply class under SysfsRoot when it reports one, else the values
// stated here.
type BatteryConfig struct {
	// SysfsRoot is the sysfs mount ("/sys"; class/power_supply under it);
	// "" skips sysfs. Default "/sys".
	SysfsRoot string `yaml:"sysfs_root"`
	// Present, Level (0..1) and Charging state the battery of a device
	// whose sysfs reports none. Default: no battery (mains powered).
	Present  bool    `yaml:"present"`
	Level    float64 `yaml:"level"`
	Charging bool    `yaml:"charging"`
}

func defaultGreenConfig() GreenConfig {
	return GreenConfig{
		Profile:          greensched.Profile{IdleW: 2, MaxW: 6},
		Battery:          BatteryConfig{SysfsRoot: "/sys", Level: 1},
		MinBattery:       0.2,
		BatteryRecheck:   5 * time.Minute,
		CompactionWindow: time.Hour,
		TrainingDuration: 10 * time.Minute,
		UpdateDuration:   30 * time.Second,
	}
}

// carbonEnabled reports whether a carbon provider is configured.
func (g *GreenConfig) carbonEnabled() bool { return g.Carbon.Kind != "" }

// providerConfig is the carbon provider's config with its zone defaulted
// and its defaults applied.
func (g *GreenConfig) providerConfig() provider.Config {
	c := g.Carbon
	if c.Zone == "" {
		c.Zone = g.Zone
	}
	return c.WithDefaults()
}

func (g *GreenConfig) validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("agent: green.%s: %s", field, fmt.Sprintf(format, args...))
	}
	if len(g.Zone) > 64 || strings.ContainsFunc(g.Zone, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return bad("zone", "%q: want up to 64 characters without spaces or control characters", g.Zone)
	}
	if g.carbonEnabled() {
		pc := g.providerConfig()
		if pc.Zone == "" {
			return bad("carbon.zone", "required (or set green.zone)")
		}
		if err := pc.Validate(); err != nil {
			return bad("carbon", "%s", strings.TrimPrefix(err.Error(), "provider: config: "))
		}
	}
	if err := g.Profile.Validate(); err != nil {
		return bad("profile", "%s", strings.TrimPrefix(err.Error(), "greensched: "))
	}
	if b := g.Battery; b.Present && (math.IsNaN(b.Level) || b.Level < 0 || b.Level > 1) {
		return bad("battery.level", "%v (want 0..1)", b.Level)
	}
	switch {
	case math.IsNaN(g.MinBattery) || g.MinBattery < 0 || g.MinBattery > 1:
		return bad("min_battery", "%v (want 0..1)", g.MinBattery)
	case g.BatteryRecheck <= 0:
		return bad("battery_recheck", "%v (want a positive duration)", g.BatteryRecheck)
	case g.CompactionWindow < 0:
		return bad("compaction_window", "%v (want 0 or a positive duration)", g.CompactionWindow)
	case g.TrainingDuration <= 0:
		return bad("training_duration", "%v (want a positive duration)", g.TrainingDuration)
	case g.UploadWindow < 0:
		return bad("upload_window", "%v (want 0 or a positive duration)", g.UploadWindow)
	case g.UpdateWindow < 0:
		return bad("update_window", "%v (want 0 or a positive duration)", g.UpdateWindow)
	case g.UpdateDuration <= 0:
		return bad("update_duration", "%v (want a positive duration)", g.UpdateDuration)
	}
	return nil
}

// batteryState reads the battery (sysfs, else the configured state).
func (g *GreenConfig) batteryState() (greensched.Battery, error) {
	conf, err := greensched.BatteryFromConfig(g.Battery.Present, g.Battery.Level, g.Battery.Charging)
	if err != nil {
		return greensched.Battery{}, err
	}
	if g.Battery.SysfsRoot == "" {
		return conf, nil
	}
	return greensched.BatteryState(g.Battery.SysfsRoot, conf)
}
