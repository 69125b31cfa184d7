package main

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/deploy"
)

func newConfigCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "config",
		Short: "Check a configuration file, or print the default configuration",
	}
	c.AddCommand(newConfigValidateCmd(), newConfigDefaultsCmd())
	return c
}

func newConfigValidateCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE",
		Short: "Load FILE as run would (with EDGEFLEET_* variables) and check every field",
		Long: `validate loads FILE over the defaults, applies the EDGEFLEET_* environment
variables, and checks the result as 'edge-agent run --config FILE' would
before starting. It prints "ok" and a summary, or fails naming the first
bad field (by its YAML path and, for a field the file cannot hold, its
line). It opens nothing in the data directory and binds no port.`,
		Example: `  edge-agent config validate /etc/edgefleet/edge-agent.yaml`,
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cfg, env, err := fileAndEnv(args[0])
			if err != nil {
				return err
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			printSummary(c.OutOrStdout(), args[0], cfg, env)
			return nil
		},
	}
}

func newConfigDefaultsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "defaults",
		Short: "Print the default configuration as YAML, every field commented",
		Long: `defaults prints the configuration the agent runs on when nothing is
configured: every field with its default value and a comment. It is a
starting point for a config file (it loads back to the same configuration).`,
		Example: `  edge-agent config defaults > /etc/edgefleet/edge-agent.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			_, err := io.WriteString(c.OutOrStdout(), deploy.EdgeAgentConfig)
			return err
		},
	}
}

// printSummary describes what the agent configured by cfg would do. It
// prints no secret.
func printSummary(w io.Writer, path string, cfg agent.Config, env []string) {
	fmt.Fprintf(w, "ok: %s\n", path)
	line := func(k, v string) { fmt.Fprintf(w, "  %-14s %s\n", k, v) }
	name := cfg.NodeName
	if name == "" {
		name = "(the name recorded in the data dir, else the host name)"
	}
	line("node name", name)
	line("data dir", cfg.DataDir)
	g := cfg.Gossip
	gossip := fmt.Sprintf("%s, cluster %q, profile %s", net.JoinHostPort(g.BindAddr, strconv.Itoa(g.BindPort)), g.Cluster, g.Profile)
	if g.Encrypt {
		gossip += ", encrypted"
	} else {
		gossip += ", NOT encrypted"
	}
	if len(g.Join) > 0 {
		gossip += ", joins " + strings.Join(g.Join, " ")
	}
	line("gossip", gossip)
	api := cfg.API.Addr
	if api == "" {
		api = "off"
	}
	line("api", api)
	in := "off"
	switch {
	case !cfg.Ingest.Enabled:
	case cfg.Ingest.MQTT.Broker == "":
		in = "embedded MQTT broker on " + cfg.Ingest.MQTT.EmbeddedListen
	default:
		in = "MQTT broker " + cfg.Ingest.MQTT.Broker
	}
	line("ingest", in)
	cp := "none (standalone)"
	if cfg.ControlPlane.URL != "" {
		cp = cfg.ControlPlane.URL
	}
	line("control plane", cp)
	line("log", cfg.Log.Level+", "+cfg.Log.Format)
	if len(env) > 0 {
		line("environment", strings.Join(env, " "))
	}
}
