package uplink

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// Config is the `control_plane:` section of the agent's YAML config. Zero
// fields take the defaults of DefaultConfig (Validate fills them in).
type Config struct {
	// URL is https://host:port of the control plane; "" means no uplink:
	// the agent runs standalone.
	URL string `yaml:"url"`
	// CAFile is the control plane CA (edgectl controlplane writes
	// DIR/ca.pem), used to verify the server while enrolling. Required
	// with URL until the agent is enrolled; afterwards the CA bundle
	// stored at enrollment is used.
	CAFile string `yaml:"ca_file"`
	// EnrollmentToken is a single-use token (edgectl tokens create), used
	// only when no identity is stored.
	EnrollmentToken string `yaml:"enrollment_token"`
	// EnrollmentTokenFile holds the token instead (trailing space
	// ignored). A refused token is not retried until the file changes.
	EnrollmentTokenFile string `yaml:"enrollment_token_file"`
	// HeartbeatInterval is how often the agent reports itself; 0 means
	// what the server asks for (its default is 10s).
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// RequestTimeout bounds every request, in real time. Default 10s.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// KeyWatchWait is how long the control plane may hold the agent's
	// key request (GET /v1/agent/keys?wait=) when nothing is new: the
	// key watch loop asks again as soon as it is answered, so new key
	// versions arrive within a round trip of their creation. That
	// request is bounded by KeyWatchWait + RequestTimeout; a proxy in
	// between must allow it. Default 55s, at most 5m.
	KeyWatchWait time.Duration `yaml:"key_watch_wait"`
	// BackoffMin and BackoffMax bound the wait after a failure: attempt
	// n waits a uniformly random time between BackoffMin and
	// min(BackoffMax, BackoffMin × 2^(n-1)). Defaults 1s and 2m.
	BackoffMin time.Duration `yaml:"backoff_min"`
	BackoffMax time.Duration `yaml:"backoff_max"`
	// BreakerFailures is how many consecutive failed requests (network
	// errors, timeouts, 5xx) open the circuit breaker. Default 5.
	BreakerFailures int `yaml:"breaker_failures"`
	// BreakerCooldown is how long the breaker stays open before it lets
	// one probe request through (half-open). Default 30s.
	BreakerCooldown time.Duration `yaml:"breaker_cooldown"`
	// UploadBatches is how many outbox batches are claimed per upload
	// round. Default 16.
	UploadBatches int `yaml:"upload_batches"`
	// UploadInterval is how often the outbox is polled at least; every
	// commit wakes the uploader too. Default 5s.
	UploadInterval time.Duration `yaml:"upload_interval"`
	// UploadLinger is how long a commit waits after the last upload
	// round before it starts the next one, so that the group commits of
	// that time go up together (the outbox hands them out in batches of
	// up to 1,000 readings): at 5,000 messages/s of three metrics, about
	// 150 commits a second become about 15 requests. A backlog is sent
	// without waiting. 0 starts a round at every commit. Default 1s (in
	// DefaultConfig; a zero Config has none).
	UploadLinger time.Duration `yaml:"upload_linger"`
	// SealTelemetry seals every upload under the key "telemetry" that the
	// control plane sends the agent (a pqcrypto envelope bound to the
	// agent id and batch_seq). Until the agent holds that key, uploads
	// wait in the outbox: nothing is sent in the clear. Default true
	// (nil means true); false sends plain gzip JSON, for a control plane
	// that does not seal or an agent enrolled without an X-Wing key.
	SealTelemetry *bool `yaml:"seal_telemetry"`
}

// Seals reports whether uploads are sealed (SealTelemetry, default true).
func (c *Config) Seals() bool { return c.SealTelemetry == nil || *c.SealTelemetry }

// DefaultKeyWatchWait is the default of KeyWatchWait: below the 60 s
// idle timeouts common in proxies and load balancers.
const DefaultKeyWatchWait = 55 * time.Second

// DefaultConfig returns the defaults: no URL (standalone), heartbeats at
// the server's interval, 10s request timeout, key requests held up to 55s, back-off 1s..2m, breaker
// opening after 5 failures for 30s, 16 batches per upload round, outbox
// polled every 5s, uploads sealed.
func DefaultConfig() Config {
	seal := true
	return Config{
		RequestTimeout:  10 * time.Second,
		KeyWatchWait:    DefaultKeyWatchWait,
		BackoffMin:      time.Second,
		BackoffMax:      2 * time.Minute,
		BreakerFailures: 5,
		BreakerCooldown: 30 * time.Second,
		UploadBatches:   16,
		UploadInterval:  5 * time.Second,
		UploadLinger:    time.Second,
		SealTelemetry:   &seal,
	}
}

