// Package controlplane is the central server of an edgefleet deployment.
// The API's wire types, errors and typed Go client are in package
// controlplane/cpapi, which agents import without this server.
//
// The server enrolls agents (single-use, expiring enrollment tokens plus a
// certificate signing request, answered with a client certificate issued by
// the control plane's own CA), keeps the agent registry up to date from
// heartbeats sent over mutual TLS, ingests telemetry batches idempotently by
// (agent id, batch sequence), answers downsampled telemetry queries, manages
// operator API tokens with the roles admin, operator and viewer, appends
// every operator and identity change to a hash-chained audit log, and runs
// the key service (package dkms: a root key held in k-of-n shares, sealed
// after every start, versioned keys with rotation, rewrap and revocation,
// and key versions sealed to each agent's X-Wing key; see KeyConfig and
// README.md).
//
// The API is HTTP+JSON under /v1/, served over TLS 1.3 only, and described
// by the OpenAPI 3 document served at /openapi.json (openapi.json in this
// folder, embedded into the binary). Go's default key-exchange preferences
// are kept, so clients built with Go 1.24 or later negotiate the hybrid
// post-quantum X25519MLKEM768 key exchange.
//
// Authentication:
//
//   - operators send "Authorization: Bearer <token>"; tokens are random
//     256-bit secrets stored only as their SHA-256 digest;
//   - agents present the client certificate they received at enrollment;
//     the agent id is the certificate's CommonName and its URI SAN
//     (urn:edgefleet:agent:<id>); the revocation list is consulted on every
//     request, so a decommissioned agent is refused with 403;
//   - POST /v1/enroll is authenticated by the enrollment token in its body.
//
// Storage sits behind the Store interface; the default is SQLite
// (modernc.org/sqlite, WAL) in the data directory.
//
// Audit scope: every call that changes operator-visible state (tokens,
// enrollment, labels, decommission) is recorded, whether it succeeds or is
// refused after authentication. Agent heartbeats and telemetry uploads are
// data-plane traffic (thousands per second) and are counted in Prometheus
// metrics instead of the audit log.
//
// Randomness: Config.Rand supplies token secrets, identifiers and
// certificate serial numbers. Private keys and signatures always use the
// standard library's secure source, which ignores custom readers since
// Go 1.26.
package controlplane
