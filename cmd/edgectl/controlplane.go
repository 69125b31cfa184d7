package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/greensched/provider"
	"github.com/edgefleet/edgefleet/internal/buildinfo"
	"github.com/edgefleet/edgefleet/internal/cli"
)

// defaultMemoryLimit keeps the server's RSS near 500 MB with 10,000 agents
// connected: measured without a limit RSS reaches ~750 MB, because Go's
// default GC target lets the heap double over ~350 MB of live data (see
// controlplane/README.md).
const defaultMemoryLimit = "420MiB"

// readyInfo is written to --ready-file once the server listens.
type readyInfo struct {
	URL            string `json:"url"`
	CAFile         string `json:"ca_file"`
	AdminTokenFile string `json:"admin_token_file"`
	PID            int    `json:"pid"`
}

func (a *app) newControlplaneCmd() *cobra.Command {
	var (
		cfg         controlplane.Config
		memLimit    string
		logLevel    string
		logFormat   string
		readyFile   string
		synchronous string
		sharesFile  string
		keyRotation string
		carbonFile  string
	)
	c := &cobra.Command{
		Use:   "controlplane --data DIR [--listen ADDR] [--host NAME...]",
		Short: "Run the control plane server until interrupted",
		Long: `controlplane runs the edgefleet control plane: HTTP+JSON API under /v1/ over
TLS 1.3, agent enrollment, registry, telemetry and audit, stored in SQLite in
--data. On first start it creates its CA (DIR/ca.pem) and an admin API token
(DIR/admin.token, mode 0600), and prints where both are. SIGINT or SIGTERM
stops it gracefully.

Key service: on first start the control plane creates its root key and
splits it into --key-shares shares, any --key-threshold of which unseal it.
The shares are shown once: written to --init-shares-file (created with mode
0600, never replaced) or, without it, printed on stderr. Hand one to each
custodian and delete the file. After every start the key service is sealed:
key operations answer 503 until custodians run 'edgectl keys unseal' with
enough shares; enrollment, heartbeats and telemetry work meanwhile.
--dev-unseal instead stores the root key in the clear and unseals at every
start (development and simulation only; logged as a warning each start).

--memory-limit sets the Go runtime's soft memory limit (default 420MiB; 0 or
"off" for none). An explicit --memory-limit wins over GOMEMLIMIT; without the
flag, a GOMEMLIMIT in the environment is kept. With 10,000 connected agents
the server needs about 350 MB live; without a limit Go lets RSS grow to ~750 MB.`,
		Example: `  edgectl controlplane --data /var/lib/edgefleet --listen 0.0.0.0:8443 --host cp.example.net --init-shares-file /root/shares.txt
  edgectl controlplane --data ./cp-data --dev-unseal`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if cfg.DataDir == "" {
				return cli.Usagef("controlplane needs --data DIR (where the CA, admin token and database live)")
			}
			limit, apply, source, err := memoryLimit(memLimit, c.Flags().Changed("memory-limit"), a.getenv("GOMEMLIMIT"))
			if err != nil {
				return cli.Usagef("--memory-limit: %v", err)
			}
			logger, err := cli.NewLogger(c.ErrOrStderr(), logLevel, logFormat)
			if err != nil {
				return cli.UsageError{Err: err}
			}
			cfg.Hostnames = cli.SplitList(cfg.Hostnames)
			cfg.Logger = logger
			cfg.Version = buildinfo.Get().Version
			cfg.SQLite.Synchronous = synchronous
			cfg.SQLite.Logger = logger
			if abs, err := filepath.Abs(cfg.DataDir); err == nil {
				cfg.DataDir = abs
			}
			if !c.Flags().Changed("key-threshold") {
				cfg.Keys.Threshold = 0 // the server's default: 3, or --key-shares when fewer
			}
			if cfg.Keys.RotationPeriod, err = keyRotationFlag(keyRotation); err != nil {
				return err
			}
			if sharesFile != "" {
				if _, err := os.Stat(sharesFile); err == nil {
					return cli.Usagef("--init-shares-file %s exists; it is never replaced (move it away, or drop the flag once the key service is initialized)", sharesFile)
				}
			}
			if apply {
				debug.SetMemoryLimit(limit)
			}

			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if carbonFile != "" {
				if cfg.FL.Carbon, err = carbonForecasts(carbonFile, logger); err != nil {
					return err
				}
			}
			srv, err := controlplane.New(cfg)
			if err != nil {
				return err
			}
			if err := handOutShares(c, srv.TakeRootShares(), sharesFile, cfg.Keys, a.now()); err != nil {
				srv.Close()
				return err
			}
			if err := srv.Start(); err != nil {
				srv.Close()
				return err
			}
			w := c.OutOrStdout()
			fmt.Fprintf(w, "edgectl controlplane: serving %s\n", srv.URL())
			fmt.Fprintf(w, "  CA certificate: %s\n", srv.CAPath())
			fmt.Fprintf(w, "  admin token:    %s (mode 0600)\n", srv.AdminTokenPath())
			fmt.Fprintf(w, "  memory limit:   %s\n", source)
			if st := srv.KeyStatus(); st.DevMode {
				fmt.Fprintf(w, "  key service:    DEV MODE, unsealed (root key stored in the clear; not for production)\n")
			} else if st.Sealed {
				fmt.Fprintf(w, "  key service:    sealed; unseal with 'edgectl keys unseal' (%d of %d shares)\n", st.SharesNeeded, st.SharesTotal)
			}
			fmt.Fprintf(w, "Log in from another shell with:\n  edgectl login --server %s --ca %s --token-file %s\n",
				srv.URL(), srv.CAPath(), srv.AdminTokenPath())
			if readyFile != "" {
				if err := writeReadyFile(readyFile, readyInfo{URL: srv.URL(), CAFile: srv.CAPath(), AdminTokenFile: srv.AdminTokenPath(), PID: os.Getpid()}); err != nil {
					srv.Close()
					return err
				}
			}
			err = srv.Serve(ctx)
			logger.Info("control plane stopped")
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&carbonFile, "carbon-providers", "", "YAML providers: list (as edgectl green status --providers) giving zones' carbon forecasts to federated jobs with a carbon option")
	f.StringVar(&cfg.DataDir, "data", "", "data directory: CA, server certificate, admin token, SQLite database (created 0700)")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:8443", "TCP address to serve on (port 0 picks a free one)")
	f.StringArrayVar(&cfg.Hostnames, "host", nil, "extra DNS name or IP address for the server certificate (repeatable, or comma-separated)")
	f.StringVar(&memLimit, "memory-limit", defaultMemoryLimit, "Go soft memory limit, e.g. 420MiB, 1GiB; 0 or off for none")
	f.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", 10*time.Second, "how often agents are told to heartbeat")
	f.StringVar(&synchronous, "sync", "FULL", "SQLite synchronous setting: FULL (durable on power loss) or NORMAL (faster)")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	f.IntVar(&cfg.Keys.Shares, "key-shares", controlplane.DefaultKeyShares, "first start: split the root key into this many shares")
	f.IntVar(&cfg.Keys.Threshold, "key-threshold", controlplane.DefaultKeyThreshold, "first start: shares needed to unseal the key service")
	f.StringVar(&sharesFile, "init-shares-file", "", "first start: write the root key shares to this new file (mode 0600) instead of stderr")
	f.BoolVar(&cfg.Keys.DevUnseal, "dev-unseal", false, "DEVELOPMENT ONLY: keep the root key in the clear and unseal at every start")
	f.StringVar(&keyRotation, "key-rotation-period", "30d", "automatic rotation period of keys created without one; off for on demand only")
	f.StringVar(&readyFile, "ready-file", "", "write the URL and file locations as JSON to this file once serving")
	f.MarkHidden("ready-file")
	return c
}

