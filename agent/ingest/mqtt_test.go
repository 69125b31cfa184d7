package ingest

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

var kill9Messages = flag.Int("ingest.kill9", 12000, "messages TestMosquittoKill9 publishes")

func startMosquitto(t *testing.T, o mqtttest.Options) *mqtttest.Mosquitto {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	m, err := mqtttest.Start(o)
	if errors.Is(err, mqtttest.ErrNoMosquitto) {
		t.Skip("mosquitto is not installed (Debian: apt-get install mosquitto mosquitto-clients; scripts/test.sh installs it): skipping")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.Stop()
		if t.Failed() {
			t.Logf("mosquitto log:\n%s", m.Log())
		}
	})
	return m
}

func needBinary(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (Debian package mosquitto-clients): skipping", name)
	}
	return p
}

// mosquittoPub publishes lines (one message each) with the real
// mosquitto_pub at QoS 1.
func mosquittoPub(t *testing.T, m *mqtttest.Mosquitto, topic string, lines []string) {
	t.Helper()
	bin := needBinary(t, "mosquitto_pub")
	cmd := exec.Command(bin, "-h", "127.0.0.1", "-p", strconv.Itoa(m.Port()), "-q", "1", "-t", topic, "-l")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_pub: %v: %s", err, out)
	}
}

func waitSubscribed(t *testing.T, in *Ingestor) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := in.WaitSubscribed(ctx); err != nil {
		t.Fatal(err)
	}
}

func startMQTTIngestor(t *testing.T, broker, clientID, dir string, rec *recorder) *Ingestor {
	t.Helper()
	cfg := Config{DataDir: dir, MQTT: MQTTConfig{Broker: broker, ClientID: clientID, MaxReconnectInterval: 200 * time.Millisecond}}
	if rec != nil {
		cfg.Sink, cfg.Devices = rec, rec
	}
	in, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	return in
}

func waitMessages(t *testing.T, dir string, want int64) InspectReport {
	t.Helper()
	var rep InspectReport
	waitFor(t, fmt.Sprintf("%d messages committed", want), func() bool {
		var err error
		rep, err = Inspect(dir)
		return err == nil && rep.Stats.Messages >= want
	})
	return rep
}

// TestMosquittoIngest: live traffic and a backlog queued while the agent
// was away, published with mosquitto_pub; malformed payloads are
// dead-lettered with their reasons while valid traffic flows.
func TestMosquittoIngest(t *testing.T) {
	m := startMosquitto(t, mqtttest.Options{})
	dir := t.TempDir()
	rec := &recorder{}
	in := startMQTTIngestor(t, m.URL(), "agent-test-1", dir, rec)
	waitSubscribed(t, in)
	now := time.Now().Unix()
	var lines []string
	malformed := []string{`not json`, `{"t":"hot"}`, `[{"n":"x","v":1e999}]`, `{"x":1,"ts":99999999999}`, `[{"n":"bad name","v":1}]`, `{}`}
	for i := 0; i < 600; i++ {
		if i%3 == 2 {
			lines = append(lines, malformed[(i/3)%len(malformed)])
			continue
		}
		lines = append(lines, fmt.Sprintf(`[{"bn":"s%d:","bt":%d,"n":"temp","u":"Cel","v":%d},{"n":"hum","v":40}]`, i%7, now-int64(i), i))
	}
	mosquittoPub(t, m, "devices/dev-a/telemetry", lines)
	rep := waitMessages(t, dir, 600)
	if rep.Readings != 800 || rep.DeadLetters != 200 {
		t.Fatalf("live: %d readings, %d dead letters; want 800, 200 (%+v)", rep.Readings, rep.DeadLetters, rep.DeadLetterReasons)
	}
	for _, r := range []Reason{ReasonSyntax, ReasonSchema, ReasonNotFinite, ReasonTime, ReasonName, ReasonEmpty} {
		if rep.DeadLetterReasons[r] == 0 {
			t.Errorf("no dead letter with reason %s: %v", r, rep.DeadLetterReasons)
		}
	}
	// Away: the broker queues for the persistent session.
	if err := in.Stop(); err != nil {
		t.Fatal(err)
	}
	lines = lines[:0]
	for i := 0; i < 1000; i++ {
		lines = append(lines, fmt.Sprintf(`{"co2":%d,"ts":%d.%06d}`, 400+i, now-3600, i))
	}
	mosquittoPub(t, m, "devices/dev-b/telemetry", lines)
	in = startMQTTIngestor(t, m.URL(), "agent-test-1", dir, nil)
	defer in.Stop()
	rep = waitMessages(t, dir, 1600)
	if rep.Readings != 1800 || rep.Stats.DuplicateReadings != 0 || len(rep.Devices) != 2 {
		t.Fatalf("after the backlog: %+v", rep)
	}
}

