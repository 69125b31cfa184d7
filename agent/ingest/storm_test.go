package ingest

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/edgefleet/edgefleet/agent/devcred"
	"github.com/edgefleet/edgefleet/internal/testutil"
)

// TestBrokerLoginStorm: 10,000 connection attempts with a wrong password,
// 1,000 malformed CONNECT packets and 1,000 over-long client ids, from
// 16 addresses, while a valid device publishes. The broker stays up,
// its memory stays bounded, every refusal is counted, and the device's
// publish rate is measured with and without the storm (logged; the
// figure is reported, the test only guards against starvation).
func TestBrokerLoginStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("storm of 12,000 connections; skipped with -short")
	}
	lim := BrokerLimits{MaxConnections: 1024, MaxConnectionsPerAddress: 64, ConnectTimeout: 5 * time.Second,
		MaxClientIDLen: 128, MaxPacketBytes: 128 << 10, MessageRate: 100_000, MessageBurst: 100_000,
		LoginDelay: 20 * time.Millisecond, LoginMaxDelay: 320 * time.Millisecond, Offenders: 4096}
	// The device registry's credentials: every wrong secret costs a
	// PBKDF2 derivation, as in the field.
	hash, err := devcred.HashSecret(rand.Reader, "secret-good")
	if err != nil {
		t.Fatal(err)
	}
	b, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", Ingest: true, Limits: lim,
		Auth: &AuthConfig{Identities: []Identity{{Name: "good", Hash: hash,
			Publish: []string{"devices/good/telemetry"}, Subscribe: []string{"devices/good/commands"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	dir := t.TempDir()
	in, err := New(Config{DataDir: dir, Embedded: b})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer in.Stop()

	opts := mqtt.NewClientOptions().AddBroker(b.URL()).SetClientID("good").SetUsername("good").SetPassword("secret-good").
		SetAutoReconnect(false).SetOrderMatters(false)
	dev := mqtt.NewClient(opts)
	if tok := dev.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer dev.Disconnect(100)
	seq := 0
	publish := func(n int) float64 {
		start := time.Now()
		var toks []mqtt.Token
		for i := 0; i < n; i++ {
			seq++
			toks = append(toks, dev.Publish("devices/good/telemetry", 1, false, `{"v":`+strconv.Itoa(seq)+`}`))
			if len(toks) >= 500 {
				for _, tok := range toks {
					if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
						t.Fatalf("publish: %v", tok.Error())
					}
				}
				toks = toks[:0]
			}
		}
		for _, tok := range toks {
			if !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
				t.Fatalf("publish: %v", tok.Error())
			}
		}
		return float64(n) / time.Since(start).Seconds()
	}
	publish(1000) // warm-up
	var calm []float64
	for i := 0; i < 3; i++ {
		calm = append(calm, publish(2000))
	}

	// RSS is read after the freed heap went back to the system: what the
	// storm left behind, not what the runtime has yet to return.
	debug.FreeOSMemory()
	rssBefore, goBefore := procRSS(), runtime.NumGoroutine()
	const wrong, malformed, longIDs = 10_000, 1_000, 1_000
	var attempts, admitted atomic.Int64
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				stormAttempt(t, b.Addr(), i, &admitted)
				attempts.Add(1)
			}
		}()
	}
	stormDone := make(chan struct{})
	go func() {
		for i := 0; i < wrong+malformed+longIDs; i++ {
			jobs <- i
		}
		close(jobs)
		wg.Wait()
		close(stormDone)
	}()
	time.Sleep(200 * time.Millisecond) // the storm under way
	var storm []float64
	var rssPeak float64
	for {
		storm = append(storm, publish(2000))
		rssPeak = max(rssPeak, procRSS())
		select {
		case <-stormDone:
		case <-time.After(200 * time.Millisecond):
			continue
		}
		break
	}
	if admitted.Load() != 0 {
		t.Fatalf("%d storm connections admitted", admitted.Load())
	}
	waitFor(t, "storm connections closed", func() bool { return b.Connections() == 1 })
	debug.FreeOSMemory()
	rssAfter, goAfter := procRSS(), runtime.NumGoroutine()
	ref := b.Refused()
	t.Logf("storm: %d attempts; refused %v", attempts.Load(), ref)
	for i := 0; i < 3; i++ {
		calm = append(calm, publish(2000))
	}
	calmRate, stormRate := median(calm), median(storm)
	t.Logf("valid device: %.0f msg/s calm (median of %d samples before and after), %.0f msg/s during the storm (median of %d), ratio %.2f",
		calmRate, len(calm), stormRate, len(storm), stormRate/calmRate)
	t.Logf("RSS: %.1f MB before, %.1f MB peak during, %.1f MB after; goroutines %d before, %d after",
		rssBefore, rssPeak, rssAfter, goBefore, goAfter)
	if ref[RefusedMalformed] != malformed || ref[RefusedClientID] != longIDs {
		t.Errorf("malformed refused %d, want %d; long client ids %d, want %d", ref[RefusedMalformed], malformed, ref[RefusedClientID], longIDs)
	}
	if got := ref[RefusedBadLogin] + ref[RefusedMaxConnections] + ref[RefusedPerAddress]; got < wrong {
		t.Errorf("wrong-password attempts refused %d times, want at least %d", got, wrong)
	}
	// Under the race detector RSS is mostly its shadow memory, which is
	// never returned (120 MB after a storm that leaves 6 MB without it).
	if rssAfter-rssBefore > 64 && !testutil.RaceEnabled {
		t.Errorf("RSS grew %.1f MB over the storm", rssAfter-rssBefore)
	}
	if goAfter > goBefore+20 {
		t.Errorf("goroutines %d after the storm, %d before", goAfter, goBefore)
	}
	if stormRate < calmRate/10 {
		t.Errorf("valid device starved: %.0f msg/s during the storm, %.0f calm", stormRate, calmRate)
	}
	if err := dev.Publish("devices/good/telemetry", 1, false, `{"v":-1}`); !err.WaitTimeout(10*time.Second) || err.Error() != nil {
		t.Fatalf("valid device after the storm: %v", err.Error())
	}
}

// stormAttempt makes attempt i: a wrong password, a malformed CONNECT or
// an over-long client id, from one of 16 addresses, and reads until the
// broker closes the connection.
func stormAttempt(t *testing.T, addr string, i int, admitted *atomic.Int64) {
	local := fmt.Sprintf("127.0.2.%d", i%16+1)
	r, err := tryDial(local, addr)
	if err != nil {
		return // refused at accept under load: that is a refusal too
	}
	defer r.conn.Close()
	var raw []byte
	switch {
	case i%12 == 0:
		raw = []byte{0x10, 0x0c, 0x00, 0x04, 'M', 'Q', 'X', 'X', 0x04, 0x02, 0x00, 0x3c, 0xff, 0xff}
	case i%12 == 1:
		raw = encodeConnect(connectPacket(5, strings.Repeat("z", 4000), "", ""))
	default:
		raw = encodeConnect(connectPacket(4, fmt.Sprintf("good/guess-%d", i%500), "good", "guess-"+strconv.Itoa(i)))
	}
	if _, err := r.conn.Write(raw); err != nil {
		return
	}
	for {
		pk, err := r.read(4, 20*time.Second)
		if err != nil {
			return
		}
		if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode == 0 {
			admitted.Add(1)
			return
		}
	}
}

func procRSS() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}
