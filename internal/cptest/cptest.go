// Package cptest starts in-process control planes for tests of the
// packages that talk to one (agent, uplink, scenario tests).
package cptest

import (
	"log/slog"
	"testing"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// Config is a test control plane storing in dir: a free loopback port,
// logs discarded, SQLite synchronous NORMAL, and the key service unsealed
// in dev mode (with the built-in telemetry key).
func Config(dir string) controlplane.Config {
	return controlplane.Config{
		DataDir: dir,
		Listen:  "127.0.0.1:0",
		Logger:  slog.New(slog.DiscardHandler),
		SQLite:  controlplane.SQLiteOptions{Synchronous: "NORMAL"},
		Keys:    controlplane.KeyConfig{DevUnseal: true},
	}
}

// Start starts a control plane with cfg, closed when the test ends, and
// returns it with a client authenticated as its bootstrap admin.
func Start(t testing.TB, cfg controlplane.Config) (*controlplane.Server, *cpapi.Client) {
	t.Helper()
	srv, err := controlplane.New(cfg)
	if err != nil {
		t.Fatalf("controlplane.New: %v", err)
	}
	if err := srv.Start(); err != nil {
		t.Fatalf("controlplane start: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	admin, err := srv.AdminClient(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.CloseIdleConnections)
	return srv, admin
}
