package provider

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/greensched"
)

// Default base URLs of the online providers (the Carbon Aware SDK has
// none: it is deployed by its user).
const (
	DefaultElectricityMapsURL = "https://api.electricitymap.org/v3"
	DefaultWattTimeURL        = "https://api.watttime.org"
)

// Defaults of Config.
const (
	DefaultTimeout  = 10 * time.Second
	DefaultCacheTTL = 5 * time.Minute
	maxTimeout      = 5 * time.Minute
)

// Config configures one carbon provider; it is meant to sit in the agent's
// and the control plane's YAML config, for example:
//
//	carbon:
//	  kind: electricitymaps          # trace, carbonaware, electricitymaps or watttime
//	  zone: DE                       # the provider's zone name
//	  token_file: /etc/edgefleet/electricitymaps.token
//	  timeout: 10s
//	  cache_ttl: 5m
type Config struct {
	// Kind is the provider: "trace" (a CSV trace file), "carbonaware"
	// (Carbon Aware SDK Web API), "electricitymaps" (Electricity Maps API
	// v3) or "watttime" (WattTime API v3). Required.
	Kind string `yaml:"kind" json:"kind"`
	// Zone is the grid zone in the provider's naming: an Electricity Maps
	// zone ("DE"), a WattTime region ("CAISO_NORTH"), a Carbon Aware SDK
	// location ("eastus"), or the name given to the trace. Required.
	Zone string `yaml:"zone" json:"zone"`
	// BaseURL is the provider's API root. Default: for electricitymaps
	// https://api.electricitymap.org/v3, for watttime
	// https://api.watttime.org; required for carbonaware; unused for trace.
	BaseURL string `yaml:"base_url" json:"base_url,omitempty"`
	// TraceFile is the CSV trace ("Time,Carbon Intensity", times in UTC)
	// of kind trace. Required for trace.
	TraceFile string `yaml:"trace_file" json:"trace_file,omitempty"`
	// TokenFile holds the Electricity Maps API token (sent as the
	// auth-token header). Required for electricitymaps.
	TokenFile string `yaml:"token_file" json:"token_file,omitempty"`
	// UsernameFile and PasswordFile hold the WattTime account's user name
	// and password (for /login). Required for watttime.
	UsernameFile string `yaml:"username_file" json:"username_file,omitempty"`
	PasswordFile string `yaml:"password_file" json:"password_file,omitempty"`
	// Timeout bounds each HTTP request (up to 5m). Default 10s.
	Timeout time.Duration `yaml:"timeout" json:"timeout,omitempty"`
	// CacheTTL is how long an answer is reused per zone before the
	// provider is asked again; 0 takes the default, a negative value
	// turns caching off. Default 5m.
	CacheTTL time.Duration `yaml:"cache_ttl" json:"cache_ttl,omitempty"`
	// WindowSize is the Carbon Aware SDK's windowSize (whole minutes):
	// the forecast points become rolling averages over it and
	// optimalDataPoints the best window starts. 0 leaves it to the SDK
	// (one data point). carbonaware only.
	WindowSize time.Duration `yaml:"window_size" json:"window_size,omitempty"`
}

// WithDefaults returns c with its zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	if c.BaseURL == "" {
		switch c.Kind {
		case KindElectricityMaps:
			c.BaseURL = DefaultElectricityMapsURL
		case KindWattTime:
			c.BaseURL = DefaultWattTimeURL
		}
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.CacheTTL == 0 {
		c.CacheTTL = DefaultCacheTTL
	}
	return c
}

