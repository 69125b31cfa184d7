package membership

import (
	"time"

	"github.com/hashicorp/memberlist"
)

// Profiles of memberlist's timers (config gossip.profile).
const (
	ProfileLAN  = "lan"
	ProfileTest = "test"
)

// Profile returns memberlist's configuration for a profile.
//
// "lan" is memberlist's DefaultLANConfig (1 s probes, 200 ms gossip, push/pull
// every 30 s scaled up with cluster size), plus DeadNodeReclaimTime so a
// crashed agent that comes back on another address can reclaim its name
// after 30 s.
//
// "test" shrinks every timer for agents on one host in unit tests: failures
// are detected within about a second and push/pull runs every second.
func Profile(profile string) *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	c.DeadNodeReclaimTime = 30 * time.Second
	if profile != ProfileTest {
		return c
	}
	c.TCPTimeout = time.Second                     // streams on loopback finish in milliseconds
	c.IndirectChecks = 2                           // fewer helpers in small test clusters
	c.RetransmitMult = 3                           // broadcasts reach small clusters with fewer sends
	c.SuspicionMult = 3                            // suspect for 3 * log10(N) * probe interval
	c.SuspicionMaxTimeoutMult = 4                  // bounded detection time without confirmations
	c.PushPullInterval = time.Second               // full state sync every second
	c.ProbeInterval = 250 * time.Millisecond       // probe a random member four times a second
	c.ProbeTimeout = 200 * time.Millisecond        // generous for loaded CI machines
	c.AwarenessMaxMultiplier = 4                   // back off at most to 1 s probes
	c.GossipInterval = 50 * time.Millisecond       // spread broadcasts fast
	c.GossipNodes = 3                              // to 3 members per gossip round
	c.GossipToTheDeadTime = 2 * time.Second        // dead members can refute for 2 s
	c.DeadNodeReclaimTime = 500 * time.Millisecond // restarted agents reclaim names quickly
	return c
}
