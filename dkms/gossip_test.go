package dkms

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"
	"time"
)

func gv(v uint32, act, rm time.Duration) GossipKeyVersion {
	return GossipKeyVersion{Version: v, Key: bytes.Repeat([]byte{byte(v)}, 32), State: StateDecryptOnly, ActivateAt: epoch.Add(act), PrevRemoveAt: epoch.Add(rm)}
}

func TestPlanGossipKeyring(t *testing.T) {
	// v1 from the start; v2 created at +10m (active +11m, v1 removed +71m);
	// v3 created at +20m (active +21m, v2 removed +81m).
	vs := []GossipKeyVersion{gv(3, 21*time.Minute, 81*time.Minute), gv(1, 0, 0), gv(2, 11*time.Minute, 71*time.Minute)}
	for _, c := range []struct {
		at      time.Duration
		primary uint32
		keys    []uint32
	}{
		{5 * time.Minute, 1, []uint32{1, 2, 3}},
		{11 * time.Minute, 2, []uint32{1, 2, 3}},
		{21 * time.Minute, 3, []uint32{1, 2, 3}},
		{71 * time.Minute, 3, []uint32{2, 3}},
		{81 * time.Minute, 3, []uint32{3}},
	} {
		r := PlanGossipKeyring(vs, epoch.Add(c.at))
		if r.Primary != c.primary || !reflect.DeepEqual(r.Versions(), c.keys) {
			t.Errorf("+%v: primary %d keys %v, want %d %v", c.at, r.Primary, r.Versions(), c.primary, c.keys)
		}
		if !bytes.Equal(r.KeyBytes()[0], r.PrimaryKey()) || len(r.KeyBytes()) != len(c.keys) {
			t.Errorf("+%v: KeyBytes does not start with the primary", c.at)
		}
	}
	// Nothing active yet (a new agent that only has a future version): use the oldest.
	if r := PlanGossipKeyring([]GossipKeyVersion{gv(4, time.Hour, 2*time.Hour)}, epoch); r.Primary != 4 {
		t.Fatalf("only a future version: %+v", r)
	}
	// Retired, destroyed and keyless versions are out.
	dead := []GossipKeyVersion{gv(1, 0, 0), gv(2, time.Minute, time.Hour)}
	dead[1].State = StateRetired
	if r := PlanGossipKeyring(dead, epoch.Add(2*time.Minute)); !reflect.DeepEqual(r.Versions(), []uint32{1}) {
		t.Fatalf("retired version planned: %v", r.Versions())
	}
	if r := PlanGossipKeyring(nil, epoch); r.Primary != 0 || r.PrimaryKey() != nil || len(r.KeyBytes()) != 0 {
		t.Fatalf("empty plan %+v", r)
	}
	if next := NextGossipChange(vs, epoch.Add(15*time.Minute)); !next.Equal(epoch.Add(21 * time.Minute)) {
		t.Fatalf("next change %v", next)
	}
	if next := NextGossipChange(vs, epoch.Add(90*time.Minute)); !next.IsZero() {
		t.Fatalf("next change after the last %v", next)
	}
}

func TestGossipStepsOrder(t *testing.T) {
	target := GossipKeyring{Primary: 3, Keys: []GossipKeyVersion{gv(2, 0, 0), gv(3, 0, 0)}}
	installed := map[uint32][]byte{1: {1}, 2: {2}}
	steps := GossipSteps(installed, 1, target)
	var kinds []string
	for _, s := range steps {
		kinds = append(kinds, fmt.Sprintf("%s %d", s.Kind, s.Version))
	}
	if want := []string{"install 3", "use 3", "remove 1"}; !reflect.DeepEqual(kinds, want) {
		t.Fatalf("steps %v, want %v", kinds, want)
	}
	if s := GossipSteps(map[uint32][]byte{2: {2}, 3: {3}}, 3, target); len(s) != 0 {
		t.Fatalf("steps for a keyring already on target: %v", s)
	}
}

// simRing follows memberlist's keyring rules: UseKey needs an installed
// key, RemoveKey refuses the primary.
type simRing struct {
	keys    map[uint32][]byte
	primary uint32
}

func (r *simRing) apply(steps []GossipStep) error {
	if r.keys == nil {
		r.keys = map[uint32][]byte{}
	}
	for _, s := range steps {
		switch s.Kind {
		case GossipInstall:
			r.keys[s.Version] = s.Key
		case GossipUse:
			if _, ok := r.keys[s.Version]; !ok {
				return fmt.Errorf("use of uninstalled key v%d", s.Version)
			}
			r.primary = s.Version
		case GossipRemove:
			if s.Version == r.primary {
				return fmt.Errorf("removal of the primary key v%d", s.Version)
			}
			delete(r.keys, s.Version)
		}
	}
	return nil
}

