package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent"
)

// runFlags are the command-line overrides of the config file and environment.
type runFlags struct {
	config, data, bind, advertise, join, api, name, cluster, profile, labels, logLevel string
}

func newRunCmd() *cobra.Command {
	var fl runFlags
	c := &cobra.Command{
		Use:   "run",
		Short: "Run the agent until interrupted (SIGINT or SIGTERM leave the cluster gracefully)",
		Long: `run starts the agent: its replicated state store, gossip membership and
replication, and the local HTTP API.

Configuration is read from --config (YAML; see deploy/edge-agent.example.yaml,
which documents every field and its default), then EDGEFLEET_* environment
variables, then the flags below. With no file the agent runs on defaults.`,
		Example: `  edge-agent run
  edge-agent run --config /etc/edgefleet/edge-agent.yaml
  edge-agent run --data /var/lib/edgefleet --bind 0.0.0.0:7946 --join 10.0.0.2,10.0.0.3:7946`,
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
			a, err := agent.New(cfg, agent.Deps{Logger: logger})
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return a.Run(ctx)
		},
	}
	f := c.Flags()
	f.StringVar(&fl.config, "config", "", "YAML config file (env EDGEFLEET_CONFIG)")
	f.StringVar(&fl.data, "data", "", "data directory (state database, gossip key)")
	f.StringVar(&fl.bind, "bind", "", "gossip bind address: host, host:port or :port")
	f.StringVar(&fl.advertise, "advertise", "", "gossip address announced to peers: host, host:port or :port")
	f.StringVar(&fl.join, "join", "", "comma-separated seed agents to join (host or host:port)")
	f.StringVar(&fl.api, "api", "", `local API listen address ("" disables it)`)
	f.StringVar(&fl.name, "node-name", "", "node name, unique in the cluster (default: recorded name, else host name)")
	f.StringVar(&fl.cluster, "cluster", "", "cluster name; agents of other clusters are rejected")
	f.StringVar(&fl.profile, "profile", "", "gossip timer profile: lan or test")
	f.StringVar(&fl.labels, "labels", "", "comma-separated key=value labels advertised to peers")
	f.StringVar(&fl.logLevel, "log-level", "", "debug, info, warn or error")
	return c
}

// loadConfig applies, in order: defaults, the config file, EDGEFLEET_*
// variables, then the flags the user set.
func loadConfig(c *cobra.Command, fl runFlags) (agent.Config, error) {
	cfg := agent.DefaultConfig()
	path := fl.config
	if path == "" {
		path = os.Getenv("EDGEFLEET_CONFIG")
	}
	if path != "" {
		var err error
		if cfg, err = agent.LoadConfig(path); err != nil {
			return cfg, err
		}
	}
	if err := cfg.ApplyEnv(nil); err != nil {
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
	return cfg, cfg.Validate()
}
