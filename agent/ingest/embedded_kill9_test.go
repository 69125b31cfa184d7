package ingest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// TestHelperEmbeddedProcess is the agent process of TestEmbeddedKill9:
// an embedded broker with an Ingestor attached, until killed.
func TestHelperEmbeddedProcess(t *testing.T) {
	dir, addr := os.Getenv("INGEST_EMBEDDED_DIR"), os.Getenv("INGEST_EMBEDDED_ADDR")
	if dir == "" {
		t.Skip("helper process of TestEmbeddedKill9")
	}
	fail := func(err error) {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	var b *Broker
	var err error
	for i := 0; ; i++ { // the killed process's port may take a moment to free
		if b, err = StartBroker(BrokerConfig{Addr: addr, Ingest: true}); err == nil {
			break
		} else if i == 100 {
			fail(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	in, err := New(Config{DataDir: dir, Embedded: b})
	if err != nil {
		fail(err)
	}
	if err := in.Start(context.Background()); err != nil {
		fail(err)
	}
	fmt.Println("ready")
	time.Sleep(time.Hour)
}

func startEmbeddedHelper(t *testing.T, dir, addr string) *exec.Cmd {
	t.Helper()
	return startTestProcess(t, "TestHelperEmbeddedProcess", "start", "INGEST_EMBEDDED_DIR="+dir, "INGEST_EMBEDDED_ADDR="+addr)
}

// ackStore is a paho store that sees the device's acknowledgements: paho
// deletes an outbound QoS 1 publish from its store exactly when the
// broker's PUBACK for it arrives.
type ackStore struct {
	mqtt.Store
	mu      sync.Mutex
	pending map[string]int // outbound key -> seq
	acked   map[int]bool
}

func newAckStore() *ackStore {
	return &ackStore{Store: mqtt.NewMemoryStore(), pending: map[string]int{}, acked: map[int]bool{}}
}

func (s *ackStore) Put(key string, m packets.ControlPacket) {
	if p, ok := m.(*packets.PublishPacket); ok && strings.HasPrefix(key, "o.") {
		seq, err := strconv.Atoi(strings.TrimSuffix(string(p.Payload[bytes.LastIndexByte(p.Payload, ':')+1:]), "}"))
		if err == nil {
			s.mu.Lock()
			s.pending[key] = seq
			s.mu.Unlock()
		}
	}
	s.Store.Put(key, m)
}

func (s *ackStore) Del(key string) {
	s.mu.Lock()
	if seq, ok := s.pending[key]; ok {
		s.acked[seq] = true
		delete(s.pending, key)
	}
	s.mu.Unlock()
	s.Store.Del(key)
}

func (s *ackStore) counts() (acked, pending int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.acked), len(s.pending)
}

// TestEmbeddedKill9: devices publish QoS 1 with paho (persistent
// sessions, many messages in flight) to the embedded broker of an agent
// process that is killed with SIGKILL twice mid-stream and restarted.
// Every message whose PUBACK a device received is stored, and no
// message is stored twice, though devices send their unacknowledged
// messages again (DUP) after reconnecting: half of the messages carry
// no time, so only the redelivery de-duplication keeps them single.
func TestEmbeddedKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	helper := startEmbeddedHelper(t, dir, addr)
	defer func() { helper.Process.Kill(); helper.Wait() }()

	const devices, perDevice, window = 4, 1500, 200
	stores := make([]*ackStore, devices)
	var sent atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, devices)
	for d := 0; d < devices; d++ {
		stores[d] = newAckStore()
		opts := mqtt.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(fmt.Sprintf("k9-%d", d)).
			SetCleanSession(false).SetStore(stores[d]).SetOrderMatters(false).
			SetAutoReconnect(true).SetConnectRetry(true).SetConnectRetryInterval(50 * time.Millisecond).
			SetMaxReconnectInterval(100 * time.Millisecond).SetConnectTimeout(2 * time.Second)
		c := mqtt.NewClient(opts)
		if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("connect: %v", tok.Error())
		}
		defer c.Disconnect(50)
		wg.Add(1)
		go func(d int, c mqtt.Client) {
			defer wg.Done()
			topic := fmt.Sprintf("devices/k9-%d/telemetry", d)
			base := time.Now().Add(-time.Hour).UnixMicro()
			var toks []mqtt.Token
			for i := 0; i < perDevice; i++ {
				seq := d*perDevice + i
				payload := fmt.Sprintf(`{"rt":%d}`, seq) // receive time
				if i%2 == 1 {
					payload = fmt.Sprintf(`{"ts":%.6f,"st":%d}`, float64(base+int64(i))/1e6, seq)
				}
				toks = append(toks, c.Publish(topic, 1, false, payload))
				sent.Add(1)
				if len(toks) == window {
					for _, tok := range toks[:window/2] {
						if !tok.WaitTimeout(30 * time.Second) {
							errs <- fmt.Errorf("device %d: publish not completed in 30 s", d)
							return
						}
					}
					toks = append(toks[:0], toks[window/2:]...)
				}
			}
		}(d, c)
	}
	kills := 0
	for _, at := range []int64{devices * perDevice / 3, 2 * devices * perDevice / 3} {
		waitFor(t, fmt.Sprintf("%d messages sent", at), func() bool { return sent.Load() >= at })
		helper.Process.Signal(syscall.SIGKILL)
		helper.Wait()
		kills++
		acked := 0
		for _, s := range stores {
			a, _ := s.counts()
			acked += a
		}
		t.Logf("kill -9 with %d sent, %d acknowledged", sent.Load(), acked)
		helper = startEmbeddedHelper(t, dir, addr)
	}
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		pending := 0
		for _, s := range stores {
			_, p := s.counts()
			pending += p
		}
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d messages still unacknowledged after 60 s", pending)
		}
		time.Sleep(20 * time.Millisecond)
	}
	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()

	st, err := OpenStore(StoreConfig{Path: dir + "/" + StoreFile})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	stored := map[int]int{}
	for d := 0; d < devices; d++ {
		for _, metric := range []string{"rt", "st"} {
			rs, err := st.Readings(context.Background(), ReadingQuery{Device: fmt.Sprintf("k9-%d", d), Metric: metric, Limit: 10 * perDevice})
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rs {
				stored[int(r.Value)]++
			}
		}
	}
	acked := 0
	for _, s := range stores {
		for seq := range s.acked {
			acked++
			if stored[seq] == 0 {
				t.Errorf("message %d acknowledged to its device but not stored", seq)
			}
		}
	}
	for seq, n := range stored {
		if n > 1 {
			t.Errorf("message %d stored %d times", seq, n)
		}
	}
	stats, err := st.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kills %d: %d acknowledged, %d stored, %d redelivered receive-time messages skipped, %d duplicate readings ignored",
		kills, acked, len(stored), stats.DuplicateMessages, stats.DuplicateReadings)
	if acked != devices*perDevice || len(stored) != devices*perDevice {
		t.Fatalf("%d acknowledged and %d stored of %d", acked, len(stored), devices*perDevice)
	}
}
