// Package deploy holds what installs edgefleet on a device (the systemd
// unit, the example configuration) and gives the binaries the example
// configuration: `edge-agent config defaults` prints it. The example
// sets every field to its default (agent tests hold it to DefaultConfig
// and to a comment on every field).
package deploy

import _ "embed"

// EdgeAgentConfig is edge-agent.example.yaml: the agent's default
// configuration, every field commented.
//
//go:embed edge-agent.example.yaml
var EdgeAgentConfig string