// TestHelperIngestProcess is the agent process of TestMosquittoKill9: it
// ingests until killed.
func TestHelperIngestProcess(t *testing.T) {
	dir, broker := os.Getenv("INGEST_HELPER_DIR"), os.Getenv("INGEST_HELPER_BROKER")
	if dir == "" {
		t.Skip("helper process of TestMosquittoKill9")
	}
	in, err := New(Config{DataDir: dir, MQTT: MQTTConfig{Broker: broker, ClientID: "agent-kill9", MaxReconnectInterval: 100 * time.Millisecond}})
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	if err := in.Start(context.Background()); err != nil {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := in.WaitSubscribed(ctx); err != nil {
		fmt.Println("error:", err)
		os.Exit(2)
	}
	fmt.Println("ready")
	time.Sleep(time.Hour)
}

func startHelper(t *testing.T, dir, broker string) *exec.Cmd {
	t.Helper()
	return startTestProcess(t, "TestHelperIngestProcess", "subscribe", "INGEST_HELPER_DIR="+dir, "INGEST_HELPER_BROKER="+broker)
}

// startTestProcess re-executes the test binary running only the test
// named run, with env added, and waits until it prints "ready" (an
// "error..." line or 30 s without it fails the test: it did not what).
func startTestProcess(t *testing.T, run, what string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+run+"$", "-test.timeout=2h")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if l := sc.Text(); l == "ready" || strings.HasPrefix(l, "error") {
				select {
				case ready <- l:
				default:
				}
			}
		}
	}()
	select {
	case l := <-ready:
		if l != "ready" {
			t.Fatalf("helper: %s", l)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("helper did not %s", what)
	}
	return cmd
}

