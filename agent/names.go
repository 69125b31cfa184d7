package agent

import (
	"github.com/edgefleet/edgefleet/internal/buildinfo"
)

// Version is the agent version advertised in node metadata and in
// heartbeats: the binary's build version (internal/buildinfo; release
// builds set it with -ldflags, see the Makefile).
var Version = buildinfo.Get().Version
