package membership

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/hashicorp/memberlist"
)

func TestPartitionBlocksBetweenGroupsOnly(t *testing.T) {
	p := NewPartition()
	a, b, c, free := "127.0.0.1:1001", "127.0.0.1:1002", "127.0.0.1:1003", "127.0.0.1:1009"
	if p.blocked(a, c) {
		t.Fatal("healed partition blocks")
	}
	p.Split([]string{a, b}, []string{"127.0.0.1:01003"})
	cases := []struct {
		from, to string
		blocked  bool
	}{
		{a, b, false}, {a, c, true}, {c, b, true}, {a, free, false}, {free, c, false},
		{a, "[::ffff:127.0.0.1]:1003", true},
	}
	for _, cs := range cases {
		if got := p.blocked(CanonicalAddr(cs.from), cs.to); got != cs.blocked {
			t.Errorf("%s -> %s: blocked=%v", cs.from, cs.to, got)
		}
	}
	p.Heal()
	if p.blocked(a, c) {
		t.Fatal("Heal did not heal")
	}
}

func TestPartitionedTransportDropsAndRefuses(t *testing.T) {
	mock := &memberlist.MockNetwork{}
	ta, tb := mock.NewTransport("a"), mock.NewTransport("b")
	addrOf := func(tr *memberlist.MockTransport) string {
		ip, port, err := tr.FinalAdvertiseAddr("", 0)
		if err != nil {
			t.Fatal(err)
		}
		return net.JoinHostPort(ip.String(), fmt.Sprint(port))
	}
	aAddr, bAddr := addrOf(ta), addrOf(tb)
	got := make(chan string, 10)
	go func() { // the mock delivers synchronously: keep reading
		for pkt := range tb.PacketCh() {
			got <- string(pkt.Buf)
		}
	}()
	p := NewPartition()
	wa := p.Wrap(ta, aAddr).(memberlist.NodeAwareTransport)
	p.Split([]string{aAddr}, []string{bAddr})
	if _, err := wa.WriteTo([]byte("x"), bAddr); err != nil {
		t.Fatal(err)
	}
	if _, err := wa.WriteToAddress([]byte("x"), memberlist.Address{Addr: bAddr, Name: "b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := wa.DialTimeout(bAddr, time.Second); err == nil {
		t.Fatal("dial crossed the partition")
	}
	if _, err := wa.DialAddressTimeout(memberlist.Address{Addr: bAddr, Name: "b"}, time.Second); err == nil || !strings.Contains(err.Error(), "partitioned") {
		t.Fatalf("dial error %v", err)
	}
	p.Heal()
	if _, err := wa.WriteToAddress([]byte("y"), memberlist.Address{Addr: bAddr, Name: "b"}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != "y" {
			t.Fatalf("packet %q crossed the partition", s)
		}
	case <-time.After(time.Second):
		t.Fatal("packet lost after heal")
	}
}

func TestPeerTableStableVVAndLag(t *testing.T) {
	clk := clock.NewManual(time.Unix(1000, 0))
	pt := NewTable("self", clk)
	node := func(name string) *memberlist.Node {
		return &memberlist.Node{Name: name, Addr: net.IPv4(127, 0, 0, 1), Port: 1}
	}
	pt.Upsert(node("self"), StateAlive, NodeMeta{})
	pt.Upsert(node("b"), StateAlive, NodeMeta{})
	pt.Upsert(node("c"), StateAlive, NodeMeta{})
	self := crdt.VersionVector{"self": 5, "b": 3}
	if _, ok := pt.StableVV(self); ok {
		t.Fatal("stable VV without reports from every live member")
	}
	pt.SetVV("b", crdt.VersionVector{"self": 4, "b": 7})
	pt.SetVV("c", crdt.VersionVector{"self": 5, "b": 2})
	pt.SetVV("c", crdt.VersionVector{"self": 1, "b": 3}) // older report: merged, never lowered
	stable, ok := pt.StableVV(self)
	if !ok || stable["self"] != 4 || stable["b"] != 3 {
		t.Fatalf("stable = %v %v", stable, ok)
	}
	if lag := pt.Lag(self); lag != 4 { // b holds b:4..7 that self lacks
		t.Fatalf("lag = %d", lag)
	}
	// A failed member still bounds stability; one that left does not.
	pt.Upsert(node("d"), StateAlive, NodeMeta{})
	pt.Upsert(node("d"), StateDead, NodeMeta{})
	if _, ok := pt.StableVV(self); ok {
		t.Fatal("stable VV without a report from a failed member")
	}
	pt.SetVV("d", crdt.VersionVector{"self": 1})
	if stable, _ := pt.StableVV(self); stable["self"] != 1 {
		t.Fatalf("failed member ignored: %v", stable)
	}
	if !pt.MarkLeaving("d") || pt.StateOf("d") != StateLeft {
		t.Fatal("leave intent after failure not recorded")
	}
	if stable, _ := pt.StableVV(self); stable["self"] != 4 {
		t.Fatalf("left member still counted: %v", stable)
	}
	// Leave intent first, then down: left.
	pt.MarkLeaving("c")
	pt.Upsert(node("c"), StateDead, NodeMeta{})
	if pt.StateOf("c") != StateLeft {
		t.Fatal("member that announced leaving recorded as failed")
	}
	// Reaping forgets old failures and departures.
	clk.Advance(time.Hour)
	if gone := pt.Reap(30 * time.Minute); len(gone) != 2 {
		t.Fatalf("reaped %v", gone)
	}
}

// TestMemberlistLoggerComponentOnce: every memberlist line, forwarded or
// counted as a rejection, names its component exactly once.
func TestMemberlistLoggerComponentOnce(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var rejected []string
	ml := Logger(l, func(reason string) { rejected = append(rejected, reason) })
	ml.Printf("[DEBUG] memberlist: Stream connection from=127.0.0.1:1234")
	ml.Printf("[WARN] memberlist: failed to decode packet: no installed keys could decrypt the message")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || len(rejected) != 1 || rejected[0] != ReasonDecrypt {
		t.Fatalf("lines %q, rejected %v", lines, rejected)
	}
	for _, line := range lines {
		if n := strings.Count(line, "component="); n != 1 || !strings.Contains(line, "component=memberlist") {
			t.Errorf("%d component keys in %q", n, line)
		}
	}
}

// TestFleetClocks: the fleet's clocks are the sane readings of alive peers,
// aged on the local clock, until ClockSampleTTL.
func TestFleetClocks(t *testing.T) {
	clk := clock.NewManual(time.Unix(0, 0)) // the local wall clock is no help
	pt := NewTable("self", clk)
	for _, n := range []string{"self", "b", "c", "d"} {
		pt.Upsert(&memberlist.Node{Name: n, Addr: net.IPv4(127, 0, 0, 1), Port: 1}, StateAlive, NodeMeta{})
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	pt.SetClock("self", now, true)                   // not a peer
	pt.SetClock("b", now, true)                      // counts
	pt.SetClock("c", time.Unix(5, 0), false)         // its own clock is wrong: ignored
	pt.SetClock("d", now.Add(time.Second), true)     // counts until it goes down
	pt.SetClock("unknown", now.Add(time.Hour), true) // not a member
	clk.Advance(30 * time.Second)
	got := pt.FleetClocks()
	sort.Slice(got, func(i, j int) bool { return got[i].Before(got[j]) })
	if len(got) != 2 || !got[0].Equal(now.Add(30*time.Second)) || !got[1].Equal(now.Add(31*time.Second)) {
		t.Fatalf("fleet clocks %v", got)
	}
	pt.Upsert(&memberlist.Node{Name: "d", Addr: net.IPv4(127, 0, 0, 1), Port: 1}, StateDead, NodeMeta{})
	pt.SetClock("b", time.Unix(9, 0), false) // b's clock turned wrong: its old reading goes
	if got := pt.FleetClocks(); len(got) != 0 {
		t.Fatalf("fleet clocks %v", got)
	}
	pt.SetClock("b", now, true)
	clk.Advance(ClockSampleTTL + time.Second)
	if got := pt.FleetClocks(); len(got) != 0 {
		t.Fatalf("expired fleet clocks %v", got)
	}
}