// Validate checks c (after WithDefaults) and names the first wrong field.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("provider: config: "+format, args...)
	}
	switch c.Kind {
	case KindTrace, KindCarbonAware, KindElectricityMaps, KindWattTime:
	case "":
		return bad("kind is required (trace, carbonaware, electricitymaps or watttime)")
	default:
		return bad("kind %q: want trace, carbonaware, electricitymaps or watttime", c.Kind)
	}
	if strings.TrimSpace(c.Zone) == "" {
		return bad("zone is required")
	}
	if c.Timeout <= 0 || c.Timeout > maxTimeout {
		return bad("timeout %v: want more than 0 and at most %v", c.Timeout, maxTimeout)
	}
	if c.WindowSize != 0 && c.Kind != KindCarbonAware {
		return bad("window_size is for kind carbonaware only")
	}
	if c.WindowSize < 0 || c.WindowSize%time.Minute != 0 {
		return bad("window_size %v: want whole minutes", c.WindowSize)
	}
	need := func(field, v string) error {
		if v == "" {
			return bad("%s is required for kind %s", field, c.Kind)
		}
		return nil
	}
	var errs []error
	switch c.Kind {
	case KindTrace:
		errs = append(errs, need("trace_file", c.TraceFile))
	case KindCarbonAware:
		errs = append(errs, need("base_url", c.BaseURL))
	case KindElectricityMaps:
		errs = append(errs, need("token_file", c.TokenFile))
	case KindWattTime:
		errs = append(errs, need("username_file", c.UsernameFile), need("password_file", c.PasswordFile))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if c.Kind != KindTrace {
		u, err := url.Parse(c.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return bad("base_url %q: want an http or https URL", c.BaseURL)
		}
	}
	return nil
}

// Options are the effects a provider is given; nil fields take the
// production default.
type Options struct {
	// Clock for cache ages, token ages and a trace's "now". Default clock.Real.
	Clock clock.Clock
	// HTTPClient sends the requests. Default a new http.Client (timeouts
	// come from Config.Timeout).
	HTTPClient *http.Client
	// Logger receives the warnings of fallbacks. Default slog.Default().
	Logger *slog.Logger
	// Metrics counts requests, failures and fallbacks. Default: counters
	// registered nowhere.
	Metrics *Metrics
}

func (o Options) withDefaults() (Options, error) {
	o.Clock = clock.Or(o.Clock)
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Metrics == nil {
		m, err := NewMetrics(nil)
		if err != nil {
			return o, err
		}
		o.Metrics = m
	}
	return o, nil
}

// New returns the provider cfg describes (defaults applied, validated),
// with caching and fallback. It reads the trace or the credential files
// now.
func New(cfg Config, opts Options) (Provider, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	g := httpGetter{client: opts.HTTPClient, timeout: cfg.Timeout}
	var src source
	switch cfg.Kind {
	case KindTrace:
		s, err := ReadTraceFile(cfg.TraceFile, cfg.Zone)
		if err != nil {
			return nil, err
		}
		src = &trace{series: map[string]greensched.Series{cfg.Zone: s}}
	case KindCarbonAware:
		src = &carbonAware{http: g, base: cfg.BaseURL, windowSize: cfg.WindowSize}
	case KindElectricityMaps:
		tok, err := readSecret("token_file", cfg.TokenFile)
		if err != nil {
			return nil, err
		}
		src = &electricityMaps{http: g, base: cfg.BaseURL, token: tok}
	case KindWattTime:
		user, err := readSecret("username_file", cfg.UsernameFile)
		if err != nil {
			return nil, err
		}
		pass, err := readSecret("password_file", cfg.PasswordFile)
		if err != nil {
			return nil, err
		}
		src = &wattTime{http: g, base: cfg.BaseURL, username: user, password: pass, clk: opts.Clock}
	}
	return newGuard(src, opts.Clock, cfg.CacheTTL, opts.Logger, opts.Metrics), nil
}

// NewTrace returns a trace provider serving the given series (one per
// zone, named by Series.Zone) at opts.Clock's time, with caching ttl
// (0 or negative: none).
func NewTrace(opts Options, ttl time.Duration, series ...greensched.Series) (Provider, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	tr := &trace{series: map[string]greensched.Series{}}
	for _, s := range series {
		if s.Zone == "" || len(s.Points) == 0 {
			return nil, fmt.Errorf("provider: trace: a series needs a zone and points (zone %q, %d points)", s.Zone, len(s.Points))
		}
		if _, dup := tr.series[s.Zone]; dup {
			return nil, fmt.Errorf("provider: trace: two series for zone %q", s.Zone)
		}
		if err := s.Validate(); err != nil {
			return nil, fmt.Errorf("provider: trace: %w", err)
		}
		tr.series[s.Zone] = s
	}
	return newGuard(tr, opts.Clock, ttl, opts.Logger, opts.Metrics), nil
}

// readSecret reads a credential file; its content never appears in errors.
func readSecret(field, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("provider: config: %s: %w", field, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("provider: config: %s %s is empty", field, path)
	}
	return s, nil
}