// Enabled reports whether an uplink is configured (URL is set).
func (c *Config) Enabled() bool { return strings.TrimSpace(c.URL) != "" }

// Validate fills zero fields with their defaults and checks every field.
// Its errors wrap ErrInvalidConfig and name the field by its YAML name.
func (c *Config) Validate() error {
	d := DefaultConfig()
	if c.RequestTimeout == 0 {
		c.RequestTimeout = d.RequestTimeout
	}
	if c.KeyWatchWait == 0 {
		c.KeyWatchWait = d.KeyWatchWait
	}
	if c.BackoffMin == 0 {
		c.BackoffMin = d.BackoffMin
	}
	if c.BackoffMax == 0 {
		c.BackoffMax = max(d.BackoffMax, c.BackoffMin)
	}
	if c.BreakerFailures == 0 {
		c.BreakerFailures = d.BreakerFailures
	}
	if c.BreakerCooldown == 0 {
		c.BreakerCooldown = d.BreakerCooldown
	}
	if c.UploadBatches == 0 {
		c.UploadBatches = d.UploadBatches
	}
	if c.UploadInterval == 0 {
		c.UploadInterval = d.UploadInterval
	}
	if c.SealTelemetry == nil {
		c.SealTelemetry = d.SealTelemetry
	}
	c.URL = strings.TrimSpace(c.URL)
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
	if c.URL != "" {
		u, err := url.Parse(c.URL)
		switch {
		case err != nil:
			return bad("url", "%q: %v", c.URL, err)
		case u.Scheme != "https":
			return bad("url", "%q must be https://host[:port]", c.URL)
		case u.Host == "" || u.Hostname() == "":
			return bad("url", "%q has no host", c.URL)
		case u.User != nil || u.RawQuery != "" || u.Fragment != "":
			return bad("url", "%q must not carry user info, a query or a fragment", c.URL)
		}
	}
	if c.EnrollmentToken != "" && c.EnrollmentTokenFile != "" {
		return bad("enrollment_token", "set either enrollment_token or enrollment_token_file, not both")
	}
	if strings.TrimSpace(c.EnrollmentToken) != c.EnrollmentToken {
		return bad("enrollment_token", "has leading or trailing white space")
	}
	durs := []struct {
		name     string
		v        time.Duration
		min, max time.Duration
	}{
		{"request_timeout", c.RequestTimeout, 10 * time.Millisecond, 10 * time.Minute},
		{"key_watch_wait", c.KeyWatchWait, time.Second, cpapi.MaxKeyWatchWait},
		{"backoff_min", c.BackoffMin, time.Millisecond, time.Hour},
		{"backoff_max", c.BackoffMax, time.Millisecond, 24 * time.Hour},
		{"breaker_cooldown", c.BreakerCooldown, time.Millisecond, 24 * time.Hour},
		{"upload_interval", c.UploadInterval, time.Millisecond, 24 * time.Hour},
		{"upload_linger", c.UploadLinger, 0, time.Hour},
	}
	if c.HeartbeatInterval != 0 {
		durs = append(durs, struct {
			name     string
			v        time.Duration
			min, max time.Duration
		}{"heartbeat_interval", c.HeartbeatInterval, 10 * time.Millisecond, 24 * time.Hour})
	}
	for _, f := range durs {
		if f.v < f.min || f.v > f.max {
			return bad(f.name, "%s outside %s..%s", f.v, f.min, f.max)
		}
	}
	if c.BackoffMax < c.BackoffMin {
		return bad("backoff_max", "%s is below backoff_min %s", c.BackoffMax, c.BackoffMin)
	}
	if c.BreakerFailures < 1 || c.BreakerFailures > 10000 {
		return bad("breaker_failures", "%d outside 1..10000", c.BreakerFailures)
	}
	if c.UploadBatches < 1 || c.UploadBatches > 1000 {
		return bad("upload_batches", "%d outside 1..1000", c.UploadBatches)
	}
	return nil
}
