package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/internal/procmem"
)

// applyRuntime configures the Go runtime of an agent process: the GC
// target unless GOGC is set, and no heap profile sampling from here on
// (the agent serves no profiles; each sample records its allocation's
// stack in memory that is never freed).
func applyRuntime(rc agent.RuntimeConfig) {
	runtime.MemProfileRate = 0
	if _, set := os.LookupEnv("GOGC"); !set {
		debug.SetGCPercent(rc.GCPercent)
	}
}

// releaseStartupPages hands the executable's pages back to the kernel now
// and once more agent.StartupPagesDelay later (runtime.release_startup_pages).
func releaseStartupPages(ctx context.Context, log *slog.Logger) {
	for i := 0; ; i++ {
		r, err := procmem.Release()
		if err != nil {
			log.Warn("releasing start-up pages of the executable", "err", err)
			return
		}
		log.Debug("released start-up pages of the executable", "mappings", r.Mappings, "bytes", r.Bytes)
		if i == 1 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(agent.StartupPagesDelay):
		}
	}
}

// runFlags are the command-line overrides of the config file and environment.
type runFlags struct {
	config, data, bind, advertise, join, api, name, cluster, profile, labels, logLevel string

	controlPlane, ca, enrollToken, enrollTokenFile                       string
	mqttBroker, mqttUsername, mqttPassword, mqttPasswordFile, mqttListen string
	noIngest                                                             bool
}

func newRunCmd() *cobra.Command {
	var fl runFlags
	c := &cobra.Command{
		Use:   "run",
		Short: "Run the agent until interrupted (SIGINT or SIGTERM leave the cluster gracefully)",
		Long: `run starts the agent: its replicated state store, gossip membership and
replication, device-data ingestion over MQTT (an embedded broker on
127.0.0.1:1883 unless --mqtt-broker names one), the uplink to the control
plane (with --control-plane), and the local HTTP API.

Configuration is read from --config (YAML; see deploy/edge-agent.example.yaml,
which documents every field and its default), then EDGEFLEET_* environment
variables, then the flags below. With no file the agent runs on defaults.`,
		Example: `  edge-agent run
  edge-agent run --config /etc/edgefleet/edge-agent.yaml
  edge-agent run --data /var/lib/edgefleet --bind 0.0.0.0:7946 --join 10.0.0.2,10.0.0.3:7946
  edge-agent run --control-plane https://cp.example:8443 --ca ca.pem --enrollment-token-file token
  edge-agent run --mqtt-broker tcp://127.0.0.1:1883 --mqtt-username agent --mqtt-password-file pw`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg, err := loadConfig(c, fl)
			if err != nil {
				return err
			}
			logger, err := cfg.Log.NewLogger(os.Stderr)
			if err != nil {
				return err
			}
			applyRuntime(cfg.Runtime)
			// The process's own metrics (Go runtime, RSS, CPU) beside the
			// agent's: one agent per process here.
			reg := prometheus.NewRegistry()
			reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			deps := agent.Deps{Logger: logger, Registry: reg}
			if cfg.Runtime.ReleaseStartupPages {
				deps.Started = func() { go releaseStartupPages(ctx, logger) }
			}
			a, err := agent.New(cfg, deps)
			if err != nil {
				return err
			}
			return a.Run(ctx)
		},
	}
	f := c.Flags()
	f.StringVar(&fl.config, "config", "", "YAML config file (env EDGEFLEET_CONFIG)")
	f.StringVar(&fl.data, "data", "", "data directory (state and ingestion databases, gossip key, control plane identity)")
	f.StringVar(&fl.bind, "bind", "", "gossip bind address: host, host:port or :port")
	f.StringVar(&fl.advertise, "advertise", "", "gossip address announced to peers: host, host:port or :port")
	f.StringVar(&fl.join, "join", "", "comma-separated seed agents to join (host or host:port)")
	f.StringVar(&fl.api, "api", "", `local API listen address ("" disables it)`)
	f.StringVar(&fl.name, "node-name", "", "node name, unique in the cluster (default: recorded name, else host name)")
	f.StringVar(&fl.cluster, "cluster", "", "cluster name; agents of other clusters are rejected")
	f.StringVar(&fl.profile, "profile", "", "gossip timer profile: lan or test")
	f.StringVar(&fl.labels, "labels", "", "comma-separated key=value labels advertised to peers")
	f.StringVar(&fl.logLevel, "log-level", "", "debug, info, warn or error")
	f.StringVar(&fl.controlPlane, "control-plane", "", "control plane URL (https://host:port); none runs standalone")
	f.StringVar(&fl.ca, "ca", "", "control plane CA certificate (PEM), needed to enroll")
	f.StringVar(&fl.enrollToken, "enrollment-token", "", "single-use enrollment token (visible to other local users: prefer --enrollment-token-file)")
	f.StringVar(&fl.enrollTokenFile, "enrollment-token-file", "", "file holding the enrollment token")
	f.StringVar(&fl.mqttBroker, "mqtt-broker", "", `MQTT broker to subscribe to (tcp://host:port or ssl://host:port); "" runs the embedded broker`)
	f.StringVar(&fl.mqttUsername, "mqtt-username", "", "MQTT user name")
	f.StringVar(&fl.mqttPassword, "mqtt-password", "", "MQTT password (visible to other local users: prefer --mqtt-password-file)")
	f.StringVar(&fl.mqttPasswordFile, "mqtt-password-file", "", "file holding the MQTT password")
	f.StringVar(&fl.mqttListen, "mqtt-listen", "", "listen address of the embedded MQTT broker (default 127.0.0.1:1883; port 0 picks one)")
	f.BoolVar(&fl.noIngest, "no-ingest", false, "disable device-data ingestion (no MQTT, no embedded broker)")
	return c
}

