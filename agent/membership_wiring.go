package agent

import "github.com/edgefleet/edgefleet/agent/membership"

// The member types of the agent's API are membership's.
type (
	// Member is a cluster member as this agent knows it.
	Member = membership.Member
	// NodeMeta is the metadata an agent advertises to its peers.
	NodeMeta = membership.NodeMeta
)

// Member states reported by Members and edgefleet_members (see
// package agent/membership).
const (
	StateAlive = membership.StateAlive
	StateDead  = membership.StateDead
	StateLeft  = membership.StateLeft
)