// TestMosquittoKill9: QoS 1 messages published with mosquitto_pub while
// the agent process is killed with SIGKILL twice; after restart and drain every message is
// stored exactly once. A third of the messages carry no time (their
// readings take the receive time), exercising redelivery
// de-duplication by packet id; the rest carry times.
func TestMosquittoKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("-short")
	}
	m := startMosquitto(t, mqtttest.Options{})
	dir := t.TempDir()
	helper := startHelper(t, dir, m.URL())
	defer func() { helper.Process.Kill(); helper.Wait() }()

	total := *kill9Messages
	// The real mosquitto_pub, QoS 1, one message per line of its stdin;
	// lines are written as the test goes, so the kills land mid-stream.
	// One mosquitto_pub publishes at most pubChunk lines: with -l it
	// takes the packet id of its last line for the end of the stream,
	// and packet ids wrap at 65535, so a longer stream that it reads
	// faster than the broker acknowledges ends early (it disconnects when
	// an earlier message with that id is acknowledged).
	const pubChunk = 50000
	bin := needBinary(t, "mosquitto_pub")
	var (
		pubCmd *exec.Cmd
		stdin  io.WriteCloser
		w      *bufio.Writer
		pubOut *strings.Builder
	)
	endPublisher := func() {
		if err := w.Flush(); err != nil {
			t.Fatalf("write to mosquitto_pub: %v: %s", err, pubOut)
		}
		stdin.Close()
		if err := pubCmd.Wait(); err != nil {
			t.Fatalf("mosquitto_pub: %v: %s", err, pubOut)
		}
	}
	base := time.Now().Add(-time.Hour).UnixMicro()
	kills := 0
	for i := 0; i < total; i++ {
		if i%pubChunk == 0 {
			if pubCmd != nil {
				endPublisher()
			}
			pubCmd = exec.Command(bin, "-h", "127.0.0.1", "-p", strconv.Itoa(m.Port()), "-q", "1", "-i", "kill9-publisher",
				"-t", "devices/k9/telemetry", "-l")
			var err error
			if stdin, err = pubCmd.StdinPipe(); err != nil {
				t.Fatal(err)
			}
			pubOut = &strings.Builder{}
			pubCmd.Stdout, pubCmd.Stderr = pubOut, pubOut
			if err := pubCmd.Start(); err != nil {
				t.Fatal(err)
			}
			w = bufio.NewWriter(stdin)
		}
		if i%3 == 0 {
			fmt.Fprintf(w, "{\"seq_rt\":%d}\n", i%97) // repeats: identical payloads are distinct readings
		} else {
			fmt.Fprintf(w, "{\"seq\":%d,\"ts\":%.6f}\n", i, float64(base+int64(i))/1e6)
		}
		if i%500 == 499 {
			if err := w.Flush(); err != nil {
				t.Fatalf("write to mosquitto_pub: %v: %s", err, pubOut)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if i == total/3 || i == 2*total/3 {
			// kill -9 mid-stream, then restart.
			w.Flush()
			time.Sleep(50 * time.Millisecond)
			helper.Process.Signal(syscall.SIGKILL)
			helper.Wait()
			kills++
			helper = startHelper(t, dir, m.URL())
		}
	}
	endPublisher()
	var rep InspectReport
	var err error
	deadline := time.Now().Add(60 * time.Second)
	for {
		rep, err = Inspect(dir)
		if err == nil && rep.Readings >= int64(total) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 60 s: %d of %d readings stored (%v); stats %+v; broker: %s", rep.Readings, total, err, rep.Stats, brokerSys(m.Port()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let late redeliveries arrive
	helper.Process.Signal(syscall.SIGKILL)
	helper.Wait()
	rep, err = Inspect(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kills %d: readings %d, dead letters %d, duplicate readings %d, duplicate messages %d",
		kills, rep.Readings, rep.DeadLetters, rep.Stats.DuplicateReadings, rep.Stats.DuplicateMessages)
	if rep.Readings != int64(total) || rep.DeadLetters != 0 {
		t.Fatalf("stored %d readings and %d dead letters; want exactly %d and 0", rep.Readings, rep.DeadLetters, total)
	}
	// Each message once: every timed sequence number, and each
	// receive-time value as often as it was published.
	st, err := OpenStore(StoreConfig{Path: filepath.Join(dir, StoreFile)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	want := map[string]map[int]int{"seq": {}, "seq_rt": {}}
	for i := 0; i < total; i++ {
		if i%3 == 0 {
			want["seq_rt"][i%97]++
		} else {
			want["seq"][i]++
		}
	}
	for metric, counts := range want {
		rs, err := st.Readings(context.Background(), ReadingQuery{Device: "k9", Metric: metric, Limit: total})
		if err != nil {
			t.Fatal(err)
		}
		got := map[int]int{}
		for _, r := range rs {
			got[int(r.Value)]++
		}
		for v, n := range counts {
			if got[v] != n {
				t.Errorf("%s %d stored %d times, published %d times", metric, v, got[v], n)
			}
		}
		if len(got) != len(counts) {
			t.Errorf("%s: %d distinct values stored, %d published", metric, len(got), len(counts))
		}
	}
}

// TestMosquittoAuthTLS: username/password and an ssl:// listener.
func TestMosquittoAuthTLS(t *testing.T) {
	needBinary(t, "mosquitto_passwd")
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	m := startMosquitto(t, mqtttest.Options{Dir: dir, Users: map[string]string{"agent": "s3cret"}, CertFile: certFile, KeyFile: keyFile})
	if !strings.HasPrefix(m.URL(), "ssl://") {
		t.Fatalf("url %s", m.URL())
	}
	tlsCfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	// Wrong password: never subscribed.
	bad, err := New(Config{DataDir: t.TempDir(), MQTT: MQTTConfig{Broker: m.URL(), ClientID: "auth-bad", Username: "agent", Password: "nope",
		TLSConfig: tlsCfg, MaxReconnectInterval: 100 * time.Millisecond, ConnectTimeout: time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	bad.Start(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	if err := bad.WaitSubscribed(ctx); err == nil {
		t.Fatal("subscribed with a wrong password")
	}
	cancel()
	bad.Stop()
	data := t.TempDir()
	in, err := New(Config{DataDir: data, MQTT: MQTTConfig{Broker: m.URL(), ClientID: "auth-good", Username: "agent", Password: "s3cret", TLSConfig: tlsCfg}})
	if err != nil {
		t.Fatal(err)
	}
	in.Start(context.Background())
	defer in.Stop()
	waitSubscribed(t, in)
	opts := mqtt.NewClientOptions().AddBroker(m.URL()).SetClientID("auth-pub").SetUsername("agent").SetPassword("s3cret").SetTLSConfig(tlsCfg)
	pub := mqtt.NewClient(opts)
	if tok := pub.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	defer pub.Disconnect(100)
	if tok := pub.Publish("devices/secure/telemetry", 1, false, `{"x":1}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	if rep := waitMessages(t, data, 1); rep.Readings != 1 || rep.Devices[0].ID != "secure" {
		t.Fatalf("%+v", rep)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and returns its files
// and a pool trusting it.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

// brokerSys reads Mosquitto's own counters ($SYS, published every
// sys_interval) for a failure message: what it received and sent and what
// it still holds. (publish/messages/received was seen to lag the messages
// the agent stored: a hint, not a count.)
func brokerSys(port int) string {
	bin, err := exec.LookPath("mosquitto_sub")
	if err != nil {
		return "mosquitto_sub not installed"
	}
	out, _ := exec.Command(bin, "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-v", "-W", "12",
		"-t", "$SYS/broker/publish/messages/received", "-t", "$SYS/broker/publish/messages/sent",
		"-t", "$SYS/broker/store/messages/count", "-t", "$SYS/broker/clients/connected", "-C", "4").CombinedOutput()
	return strings.ReplaceAll(strings.TrimSpace(string(out)), "\n", "; ")
}
