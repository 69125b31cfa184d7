package provider

import (
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/internal/testutil"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"
)

func TestConfigYAMLAndDefaults(t *testing.T) {
	var c Config
	in := "kind: watttime\nzone: CAISO_NORTH\nusername_file: /etc/wt.user\npassword_file: /etc/wt.pass\ntimeout: 3s\n"
	if err := yaml.Unmarshal([]byte(in), &c); err != nil {
		t.Fatal(err)
	}
	c = c.WithDefaults()
	if c.Timeout != 3*time.Second || c.CacheTTL != DefaultCacheTTL || c.BaseURL != DefaultWattTimeURL {
		t.Fatalf("config %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	em := Config{Kind: KindElectricityMaps, Zone: "DE", TokenFile: "x"}.WithDefaults()
	if em.BaseURL != DefaultElectricityMapsURL || em.Timeout != DefaultTimeout {
		t.Fatalf("electricity maps defaults %+v", em)
	}
	if ca := (Config{Kind: KindCarbonAware}).WithDefaults(); ca.BaseURL != "" {
		t.Fatalf("carbon aware got a default base URL %q", ca.BaseURL)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := map[string]Config{
		KindTrace:           {Kind: KindTrace, Zone: "DE", TraceFile: "de.csv"},
		KindCarbonAware:     {Kind: KindCarbonAware, Zone: "eastus", BaseURL: "http://casdk:8080", WindowSize: 30 * time.Minute},
		KindElectricityMaps: {Kind: KindElectricityMaps, Zone: "DE", TokenFile: "t"},
		KindWattTime:        {Kind: KindWattTime, Zone: "CAISO_NORTH", UsernameFile: "u", PasswordFile: "p"},
	}
	for k, c := range ok {
		if err := c.WithDefaults().Validate(); err != nil {
			t.Errorf("%s: %v", k, err)
		}
	}
	for _, c := range []struct {
		name string
		edit func(*Config)
		base string
		want string
	}{
		{"no kind", func(c *Config) { c.Kind = "" }, KindTrace, "kind is required"},
		{"unknown kind", func(c *Config) { c.Kind = "co2signal" }, KindTrace, `kind "co2signal"`},
		{"no zone", func(c *Config) { c.Zone = " " }, KindTrace, "zone is required"},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, KindTrace, "timeout"},
		{"long timeout", func(c *Config) { c.Timeout = time.Hour }, KindTrace, "timeout"},
		{"window elsewhere", func(c *Config) { c.WindowSize = time.Minute }, KindWattTime, "window_size is for kind carbonaware"},
		{"window seconds", func(c *Config) { c.WindowSize = 90 * time.Second }, KindCarbonAware, "whole minutes"},
		{"no trace file", func(c *Config) { c.TraceFile = "" }, KindTrace, "trace_file is required"},
		{"no base url", func(c *Config) { c.BaseURL = "" }, KindCarbonAware, "base_url is required"},
		{"bad base url", func(c *Config) { c.BaseURL = "ftp://x" }, KindCarbonAware, `base_url "ftp://x"`},
		{"no host", func(c *Config) { c.BaseURL = "http://" }, KindElectricityMaps, "base_url"},
		{"no token", func(c *Config) { c.TokenFile = "" }, KindElectricityMaps, "token_file is required"},
		{"no credentials", func(c *Config) { c.UsernameFile, c.PasswordFile = "", "" }, KindWattTime, "username_file is required"},
	} {
		cfg := ok[c.base]
		c.edit(&cfg)
		err := cfg.WithDefaults().Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "provider: config: ") {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	_, err := New(Config{Kind: KindWattTime, Zone: "X", UsernameFile: "u", PasswordFile: "p"}.WithDefaults(), Options{})
	if err == nil || !strings.Contains(err.Error(), "username_file") {
		t.Fatalf("missing credential file: %v", err)
	}
}

// TestSecretsStayOut: a credential file's content never shows in errors.
func TestSecretsStayOut(t *testing.T) {
	empty := secretFile(t, "empty.token", " \n")
	_, err := New(Config{Kind: KindElectricityMaps, Zone: "DE", TokenFile: empty}, Options{})
	if err == nil || !strings.Contains(err.Error(), "token_file") || !strings.Contains(err.Error(), "is empty") {
		t.Fatalf("empty token file: %v", err)
	}
	s := specs()[1]
	srv := newFakeServer(t, s.routes, s.empty)
	srv.setMode(mode403)
	e := newEnv(t, s.config(t, srv.srv.URL))
	_, err = e.p.Current(t.Context(), "DE")
	if err == nil || strings.Contains(err.Error(), "em-secret-token") {
		t.Fatalf("error %v", err)
	}
}

// TestMetricsRegistered: the counters appear on the registry given, once.
func TestMetricsRegistered(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Fatal("registered twice on one registry")
	}
	s := specs()[1]
	srv := newFakeServer(t, s.routes, s.empty)
	srv.setMode(mode429)
	p, err := New(s.config(t, srv.srv.URL), Options{Metrics: m, Clock: clock.NewManual(t0)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Current(t.Context(), "DE"); err == nil {
		t.Fatal("no error")
	}
	if got := testutil.MetricSum(t, reg, "edgefleet_carbon_provider_failures_total", ReasonRateLimited); got != 1 {
		t.Fatalf("failures{rate_limited} = %v", got)
	}
	if got := testutil.MetricSum(t, reg, "edgefleet_carbon_provider_requests_total", "current"); got != 1 {
		t.Fatalf("requests{current} = %v", got)
	}
}
