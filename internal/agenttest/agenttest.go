// Package agenttest starts in-process agents for the tests of the packages
// that talk to one (the agent API client, edgectl, edge-agent), as
// internal/cptest starts control planes.
package agenttest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent"
)

// GossipKey is the fixed gossip key of test agents (base64 of 32 bytes).
const GossipKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// Config is an agent named name in cluster, with its data in a temporary
// directory, gossip on a free loopback port with the test profile and a
// fixed key, and its local API on a free loopback port.
func Config(t testing.TB, name, cluster string) agent.Config {
	cfg := agent.DefaultConfig()
	cfg.NodeName = name
	cfg.DataDir = t.TempDir()
	cfg.Gossip.BindAddr = "127.0.0.1"
	cfg.Gossip.BindPort = 0
	cfg.Gossip.Profile = agent.ProfileTest
	cfg.Gossip.Cluster = cluster
	cfg.Gossip.Key = GossipKey
	cfg.API.Addr = "127.0.0.1:0"
	// Ingestion is on by default: its embedded broker on a free port, not
	// the fixed default 1883 another test process or a system broker holds.
	cfg.Ingest.MQTT.EmbeddedListen = "127.0.0.1:0"
	return cfg
}

// Start starts an agent with cfg, logs discarded, stopped when the test
// ends (Stop is a no-op on an agent the test stopped itself).
func Start(t testing.TB, cfg agent.Config) *agent.Agent {
	t.Helper()
	return StartWith(t, cfg, agent.Deps{})
}

// StartWith is Start with deps (a nil Logger discards logs).
func StartWith(t testing.TB, cfg agent.Config, deps agent.Deps) *agent.Agent {
	t.Helper()
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	a, err := agent.New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		a.Stop(ctx)
	})
	return a
}
