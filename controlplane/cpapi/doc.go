// Package cpapi is the control plane's HTTP+JSON API as its callers see
// it: the wire types of every request and answer, the constants and
// errors that are part of the contract (roles, agent states, header and
// built-in key names, the associated data of sealed telemetry), the
// encoder of telemetry uploads, and Client, the typed Go client used by
// edgectl and by agents.
//
// It holds no server code: an agent imports it without the server, its
// key service and its store. The server (package controlplane) speaks
// these types; the OpenAPI document that describes them is served by the
// server and kept in step with them by its tests.
package cpapi
