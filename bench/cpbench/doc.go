// Package cpbench measures the control plane: RunHeartbeatLoad drives a
// running server with simulated agents over mutual TLS (heartbeat latency,
// achieved rate, server RSS and CPU), RunIngestBench compares the store's
// telemetry ingest with plain SQLite inserts. `edgectl bench controlplane`
// runs both; no production binary path links this package otherwise.
package cpbench

import "errors"

// ErrInvalidOptions is returned when a required option is missing or a
// value is out of range.
var ErrInvalidOptions = errors.New("cpbench: invalid options")
