package membership

import (
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
)

// mlNames lists the members memberlist itself holds alive or suspect.
func mlNames(c *Cluster) []string {
	var out []string
	for _, n := range c.Memberlist().Members() {
		out = append(out, n.Name)
	}
	slices.Sort(out)
	return out
}

// TestRefusedMemberIsDroppedAndKeptOut: once a and b refuse x, memberlist
// on both declares x dead (its traffic is dropped, its refutations are
// refused) and x cannot come back; a node refused before it joins never
// gets in; a and b stay members of each other throughout.
func TestRefusedMemberIsDroppedAndKeptOut(t *testing.T) {
	var mock memberlist.MockNetwork
	// Transports of the late joiners first: the mock network's registry
	// is not safe while others send.
	trZ, trW := mock.NewTransport("z"), mock.NewTransport("w")
	a, _ := startTestCluster(t, &mock, "a")
	b, _ := startTestCluster(t, &mock, "b", a.Addr())
	x, _ := startTestCluster(t, &mock, "x", a.Addr())
	for deadline := time.Now().Add(5 * time.Second); len(mlNames(a)) != 3 || len(mlNames(b)) != 3 || len(mlNames(x)) != 3; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no cluster of three: a %v, b %v, x %v", mlNames(a), mlNames(b), mlNames(x))
		}
	}
	var rejects atomic.Int64
	a.cfg.Reject = func(reason string) {
		if reason == ReasonRevoked {
			rejects.Add(1)
		}
	}
	a.SetRefused(map[string]bool{"x": true, "a": true}) // its own name is never refused
	b.SetRefused(map[string]bool{"x": true})
	if a.Refused("a") || !a.Refused("x") {
		t.Fatal("a refuses itself or not x")
	}
	for _, p := range a.Alive() {
		if p.Name == "x" {
			t.Fatal("Alive lists a refused member")
		}
	}
	want := []string{"a", "b"}
	for deadline := time.Now().Add(10 * time.Second); !slices.Equal(mlNames(a), want) || !slices.Equal(mlNames(b), want); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("refused x still a member: a %v, b %v", mlNames(a), mlNames(b))
		}
	}
	// x tries to come back: refused.
	x.Memberlist().Join([]string{a.Addr()}) //nolint:errcheck // refused or not, it must stay out
	time.Sleep(500 * time.Millisecond)
	if !slices.Equal(mlNames(a), want) || !slices.Equal(mlNames(b), want) {
		t.Fatalf("x came back: a %v, b %v", mlNames(a), mlNames(b))
	}
	if rejects.Load() == 0 {
		t.Fatal("a counted no revoked traffic")
	}
	// A node refused before it ever joined stays out.
	a.SetRefused(map[string]bool{"x": true, "z": true})
	b.SetRefused(map[string]bool{"x": true, "z": true})
	startTestClusterOn(t, trZ, "z", a.Addr())
	time.Sleep(500 * time.Millisecond)
	if !slices.Equal(mlNames(a), want) || !slices.Equal(mlNames(b), want) {
		t.Fatalf("refused z got in: a %v, b %v", mlNames(a), mlNames(b))
	}
	startTestClusterOn(t, trW, "w", a.Addr()) // not refused: joins
	for deadline := time.Now().Add(5 * time.Second); !slices.Contains(mlNames(a), "w"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("w did not join: %v", mlNames(a))
		}
	}
}
