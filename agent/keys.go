package agent

import (
	"context"

	"github.com/hashicorp/memberlist"

	"github.com/edgefleet/edgefleet/agent/keys"
	"github.com/edgefleet/edgefleet/agent/uplink"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/dkms"
)

// Wiring of package agent/keys: the key material for the uplink, the key
// relay over the replicated collection keys.relay, and the gossip keyring
// rotator.

// KeyRelayCollection is the replicated LWW collection of relayed key
// messages (package agent/keys).
const KeyRelayCollection = keys.RelayCollection

// ErrGossipKeyStale reports a join that failed because this agent holds no
// gossip key its peers encrypt with (see keys.ErrGossipKeyStale).
var ErrGossipKeyStale = keys.ErrGossipKeyStale

// Keys is the agent's keyring: the key versions the control plane sent
// it (the data key "telemetry" that seals uploads, the gossip key, and
// whatever else its policies give the agent), checked and kept sealed at
// rest under the device key. Nil without a control plane
// (control_plane.url empty), before Start, and until the agent is
// enrolled and has the control plane's signing key pinned.
func (a *Agent) Keys() *dkms.AgentKeys {
	if up := a.Uplink(); up != nil {
		return up.Keys()
	}
	return nil
}

// keyClock is the clock of the key messages' times: the uplink's (the
// control plane's time, which the simulator compresses together with the
// uplink's), else the agent's.
func (a *Agent) keyClock() clock.Clock {
	if a.deps.UplinkClock != nil {
		return a.deps.UplinkClock
	}
	return a.clk
}

// uplinkKeyring opens the key material for the uplink.
func (a *Agent) uplinkKeyring() (uplink.Keyring, error) {
	k, err := keys.OpenMaterial(a.cfg.DataDir, a.rnd, a.keyClock(), a.log.With("component", "keys"), a.reg)
	if err != nil {
		return nil, err
	}
	return k, nil
}

// replicated is the agent's replicated state as package keys uses it.
type replicated struct{ a *Agent }

func (r replicated) LiveStore() (*crdt.Store, error) { return r.a.liveStore() }
func (r replicated) Broadcast(d crdt.Delta)          { r.a.broadcast(d) }

// relayKeys is the uplink's Deps.KeyRelay: it stores the page in the
// collection once the relay runs.
func (a *Agent) relayKeys(ctx context.Context, entries []cpapi.AgentKeysRelayEntry) {
	if r := a.keyRelay.Load(); r != nil {
		r.Write(ctx, entries)
	}
}

// startKeyRelay starts scanning keys.relay for this agent's messages; it
// does nothing without a control plane.
func (a *Agent) startKeyRelay(ctx context.Context) error {
	if a.cfg.ControlPlane.URL == "" {
		return nil
	}
	r, err := keys.NewRelay(keys.RelayConfig{
		State: replicated{a}, Keys: a.Keys, Changed: a.keysChanged.Fire,
		Interval: a.cfg.Gossip.SyncInterval, Clock: a.keyClock(),
		Logger: a.log.With("component", "key-relay"), Registry: a.reg,
	})
	if err != nil {
		return err
	}
	a.keyRelay.Store(r)
	a.goLoop(func() { r.Run(ctx) })
	return nil
}

// gossipKeysConfig configures the rotator of the agent's memberlist
// keyring kr, whose bootstrap key is key (the agent's configured or
// generated gossip key). It plans from the agent's dkms keyring (Keys) on
// the key messages' clock.
func (a *Agent) gossipKeysConfig(kr *memberlist.Keyring, key []byte) keys.RotatorConfig {
	return keys.RotatorConfig{
		Keyring: kr, Source: keys.GossipKeySource(a.Keys), Bootstrap: key,
		Clock: a.keyClock(), Logger: a.log, Registry: a.reg,
	}
}

// startGossipKeys applies r once, so the agent joins under the fleet's
// current key (the uplink opens the keyring of an enrolled agent when it
// starts), then runs it until ctx ends, woken by every key fetch that
// accepted messages. A nil r (gossip encryption off) does nothing.
func (a *Agent) startGossipKeys(ctx context.Context, r *keys.Rotator) {
	if r == nil {
		return
	}
	r.Apply() // a failure is logged and retried by Run
	wake := make(chan struct{}, 1)
	a.keysChanged.On(func() {
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	a.goLoop(func() { r.Run(ctx, wake) })
}

// GossipKeyring describes the memberlist keyring now (the zero value with
// gossip encryption off).
func (a *Agent) GossipKeyring() keys.RingState {
	if a.gossipKeys == nil {
		return keys.RingState{}
	}
	return a.gossipKeys.State()
}