// accepts reports whether a ring decrypts traffic sealed under key.
func (r *simRing) accepts(key []byte) bool {
	for _, k := range r.keys {
		if bytes.Equal(k, key) {
			return true
		}
	}
	return false
}

// TestGossipRotationAcrossFleet rotates the gossip key every 30 s for five
// minutes of simulated time while agents follow the plan each second. Online
// agents always read each other's traffic (one cluster). An agent offline
// for less than the grace period is still heard when it returns and catches
// up; one offline for longer shares no key until it fetches CatchUp.
func TestGossipRotationAcrossFleet(t *testing.T) {
	e, a, b, c := fleet(t)
	pol := Policy{AllAgents: true, InstallGrace: 5 * time.Second, RemoveGrace: 40 * time.Second}
	if _, err := e.svc.CreateKey(ctxb(), "gossip", PurposeGossip, pol); err != nil {
		t.Fatal(err)
	}
	agents := []*testAgent{a, b, c}
	deliver(t, mustDistribute(t, e.svc, "gossip", 1), agents...)
	rings := map[string]*simRing{}
	online := map[string]bool{a.id: true, b.id: true, c.id: true}
	var queued []*KeyMessage // messages for c while it is away

	tick := func() {
		t.Helper()
		for _, ag := range agents {
			if !online[ag.id] {
				continue
			}
			r := rings[ag.id]
			if r == nil {
				r = &simRing{}
				rings[ag.id] = r
			}
			plan, err := ag.keys.GossipKeyring("gossip", e.clock.Now())
			if err != nil {
				t.Fatal(err)
			}
			if err := r.apply(GossipSteps(r.keys, r.primary, plan)); err != nil {
				t.Fatalf("%s at %v: %v", ag.id, e.clock.Now().Sub(epoch), err)
			}
		}
		for _, x := range agents {
			for _, y := range agents {
				if online[x.id] && online[y.id] && !rings[y.id].accepts(rings[x.id].keys[rings[x.id].primary]) {
					t.Fatalf("at +%v %s cannot read %s: split cluster", e.clock.Now().Sub(epoch), y.id, x.id)
				}
			}
		}
	}
	rotate := func() {
		vi, err := e.svc.Rotate(ctxb(), "gossip")
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mustDistribute(t, e.svc, "gossip", vi.Version) {
			if online[m.AgentID] {
				deliver(t, []*KeyMessage{m}, agents...)
			} else {
				queued = append(queued, m)
			}
		}
	}
	run := func(seconds int) {
		for s := range seconds {
			if s > 0 && s%30 == 0 {
				rotate()
			}
			e.clock.Advance(time.Second)
			tick()
		}
	}
	run(60)

	// c leaves for 30 s (less than the 45 s grace) across a rotation.
	online[c.id] = false
	run(20 + 10)
	// Back: the fleet still accepts c's primary, so c is heard and can be given its queued messages.
	online[c.id] = true
	for _, ag := range []*testAgent{a, b} {
		if !rings[ag.id].accepts(rings[c.id].keys[rings[c.id].primary]) {
			t.Fatalf("within the grace period %s does not accept returning c", ag.id)
		}
	}
	deliver(t, queued, c)
	queued = nil
	run(90)

	// c leaves for 3 minutes, several rotations and past every grace period.
	online[c.id] = false
	run(180)
	shared := false
	for _, k := range rings[c.id].keys {
		shared = shared || rings[a.id].accepts(k)
	}
	if shared {
		t.Fatal("after the grace period the returning agent still shares a key: test premise broken")
	}
	// It must fetch CatchUp from the control plane; then it follows the plan again.
	msgs, err := e.svc.CatchUp(ctxb(), c.id)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Key == "gossip" {
			if _, err := c.keys.Accept(ctxb(), msgBytes(t, m)); err != nil {
				t.Fatal(err)
			}
		}
	}
	online[c.id] = true
	run(60)
	if len(rings[a.id].keys) > 3 {
		t.Fatalf("keyring grows without bound: %d keys", len(rings[a.id].keys))
	}
	cp, err := e.svc.GossipKeyring(ctxb(), "gossip", e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(cp.PrimaryKey(), rings[a.id].keys[rings[a.id].primary]) {
		t.Fatal("control plane and agents disagree on the primary gossip key")
	}
	for _, k := range cp.Keys {
		if len(k.Key) != 32 {
			t.Fatalf("gossip key of %d bytes, memberlist wants 32 for AES-256", len(k.Key))
		}
	}
}