// loadConfig applies, in order: defaults, the config file, EDGEFLEET_*
// variables, then the flags the user set.
func loadConfig(c *cobra.Command, fl runFlags) (agent.Config, error) {
	path := fl.config
	if path == "" {
		path = os.Getenv("EDGEFLEET_CONFIG")
	}
	cfg, _, err := fileAndEnv(path)
	if err != nil {
		return cfg, err
	}
	set := c.Flags().Changed
	if set("data") {
		cfg.DataDir = fl.data
	}
	if set("bind") {
		if err := cfg.SetBind(fl.bind); err != nil {
			return cfg, fmt.Errorf("--bind: %w", err)
		}
	}
	if set("advertise") {
		if err := cfg.SetAdvertise(fl.advertise); err != nil {
			return cfg, fmt.Errorf("--advertise: %w", err)
		}
	}
	if set("join") {
		cfg.Gossip.Join = agent.SplitList(fl.join)
	}
	if set("api") {
		cfg.API.Addr = fl.api
	}
	if set("node-name") {
		cfg.NodeName = fl.name
	}
	if set("cluster") {
		cfg.Gossip.Cluster = fl.cluster
	}
	if set("profile") {
		cfg.Gossip.Profile = fl.profile
	}
	if set("labels") {
		labels, err := agent.ParseLabels(fl.labels)
		if err != nil {
			return cfg, fmt.Errorf("--labels: %w", err)
		}
		cfg.Labels = labels
	}
	if set("log-level") {
		cfg.Log.Level = fl.logLevel
	}
	if set("control-plane") {
		cfg.ControlPlane.URL = fl.controlPlane
	}
	if set("ca") {
		cfg.ControlPlane.CAFile = fl.ca
	}
	if set("enrollment-token") {
		cfg.ControlPlane.EnrollmentToken, cfg.ControlPlane.EnrollmentTokenFile = fl.enrollToken, ""
	}
	if set("enrollment-token-file") {
		cfg.ControlPlane.EnrollmentTokenFile, cfg.ControlPlane.EnrollmentToken = fl.enrollTokenFile, ""
	}
	if set("enrollment-token") && set("enrollment-token-file") {
		return cfg, fmt.Errorf("--enrollment-token and --enrollment-token-file are both set; set one")
	}
	if set("mqtt-broker") {
		cfg.Ingest.MQTT.Broker = fl.mqttBroker
	}
	if set("mqtt-username") {
		cfg.Ingest.MQTT.Username = fl.mqttUsername
	}
	if set("mqtt-password") {
		cfg.Ingest.MQTT.Password, cfg.Ingest.MQTT.PasswordFile = fl.mqttPassword, ""
	}
	if set("mqtt-password-file") {
		cfg.Ingest.MQTT.PasswordFile, cfg.Ingest.MQTT.Password = fl.mqttPasswordFile, ""
	}
	if set("mqtt-password") && set("mqtt-password-file") {
		return cfg, fmt.Errorf("--mqtt-password and --mqtt-password-file are both set; set one")
	}
	if set("mqtt-listen") {
		cfg.Ingest.MQTT.EmbeddedListen = fl.mqttListen
	}
	if set("no-ingest") {
		cfg.Ingest.Enabled = !fl.noIngest
	}
	return cfg, cfg.Validate()
}

// fileAndEnv returns the defaults overridden by the config file at path
// (none when "") and then by EDGEFLEET_* variables, and the names of the
// variables that were set.
func fileAndEnv(path string) (agent.Config, []string, error) {
	cfg := agent.DefaultConfig()
	if path != "" {
		var err error
		if cfg, err = agent.LoadConfig(path); err != nil {
			return cfg, nil, err
		}
	}
	var set []string
	err := cfg.ApplyEnv(func(name string) (string, bool) {
		v, ok := os.LookupEnv(name)
		if ok {
			set = append(set, name)
		}
		return v, ok
	})
	return cfg, set, err
}