// memoryLimit decides the Go soft memory limit. An explicitly given flag
// wins; otherwise a GOMEMLIMIT in the environment (already applied by the
// runtime) is kept; otherwise the flag's default applies. It returns the
// limit, whether to apply it, and a description for the operator.
func memoryLimit(flagValue string, flagSet bool, gomemlimit string) (int64, bool, string, error) {
	if !flagSet && gomemlimit != "" {
		return 0, false, fmt.Sprintf("GOMEMLIMIT=%s (from the environment)", gomemlimit), nil
	}
	if flagValue == "off" || flagValue == "none" {
		return math.MaxInt64, true, "none", nil
	}
	n, err := cli.ParseSize(flagValue)
	if err != nil {
		return 0, false, "", err
	}
	if n == 0 {
		return math.MaxInt64, true, "none", nil
	}
	if n < 16<<20 {
		return 0, false, "", fmt.Errorf("%s is below 16MiB; the server would spend its time collecting garbage", flagValue)
	}
	if !flagSet {
		return n, true, fmt.Sprintf("%s (default; --memory-limit or GOMEMLIMIT change it)", flagValue), nil
	}
	return n, true, fmt.Sprintf("%s (--memory-limit)", flagValue), nil
}

func writeReadyFile(path string, info readyInfo) error {
	data, err := json.Marshal(info)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("ready file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("ready file: %w", err)
	}
	return nil
}

// keyRotationFlag reads --key-rotation-period.
func keyRotationFlag(v string) (time.Duration, error) {
	switch strings.ToLower(v) {
	case "off", "none", "0":
		return -1, nil
	}
	d, err := cli.ParseDuration(v)
	if err != nil || d < time.Second {
		return 0, cli.Usagef("--key-rotation-period %q: want a duration of at least 1s such as 30d or 12h, or off", v)
	}
	return d, nil
}

// handOutShares shows the root key shares of a first start once: in a new
// file of mode 0600, or on stderr. If the file cannot be written the
// shares go to stderr, since they exist nowhere else.
func handOutShares(c *cobra.Command, shares []string, path string, kc controlplane.KeyConfig, now time.Time) error {
	if len(shares) == 0 {
		return nil
	}
	threshold := kc.Threshold
	if threshold == 0 {
		threshold = min(controlplane.DefaultKeyThreshold, len(shares))
	}
	text := sharesText(shares, threshold, now)
	ew := c.ErrOrStderr()
	if path != "" {
		err := createSecretFile(path, text)
		if err == nil {
			fmt.Fprintf(ew, "%s controlplane: key service initialized; %d root key shares written to %s (mode 0600): hand them out and delete the file\n", c.Root().Name(), len(shares), path)
			return nil
		}
		fmt.Fprintf(ew, "%s controlplane: writing the shares to %s failed (%v); here they are instead:\n", c.Root().Name(), path, err)
	}
	fmt.Fprintf(ew, "%s controlplane: key service initialized. ROOT KEY SHARES (shown once):\n%s", c.Root().Name(), text)
	return nil
}

// carbonForecasts builds the zones' carbon providers of a providers file
// (as edgectl green status --providers) for the FL round driver.
func carbonForecasts(file string, logger *slog.Logger) (controlplane.CarbonForecaster, error) {
	cfgs, err := greenStatusConfigs(file, nil)
	if err != nil {
		return nil, err
	}
	byZone := map[string]provider.Provider{}
	for _, cfg := range cfgs {
		p, err := provider.New(cfg, provider.Options{Logger: logger})
		if err != nil {
			return nil, fmt.Errorf("--carbon-providers: %w", err)
		}
		byZone[cfg.Zone] = p
	}
	return controlplane.ProviderForecasts(byZone), nil
}
