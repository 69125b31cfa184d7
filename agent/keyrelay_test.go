package agent

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// gossipPrimary is the dkms version of the agent's memberlist primary key
// (0: the bootstrap key).
func gossipPrimary(a *Agent) uint32 {
	if a.gossipKeys == nil {
		return 0
	}
	return a.gossipKeys.State().Primary
}

func gossipLatest(a *Agent) uint32 {
	ak := a.Keys()
	if ak == nil {
		return 0
	}
	for _, k := range ak.Keys() {
		if k.Name == cpapi.GossipKeyName {
			return k.Latest
		}
	}
	return 0
}

// TestKeyRelayReachesAnAgentCutOffFromTheControlPlane: three agents gossip,
// one loses its uplink while the telemetry and gossip keys rotate; it gets
// both new versions from its peers, its gossip keyring follows, and when
// its uplink heals nothing fails.
func TestKeyRelayReachesAnAgentCutOffFromTheControlPlane(t *testing.T) {
	cp := startKeysCP(t)
	ctx := t.Context()
	if _, err := cp.admin.SetKeyPolicy(ctx, cpapi.GossipKeyName, cpapi.KeyPolicy{
		RotationPeriod: "0", AllAgents: true, InstallGrace: "2s", RemoveGrace: "1h",
	}); err != nil {
		t.Fatal(err)
	}
	// A cut link fails every request, those in flight included (a long
	// poll held before the cut would otherwise deliver the rotated keys
	// through the uplink).
	var cut atomic.Bool
	cutDeps := Deps{Logger: testLogger(t), Rand: seededRand("relay-c"), UplinkWrapTransport: func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			if cut.Load() {
				return nil, errors.New("uplink cut by the test")
			}
			resp, err := rt.RoundTrip(r)
			if cut.Load() {
				if err == nil {
					resp.Body.Close()
				}
				return nil, errors.New("uplink cut by the test (in flight)")
			}
			return resp, err
		})
	}}
	a := startAgent(t, cp.agentConfig(t, "relay-a"), Deps{Logger: testLogger(t), Rand: seededRand("relay-a")})
	cfgB := cp.agentConfig(t, "relay-b")
	cfgB.Gossip.Join = []string{a.GossipAddr()}
	b := startAgent(t, cfgB, Deps{Logger: testLogger(t), Rand: seededRand("relay-b")})
	cfgC := cp.agentConfig(t, "relay-c")
	cfgC.Gossip.Join = []string{a.GossipAddr()}
	c := startAgent(t, cfgC, cutDeps)
	agents := []*Agent{a, b, c}
	waitFor(t, 30*time.Second, "enrolled, keyed and gossiping", func() (bool, string) {
		for _, x := range agents {
			if telemetryVersion(x) != 1 || gossipLatest(x) != 1 || len(x.Members()) != 3 {
				return false, fmt.Sprintf("%s not ready: telemetry v%d, gossip primary v%d, %d members", x.Name(), telemetryVersion(x), gossipPrimary(x), len(x.Members()))
			}
		}
		ok, why := allAlive(agents)
		return ok, why
	})

	cut.Store(true)
	// Once a heartbeat failed, the heartbeat loop (which fetches keys) has
	// no request in flight any more.
	waitFor(t, 10*time.Second, "the uplink notices the cut", func() (bool, string) {
		return strings.Contains(c.Uplink().Status().LastError, "cut by the test"), c.Uplink().Status().LastError
	})
	for _, k := range []string{cpapi.TelemetryKeyName, cpapi.GossipKeyName} {
		if _, err := cp.admin.RotateKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	// The relay counts an accepted message just after the keyring took
	// it, so the wait covers both.
	waitFor(t, 30*time.Second, "the cut-off agent holds the new versions, taken from the relay", func() (bool, string) {
		tv, gv := telemetryVersion(c), gossipLatest(c)
		got := metricSum(t, c.Registry(), "agent_key_relay_accepted_total", "new")
		if tv != 2 || gv != 2 || got < 2 {
			return false, fmt.Sprintf("cut-off agent at telemetry v%d gossip v%d, %v accepted via the relay", tv, gv, got)
		}
		return true, ""
	})
	if !strings.Contains(c.Uplink().Status().LastError, "cut by the test") {
		t.Fatalf("the uplink was not cut: last error %q", c.Uplink().Status().LastError)
	}
	written := metricSum(t, a.Registry(), "agent_key_relay_written_total", "") + metricSum(t, b.Registry(), "agent_key_relay_written_total", "")
	if written < 2 {
		t.Fatalf("relayed written by the peers: %v", written)
	}
	// The new data key works on the cut-off agent and at the control plane.
	env, err := c.Keys().Encrypt(ctx, cpapi.TelemetryKeyName, []byte("sealed while cut off"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := cp.srv.KeyService().Decrypt(ctx, cpapi.TelemetryKeyName, env, nil); err != nil || string(pt) != "sealed while cut off" {
		t.Fatalf("control plane opens %q, %v", pt, err)
	}
	waitFor(t, 30*time.Second, "the gossip keyrings follow", func() (bool, string) {
		for _, x := range agents {
			if gossipPrimary(x) != 2 {
				return false, x.Name() + " gossip primary not v2"
			}
		}
		return allAlive(agents)
	})

	// Heal: the agent fetches for itself, holds everything already, and
	// no refusal surfaces; the relay collection empties.
	cut.Store(false)
	healed := time.Now()
	waitFor(t, 30*time.Second, "healed uplink fetches keys without errors", func() (bool, string) {
		st := c.Uplink().Status()
		if st.LastKeyFetch.Before(healed) || st.LastError != "" {
			return false, "uplink: last key fetch " + st.LastKeyFetch.String() + ", error " + st.LastError
		}
		return true, ""
	})
	waitFor(t, 30*time.Second, "keys.relay empties everywhere", func() (bool, string) {
		for _, x := range agents {
			es, err := x.Store().List(ctx, KeyRelayCollection)
			if err != nil || len(es) != 0 {
				return false, x.Name() + " still holds relay entries"
			}
		}
		return true, ""
	})
	for _, x := range agents {
		for _, reason := range []string{"malformed", "bad_signature", "expired", "below_min_version", "keyring", "dropped_full"} {
			if n := metricSum(t, x.Registry(), "agent_key_relay_rejected_total", reason); n != 0 {
				t.Errorf("%s: %v relay entries rejected as %s", x.Name(), n, reason)
			}
		}
	}
	if tv, gp := telemetryVersion(c), gossipPrimary(c); tv != 2 || gp != 2 {
		t.Fatalf("after healing: telemetry v%d, gossip primary v%d", tv, gp)
	}
}
