package controlplane

import (
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/fedlearn/datasets"
)

// Config configures a Server. Zero values take the defaults documented on
// each field.
type Config struct {
	// DataDir holds the CA, the server certificate, the admin token and the
	// default SQLite database. Required; created (0700) if missing.
	DataDir string
	// Listen is the TCP address to serve on (default "127.0.0.1:8443";
	// port 0 picks a free port, see Server.Addr).
	Listen string
	// Hostnames are extra DNS names or IP addresses for the server
	// certificate, beside localhost, 127.0.0.1, ::1 and the Listen host.
	Hostnames []string
	// Store holds the server's state. Nil opens SQLite at
	// DataDir/controlplane.db with SQLite options below; a Store passed
	// in is not closed by Server.Close.
	Store Store
	// SQLite tunes the default store.
	SQLite SQLiteOptions
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
	// Registry receives the server's Prometheus metrics, which /metrics
	// serves (nil: a private registry).
	Registry *prometheus.Registry
	// Clock is the server's clock: timestamps, token expiry, agent
	// states, certificate validity, the key service and its rotation
	// schedule (nil: clock.Real()).
	Clock clock.Clock
	// Rand supplies token secrets, identifiers and serial numbers (nil:
	// crypto/rand.Reader).
	Rand io.Reader

	// HeartbeatInterval is how often agents are told to heartbeat
	// (default 10s).
	HeartbeatInterval time.Duration
	// StaleAfter: an agent silent this long is "stale" (default
	// 3 x HeartbeatInterval).
	StaleAfter time.Duration
	// OfflineAfter: an agent silent this long is "offline" (default
	// 10 x HeartbeatInterval).
	OfflineAfter time.Duration
	// ClientCertTTL is the validity of agent certificates (default 365
	// days).
	ClientCertTTL time.Duration
	// MaxEnrollmentTTL caps the TTL of enrollment tokens (default 30 days).
	MaxEnrollmentTTL time.Duration
	// EnrollRetryWindow: for this long after an enrollment token was used,
	// an enrollment with the same token and the same agent keys (the CSR's
	// key, X-Wing and ML-DSA keys) is answered again with the agent id and
	// certificate issued the first time, so an agent whose answer was lost
	// (a client-side timeout) can retry. Other keys are refused as for any
	// used token. Default 15 minutes.
	EnrollRetryWindow time.Duration
	// MaxBodyBytes caps every request body as sent, compressed or not
	// (default 1 MiB). Larger bodies get 413.
	MaxBodyBytes int64
	// MaxTelemetryBytes caps a decompressed telemetry batch (default
	// 16 MiB).
	MaxTelemetryBytes int64
	// MaxBatchReadings caps readings per telemetry batch (default 10,000).
	MaxBatchReadings int
	// MaxClockSkew: readings stamped later than now + MaxClockSkew are
	// refused (default 1h).
	MaxClockSkew time.Duration
	// IdleTimeout closes keep-alive connections idle this long (default
	// the larger of 3 x HeartbeatInterval and 2 minutes, so agents keep
	// their connection between heartbeats).
	IdleTimeout time.Duration
	// ShutdownTimeout bounds graceful shutdown in Close (default 10s).
	ShutdownTimeout time.Duration
	// Version is reported by /v1/server/status.
	Version string
	// Keys configures the key service (root key custody, rotation); see
	// KeyConfig.
	Keys KeyConfig
	// FL configures the federated-learning coordinator; see FLConfig.
	FL FLConfig
}

// FLConfig configures the federated-learning coordinator.
type FLConfig struct {
	// Tick is how often the round driver ticks the running jobs: opens
	// rounds, closes timed-out ones (default 1s).
	Tick time.Duration
	// DataDir holds the data sets a job may name as its evaluation set
	// (default: $EDGEFLEET_DATA, else ../shared/data).
	DataDir string
	// MaxUpdateBytes caps a sealed update's body (default 64 MiB).
	MaxUpdateBytes int64
	// Carbon gives zones' carbon forecasts to jobs with a carbon option
	// (fl_carbon.go); nil: such jobs rank clients by the intensities the
	// agents report and open rounds when ready.
	Carbon CarbonForecaster
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8443"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	c.Clock = clock.Or(c.Clock)
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = 10 * time.Second
	}
	if c.StaleAfter == 0 {
		c.StaleAfter = 3 * c.HeartbeatInterval
	}
	if c.OfflineAfter == 0 {
		c.OfflineAfter = 10 * c.HeartbeatInterval
	}
	if c.ClientCertTTL == 0 {
		c.ClientCertTTL = 365 * 24 * time.Hour
	}
	if c.MaxEnrollmentTTL == 0 {
		c.MaxEnrollmentTTL = 30 * 24 * time.Hour
	}
	if c.EnrollRetryWindow == 0 {
		c.EnrollRetryWindow = 15 * time.Minute
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.MaxTelemetryBytes == 0 {
		c.MaxTelemetryBytes = 16 << 20
	}
	if c.MaxBatchReadings == 0 {
		c.MaxBatchReadings = 10000
	}
	if c.MaxClockSkew == 0 {
		c.MaxClockSkew = time.Hour
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = max(3*c.HeartbeatInterval, 2*time.Minute)
	}
	if c.FL.Tick == 0 {
		c.FL.Tick = time.Second
	}
	if c.FL.DataDir == "" {
		c.FL.DataDir = datasets.Dir("", os.Getenv)
	}
	if c.FL.MaxUpdateBytes == 0 {
		c.FL.MaxUpdateBytes = 64 << 20
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	c.Keys.setDefaults()
}

func (c *Config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if c.DataDir == "" {
		return bad("DataDir is required")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return bad("Listen %q: %v", c.Listen, err)
	}
	switch {
	case c.HeartbeatInterval < 0:
		return bad("HeartbeatInterval %s is negative", c.HeartbeatInterval)
	case c.StaleAfter <= 0 || c.OfflineAfter <= 0:
		return bad("StaleAfter %s and OfflineAfter %s must be positive", c.StaleAfter, c.OfflineAfter)
	case c.StaleAfter >= c.OfflineAfter:
		return bad("StaleAfter %s must be shorter than OfflineAfter %s", c.StaleAfter, c.OfflineAfter)
	case c.ClientCertTTL < time.Hour:
		return bad("ClientCertTTL %s is shorter than 1h", c.ClientCertTTL)
	case c.MaxEnrollmentTTL <= 0:
		return bad("MaxEnrollmentTTL %s must be positive", c.MaxEnrollmentTTL)
	case c.EnrollRetryWindow < 0:
		return bad("EnrollRetryWindow %s must be positive", c.EnrollRetryWindow)
	case c.MaxBodyBytes < 1024:
		return bad("MaxBodyBytes %d is below 1024", c.MaxBodyBytes)
	case c.MaxTelemetryBytes < c.MaxBodyBytes:
		return bad("MaxTelemetryBytes %d is below MaxBodyBytes %d", c.MaxTelemetryBytes, c.MaxBodyBytes)
	case c.MaxBatchReadings <= 0:
		return bad("MaxBatchReadings %d must be positive", c.MaxBatchReadings)
	case c.MaxClockSkew < 0:
		return bad("MaxClockSkew %s is negative", c.MaxClockSkew)
	case c.IdleTimeout <= c.HeartbeatInterval:
		return bad("IdleTimeout %s must exceed HeartbeatInterval %s", c.IdleTimeout, c.HeartbeatInterval)
	case c.ShutdownTimeout <= 0:
		return bad("ShutdownTimeout %s must be positive", c.ShutdownTimeout)
	}
	return c.Keys.validate()
}
