// Package ingestbench measures MQTT ingestion against a real broker:
// how fast durable ingestion (agent/ingest: decode, group commit to
// SQLite, acknowledge after commit) drains a backlog of queued QoS 1
// messages compared with a bare paho subscriber that acknowledges at
// once and stores nothing (same library, broker and stream, same run,
// interleaved rounds) and with mosquitto_sub; and the publish-to-commit
// latency at a fixed publish rate, with the process's resident memory;
// and, with the embedded broker, how fast a few pipelining devices
// publish when each PUBACK waits for the group commit, beside the same
// broker acknowledging at once and storing nothing.
package ingestbench

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent/ingest"
)

// Options configures a run. Zero fields take the defaults named.
type Options struct {
	// Broker is the MQTT broker URL (tcp://host:port). Required. Its
	// in-flight window (mosquitto max_inflight_messages) must not be
	// below the group-commit batch, and its queue (max_queued_messages)
	// must hold Messages: see package ingest.
	Broker string
	// Dir holds the ingestion databases of the rounds. Default: a new
	// temporary directory, removed afterwards.
	Dir string
	// Messages is the backlog size. Default 200000.
	Messages int
	// Rounds is how many interleaved rounds each subscriber drains; the
	// median rate counts. Default 3.
	Rounds int
	// Devices is how many device topics the stream spreads over. Default 10.
	Devices int
	// Rate is the publish rate of the latency run, messages/s. Default 5000.
	Rate int
	// Duration is the length of the latency run. Default 10s.
	Duration time.Duration
	// SkipBacklog and SkipLatency leave one part out.
	SkipBacklog bool
	SkipLatency bool
	// Embedded also measures the embedded broker (package ingest's
	// Broker) with an Ingestor attached: EmbeddedPublishers devices each
	// publish their share of Messages at QoS 1, many in flight, and the
	// rate counts until the last PUBACK (sent after the commit); beside
	// it the same broker without an Ingestor (PUBACK at once, nothing
	// stored), interleaved over Rounds.
	Embedded bool
	// EmbeddedPublishers is how many publishing connections the
	// embedded run uses. Default 4.
	EmbeddedPublishers int
	// EmbeddedTLS adds to the embedded run the same durable drain with
	// the devices connected over TLS (a fresh CA and server certificate,
	// ECDSA P-256, TLS 1.3), logged in with secrets ($7$ hashes) and
	// confined by ACLs, and the broker's limits on (the agent's
	// defaults, the message rate set so high that it is checked on every
	// publish but never trips), interleaved with the others.
	EmbeddedTLS bool
	// MosquittoSub also drains each round's backlog with mosquitto_sub
	// -q 1, when the binary exists. Default on (set NoMosquittoSub to skip).
	NoMosquittoSub bool
	// Malformed replaces this many of each backlog's Messages, spread
	// evenly, with malformed payloads (random bytes, broken JSON, wrong
	// types, NaN, overflowing numbers, a 24 KB array of more records than
	// allowed, far-future times), which the durable subscriber must
	// dead-letter.
	Malformed int
	// BatchMessages and BatchDelay adjust the ingestor's group commit
	// (zero: its defaults).
	BatchMessages int
	BatchDelay    time.Duration
	// AgentCommand, when set, adds the footprint run: it returns the
	// command of a separate agent process (one running RunAgentProcess
	// with the given broker and data directory), whose resident memory
	// is sampled while this process publishes Rate messages/s to it for
	// Duration.
	AgentCommand func(broker, dir string) *exec.Cmd
	// CPUProfile, when set, receives a CPU profile (pprof) of the first
	// durable drain only: what the ingestor spends per message, without
	// the publishing.
	CPUProfile io.Writer
	// Logger receives progress. Nil discards it.
	Logger *slog.Logger
}

// Result holds the figures of a run.
type Result struct {
	Messages  int `json:"messages"`
	Malformed int `json:"malformed"`
	Rounds    int `json:"rounds"`
	// Drain rates, messages/s: median over rounds, and every round.
	DurableRate       float64   `json:"durable_rate"`
	BareRate          float64   `json:"bare_rate"`
	MosquittoSubRate  float64   `json:"mosquitto_sub_rate,omitempty"`
	DurableRates      []float64 `json:"durable_rates"`
	BareRates         []float64 `json:"bare_rates"`
	MosquittoSubRates []float64 `json:"mosquitto_sub_rates,omitempty"`
	RatioBare         float64   `json:"ratio_durable_to_bare"`
	// BufferedBare* is the bare subscriber on the durable subscriber's
	// own connection opener (ingest.OpenBufferedConn, reads and PUBACKs
	// buffered): the ratio to it isolates the cost of durable storage.
	BufferedBareRate   float64   `json:"buffered_bare_rate"`
	BufferedBareRates  []float64 `json:"buffered_bare_rates"`
	RatioBufferedBare  float64   `json:"ratio_durable_to_buffered_bare"`
	RatioMosquittoSub  float64   `json:"ratio_durable_to_mosquitto_sub,omitempty"`
	MeanCommitMessages float64   `json:"mean_commit_messages"` // durable rounds: messages per group commit

	// Latency run.
	LatencyRate     int     `json:"latency_rate"`
	LatencySent     int     `json:"latency_sent"`
	LatencyAchieved float64 `json:"latency_achieved_rate"`
	P50ms           float64 `json:"p50_ms"`
	P90ms           float64 `json:"p90_ms"`
	P99ms           float64 `json:"p99_ms"`
	Maxms           float64 `json:"max_ms"`
	RSSMB           float64 `json:"rss_mb"`      // peak VmRSS sampled during the latency run (whole process)
	HeapMB          float64 `json:"heap_mb"`     // peak Go heap in use during the latency run
	BaseRSSMB       float64 `json:"base_rss_mb"` // VmRSS before the ingestor started (publisher and runtime)

	// Footprint run (AgentCommand): the separate agent process's VmRSS
	// idle after start, its peak sampled while ingesting Rate messages/s,
	// and its VmHWM at the end.
	AgentIdleRSSMB float64 `json:"agent_idle_rss_mb,omitempty"`
	AgentRSSMB     float64 `json:"agent_rss_mb,omitempty"`
	AgentHWMMB     float64 `json:"agent_hwm_mb,omitempty"`

	// Embedded broker run: publish rates until the last PUBACK,
	// msg/s, median over rounds, with the ingestor attached (durable)
	// and without (bare).
	EmbeddedPublishers  int       `json:"embedded_publishers,omitempty"`
	EmbeddedRate        float64   `json:"embedded_rate,omitempty"`
	EmbeddedBareRate    float64   `json:"embedded_bare_rate,omitempty"`
	EmbeddedRates       []float64 `json:"embedded_rates,omitempty"`
	EmbeddedBareRates   []float64 `json:"embedded_bare_rates,omitempty"`
	RatioEmbedded       float64   `json:"ratio_embedded_durable_to_bare,omitempty"`
	EmbeddedTLSRate     float64   `json:"embedded_tls_rate,omitempty"`
	EmbeddedTLSRates    []float64 `json:"embedded_tls_rates,omitempty"`
	RatioEmbeddedTLS    float64   `json:"ratio_embedded_tls_to_plain,omitempty"`
	EmbeddedCommitBatch float64   `json:"embedded_commit_messages,omitempty"` // messages per group commit
}

func (o *Options) defaults() error {
	if o.Broker == "" && !(o.SkipBacklog && o.SkipLatency) {
		return errors.New("ingestbench: Broker is required")
	}
	if o.Messages == 0 {
		o.Messages = 200000
	}
	if o.Rounds == 0 {
		o.Rounds = 3
	}
	if o.Devices == 0 {
		o.Devices = 10
	}
	if o.Rate == 0 {
		o.Rate = 5000
	}
	if o.Duration == 0 {
		o.Duration = 10 * time.Second
	}
	if o.EmbeddedPublishers == 0 {
		o.EmbeddedPublishers = 4
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Malformed < 0 || o.Malformed > o.Messages {
		return fmt.Errorf("ingestbench: Malformed %d outside 0..Messages", o.Malformed)
	}
	if o.EmbeddedPublishers < 1 || o.EmbeddedPublishers > 1000 {
		return fmt.Errorf("ingestbench: EmbeddedPublishers %d outside 1..1000", o.EmbeddedPublishers)
	}
	if o.Messages < 1 || o.Rounds < 1 || o.Devices < 1 || o.Rate < 1 || o.Duration < time.Second {
		return fmt.Errorf("ingestbench: Messages %d, Rounds %d, Devices %d, Rate %d must be positive, Duration %s at least 1s",
			o.Messages, o.Rounds, o.Devices, o.Rate, o.Duration)
	}
	return nil
}

const topicFilter = "devices/+/telemetry"

// Run measures. ctx cancels it.
func Run(ctx context.Context, o Options) (Result, error) {
	if err := o.defaults(); err != nil {
		return Result{}, err
	}
	if o.Dir == "" {
		d, err := os.MkdirTemp("", "ingestbench-")
		if err != nil {
			return Result{}, fmt.Errorf("ingestbench: %w", err)
		}
		defer os.RemoveAll(d)
		o.Dir = d
	}
	res := Result{Messages: o.Messages, Malformed: o.Malformed, Rounds: o.Rounds}
	// Latency first: the process's memory then holds nothing left over
	// from the backlog rounds.
	if !o.SkipLatency {
		if err := latency(ctx, o, &res); err != nil {
			return res, err
		}
		if o.AgentCommand != nil {
			if err := footprint(ctx, o, &res); err != nil {
				return res, err
			}
		}
	}
	if !o.SkipBacklog {
		if err := backlog(ctx, o, &res); err != nil {
			return res, err
		}
	}
	if o.Embedded {
		if err := embedded(ctx, o, &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func backlog(ctx context.Context, o Options, res *Result) error {
	subBin, _ := exec.LookPath("mosquitto_sub")
	if o.NoMosquittoSub {
		subBin = ""
	}
	var commitMsgs, commits int64
	for r := 0; r < o.Rounds; r++ {
		// Interleave: the order rotates each round so no subscriber always
		// follows the same one.
		kinds := []string{"bare", "durable", "buffered_bare"}
		if subBin != "" {
			kinds = append(kinds, "mosquitto_sub")
		}
		for i := 0; i < r%len(kinds); i++ {
			kinds = append(kinds[1:], kinds[0])
		}
		for _, kind := range kinds {
			if err := ctx.Err(); err != nil {
				return err
			}
			id := fmt.Sprintf("bench-%s-%d-%d", kind, r, time.Now().UnixNano())
			var rate float64
			var err error
			switch kind {
			case "bare":
				rate, err = drainBare(ctx, o, id, false)
				res.BareRates = append(res.BareRates, rate)
			case "buffered_bare":
				rate, err = drainBare(ctx, o, id, true)
				res.BufferedBareRates = append(res.BufferedBareRates, rate)
			case "durable":
				var cm, c int64
				rate, cm, c, err = drainDurable(ctx, o, id, filepath.Join(o.Dir, id))
				o.CPUProfile = nil // one profile: the first drain
				commitMsgs += cm
				commits += c
				res.DurableRates = append(res.DurableRates, rate)
			case "mosquitto_sub":
				rate, err = drainMosquittoSub(ctx, o, id, subBin)
				res.MosquittoSubRates = append(res.MosquittoSubRates, rate)
			}
			if err != nil {
				return fmt.Errorf("ingestbench: round %d %s: %w", r, kind, err)
			}
			o.Logger.Info("backlog drained", "round", r, "subscriber", kind, "messages", o.Messages, "rate", math.Round(rate))
		}
	}
	res.DurableRate, res.BareRate = median(res.DurableRates), median(res.BareRates)
	res.MosquittoSubRate = median(res.MosquittoSubRates)
	if res.BareRate > 0 {
		res.RatioBare = res.DurableRate / res.BareRate
	}
	if res.BufferedBareRate = median(res.BufferedBareRates); res.BufferedBareRate > 0 {
		res.RatioBufferedBare = res.DurableRate / res.BufferedBareRate
	}
	if res.MosquittoSubRate > 0 {
		res.RatioMosquittoSub = res.DurableRate / res.MosquittoSubRate
	}
	if commits > 0 {
		res.MeanCommitMessages = float64(commitMsgs) / float64(commits)
	}
	return nil
}

// createSession opens and closes a persistent session subscribed to the
// telemetry topics, so the broker queues what is published next.
func createSession(o Options, clientID string) error {
	opts := mqtt.NewClientOptions().AddBroker(o.Broker).SetClientID(clientID).SetCleanSession(false).
		SetAutoReconnect(false).SetConnectTimeout(10 * time.Second)
	c := mqtt.NewClient(opts)
	if t := c.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		return fmt.Errorf("connect session %s: %v", clientID, t.Error())
	}
	if t := c.Subscribe(topicFilter, 1, func(mqtt.Client, mqtt.Message) {}); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		return fmt.Errorf("subscribe session %s: %v", clientID, t.Error())
	}
	c.Disconnect(100)
	return nil
}

// Publisher publishes QoS 1 telemetry: flat JSON with three metrics
// and the publish time as "ts" (Unix seconds, microseconds), so every
// message is distinct and carries its own send time.
type Publisher struct {
	c       mqtt.Client
	topics  []string
	seq     int
	buf     []byte
	pending []mqtt.Token
	window  int
}

// NewPublisher connects a publisher for devices dev-0 .. dev-(devices-1).
func NewPublisher(broker, clientID string, devices int) (*Publisher, error) {
	return NewPrefixPublisher(broker, clientID, "dev-", devices)
}

// NewPrefixPublisher connects a publisher for devices prefix0 ..
// prefix(devices-1).
func NewPrefixPublisher(broker, clientID, prefix string, devices int) (*Publisher, error) {
	return NewTLSPrefixPublisher(broker, nil, clientID, prefix, devices)
}

// NewTLSPrefixPublisher is NewPrefixPublisher for an ssl:// broker
// verified with tc (nil: tcp://).
func NewTLSPrefixPublisher(broker string, tc *tls.Config, clientID, prefix string, devices int) (*Publisher, error) {
	return newPublisher(broker, tc, clientID, "", prefix, devices)
}

// newPublisher connects a publisher, logging in as clientID with secret
// when secret is set.
func newPublisher(broker string, tc *tls.Config, clientID, secret, prefix string, devices int) (*Publisher, error) {
	opts := mqtt.NewClientOptions().AddBroker(broker).SetClientID(clientID).SetCleanSession(true).
		SetOrderMatters(false).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).SetWriteTimeout(30 * time.Second)
	if tc != nil {
		opts.SetTLSConfig(tc)
	}
	if secret != "" {
		opts.SetUsername(clientID).SetPassword(secret)
	}
	c := mqtt.NewClient(opts)
	if t := c.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		return nil, fmt.Errorf("ingestbench: connect publisher: %v", t.Error())
	}
	p := &Publisher{c: c, window: 2000}
	for d := 0; d < devices; d++ {
		p.topics = append(p.topics, "devices/"+prefix+strconv.Itoa(d)+"/telemetry")
	}
	return p, nil
}

// Publish sends one message stamped with at; it waits when more than
// the window of messages are unacknowledged.
func (p *Publisher) Publish(at time.Time) error {
	i := p.seq
	p.seq++
	us := at.UnixMicro()
	b := p.buf[:0]
	b = append(b, `{"temperature":`...)
	b = strconv.AppendFloat(b, 20+float64(i%100)/10, 'f', 2, 64)
	b = append(b, `,"humidity":`...)
	b = strconv.AppendFloat(b, 30+float64(i%37)/3, 'f', 3, 64)
	b = append(b, `,"co2":`...)
	b = strconv.AppendInt(b, int64(400+i%500), 10)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, us/1e6, 10)
	b = append(b, '.')
	frac := strconv.FormatInt(us%1e6, 10)
	b = append(b, strings.Repeat("0", 6-len(frac))...)
	b = append(b, frac...)
	b = append(b, '}')
	p.buf = b
	t := p.c.Publish(p.topics[i%len(p.topics)], 1, false, slices.Clone(b))
	p.pending = append(p.pending, t)
	if len(p.pending) >= p.window {
		return p.wait(p.window / 2)
	}
	return nil
}

func (p *Publisher) wait(keep int) error {
	n := len(p.pending) - keep
	for _, t := range p.pending[:n] {
		if !t.WaitTimeout(30*time.Second) || t.Error() != nil {
			return fmt.Errorf("ingestbench: publish: %v", t.Error())
		}
	}
	p.pending = append(p.pending[:0], p.pending[n:]...)
	return nil
}

// PublishRaw sends one message with the given payload.
func (p *Publisher) PublishRaw(payload []byte) error {
	i := p.seq
	p.seq++
	p.pending = append(p.pending, p.c.Publish(p.topics[i%len(p.topics)], 1, false, payload))
	if len(p.pending) >= p.window {
		return p.wait(p.window / 2)
	}
	return nil
}

// Flush waits for every publish to be acknowledged by the broker.
func (p *Publisher) Flush() error { return p.wait(0) }

// Close disconnects.
func (p *Publisher) Close() { p.c.Disconnect(250) }

// malformedPayloads returns malformed payloads, one of each kind the
// ingestor must refuse. Built when asked: the agent binary carries this
// package, and its processes should not hold these 80 KB.
func malformedPayloads() [][]byte {
	return [][]byte{
		{0x8b, 0x1f, 0x00, 0xff, 0xfe, 0x07},                           // random bytes
		[]byte(`{"temperature":21.5,"humidity":`),                      // broken JSON
		[]byte(`{"temperature":"warm"}`),                               // wrong type
		[]byte(`{"temperature":NaN}`),                                  // NaN is not JSON
		[]byte(`[{"n":"t","v":1e999}]`),                                // overflows float64
		[]byte(`[` + strings.Repeat(`{"n":"t","v":1},`, 1500) + `{}]`), // huge array: more records than allowed
		[]byte(`{"temperature":21.5,"ts":4102444800}`),                 // far-future time (2100)
		[]byte(`{"x":"` + strings.Repeat("a", 70000) + `"}`),           // over the payload size limit
	}
}

// publishBacklog publishes o.Messages with distinct times, o.Malformed
// of them malformed.
func publishBacklog(o Options, id string) error {
	p, err := NewPublisher(o.Broker, id+"-pub", o.Devices)
	if err != nil {
		return err
	}
	defer p.Close()
	// Distinct times per device and metric: one microsecond apart.
	base := time.Now().Add(-time.Duration(o.Messages) * time.Microsecond)
	every := 0
	if o.Malformed > 0 {
		every = o.Messages / o.Malformed
	}
	bad := 0
	var malformed [][]byte
	if o.Malformed > 0 {
		malformed = malformedPayloads()
	}
	for i := 0; i < o.Messages; i++ {
		if every > 0 && i%every == every-1 && bad < o.Malformed {
			if err := p.PublishRaw(malformed[bad%len(malformed)]); err != nil {
				return err
			}
			bad++
			continue
		}
		if err := p.Publish(base.Add(time.Duration(i) * time.Microsecond)); err != nil {
			return err
		}
	}
	return p.Flush()
}

func drainBare(ctx context.Context, o Options, id string, buffered bool) (float64, error) {
	if err := createSession(o, id); err != nil {
		return 0, err
	}
	if err := publishBacklog(o, id); err != nil {
		return 0, err
	}
	var n atomic.Int64
	done := make(chan struct{})
	var once sync.Once
	handler := func(_ mqtt.Client, m mqtt.Message) {
		if n.Add(1) == int64(o.Messages) {
			once.Do(func() { close(done) })
		}
	}
	opts := mqtt.NewClientOptions().AddBroker(o.Broker).SetClientID(id).SetCleanSession(false).
		SetOrderMatters(true).SetAutoReconnect(false).SetConnectTimeout(10 * time.Second).
		SetDefaultPublishHandler(handler)
	if buffered {
		opts.SetCustomOpenConnectionFn(ingest.OpenBufferedConn)
	}
	runtime.GC()
	start := time.Now()
	c := mqtt.NewClient(opts)
	if t := c.Connect(); !t.WaitTimeout(10*time.Second) || t.Error() != nil {
		return 0, fmt.Errorf("connect: %v", t.Error())
	}
	defer c.Disconnect(100)
	select {
	case <-done:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(10 * time.Minute):
		return 0, fmt.Errorf("bare subscriber received %d of %d in 10 minutes", n.Load(), o.Messages)
	}
	// The last acknowledgement is written right after the handler returns.
	return float64(o.Messages) / time.Since(start).Seconds(), nil
}

// countSink counts committed messages.
type countSink struct {
	msgs, commits atomic.Int64
	target        int64
	done          chan struct{}
	once          sync.Once
	onCommit      func(ingest.Commit)
}

// Committed counts a commit (ingest.Sink).
func (s *countSink) Committed(c ingest.Commit) {
	s.commits.Add(1)
	if s.onCommit != nil {
		s.onCommit(c)
	}
	if s.msgs.Add(int64(c.Messages)) >= s.target && s.target > 0 {
		s.once.Do(func() { close(s.done) })
	}
}

func newIngestor(o Options, id, dir string, sink ingest.Sink) (*ingest.Ingestor, error) {
	return ingest.New(ingest.Config{
		DataDir:       dir,
		MQTT:          ingest.MQTTConfig{Broker: o.Broker, ClientID: id},
		BatchMessages: o.BatchMessages,
		BatchDelay:    o.BatchDelay,
		Sink:          sink,
		Limits:        ingest.Limits{MaxPast: 30 * 24 * time.Hour},
	})
}

func drainDurable(ctx context.Context, o Options, id, dir string) (rate float64, commitMsgs, commits int64, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, 0, 0, err
	}
	if err := createSession(o, id); err != nil {
		return 0, 0, 0, err
	}
	if err := publishBacklog(o, id); err != nil {
		return 0, 0, 0, err
	}
	sink := &countSink{target: int64(o.Messages), done: make(chan struct{})}
	runtime.GC()
	if o.CPUProfile != nil {
		if err := pprof.StartCPUProfile(o.CPUProfile); err != nil {
			return 0, 0, 0, err
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	in, err := newIngestor(o, id, dir, sink)
	if err != nil {
		return 0, 0, 0, err
	}
	if err := in.Start(ctx); err != nil {
		return 0, 0, 0, err
	}
	defer in.Stop()
	select {
	case <-sink.done:
	case <-ctx.Done():
		return 0, 0, 0, ctx.Err()
	case <-time.After(10 * time.Minute):
		return 0, 0, 0, fmt.Errorf("durable ingestion committed %d of %d in 10 minutes", sink.msgs.Load(), o.Messages)
	}
	el := time.Since(start)
	st, err := in.Store().Stats(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	if st.Messages < int64(o.Messages) || st.DeadLetters != int64(o.Malformed) || st.StoredTotal != 3*int64(o.Messages-o.Malformed) {
		return 0, 0, 0, fmt.Errorf("store holds %d messages, %d readings, %d dead letters; want %d, %d, %d",
			st.Messages, st.StoredTotal, st.DeadLetters, o.Messages, 3*(o.Messages-o.Malformed), o.Malformed)
	}
	return float64(o.Messages) / el.Seconds(), sink.msgs.Load(), sink.commits.Load(), nil
}

func drainMosquittoSub(ctx context.Context, o Options, id, bin string) (float64, error) {
	if err := createSession(o, id); err != nil {
		return 0, err
	}
	if err := publishBacklog(o, id); err != nil {
		return 0, err
	}
	host, port, err := hostPort(o.Broker)
	if err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, bin, "-h", host, "-p", port, "-q", "1", "-c", "-i", id,
		"-t", topicFilter, "-C", strconv.Itoa(o.Messages))
	cmd.Stdout = nil // discarded
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("mosquitto_sub: %v: %.200s", err, out)
	}
	return float64(o.Messages) / time.Since(start).Seconds(), nil
}

func hostPort(broker string) (string, string, error) {
	s := broker
	if i := strings.Index(s, "://"); i >= 0 {
		if s[:i] != "tcp" && s[:i] != "mqtt" {
			return "", "", fmt.Errorf("mosquitto_sub run supports tcp:// brokers, not %q", broker)
		}
		s = s[i+3:]
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return "", "", fmt.Errorf("broker %q has no port", broker)
	}
	return s[:i], s[i+1:], nil
}

// rss returns the process's resident set size in bytes (Linux).
func rss() float64 { return procStatus("self", "VmRSS") }

// procStatus returns a memory field of /proc/PID/status in bytes
// (Linux; 0 elsewhere).
func procStatus(pid, field string) float64 {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, field+":") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, _ := strconv.ParseFloat(f[1], 64)
				return kb * 1024
			}
		}
	}
	return 0
}

func latency(ctx context.Context, o Options, res *Result) error {
	id := fmt.Sprintf("bench-latency-%d", time.Now().UnixNano())
	dir := filepath.Join(o.Dir, id)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	pub, err := NewPublisher(o.Broker, id+"-pub", o.Devices)
	if err != nil {
		return err
	}
	defer pub.Close()
	runtime.GC()
	res.BaseRSSMB = rss() / (1 << 20)
	var mu sync.Mutex
	var lats []float64
	warm := time.Now().Add(time.Second)
	sink := &countSink{done: make(chan struct{})}
	sink.onCommit = func(c ingest.Commit) {
		if c.At.Before(warm) {
			return
		}
		mu.Lock()
		for _, r := range c.Readings {
			if r.Metric == "temperature" {
				lats = append(lats, float64(c.At.Sub(r.Time).Microseconds())/1000)
			}
		}
		mu.Unlock()
	}
	in, err := newIngestor(o, id, dir, sink)
	if err != nil {
		return err
	}
	if err := in.Start(ctx); err != nil {
		return err
	}
	defer in.Stop()
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = in.WaitSubscribed(wctx)
	cancel()
	if err != nil {
		return err
	}
	var peakRSS, peakHeap float64
	stopSample := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		var ms runtime.MemStats
		for {
			select {
			case <-stopSample:
				return
			case <-t.C:
				peakRSS = max(peakRSS, rss())
				runtime.ReadMemStats(&ms)
				peakHeap = max(peakHeap, float64(ms.HeapInuse))
			}
		}
	}()
	// Pace in 1 ms ticks.
	start := time.Now()
	sent := 0
	for time.Since(start) < o.Duration {
		if err := ctx.Err(); err != nil {
			close(stopSample)
			return err
		}
		due := int(time.Since(start).Seconds() * float64(o.Rate))
		for ; sent < due; sent++ {
			if err := pub.Publish(time.Now()); err != nil {
				close(stopSample)
				return err
			}
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	if err := pub.Flush(); err != nil {
		close(stopSample)
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for sink.msgs.Load() < int64(sent) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	close(stopSample)
	<-sampled
	if got := sink.msgs.Load(); got < int64(sent) {
		return fmt.Errorf("ingestbench: latency run committed %d of %d messages", got, sent)
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lats)
	pct := func(p float64) float64 {
		if len(lats) == 0 {
			return 0
		}
		return lats[min(len(lats)-1, int(p*float64(len(lats))))]
	}
	res.LatencyRate, res.LatencySent = o.Rate, sent
	res.LatencyAchieved = float64(sent) / elapsed.Seconds()
	res.P50ms, res.P90ms, res.P99ms = pct(0.50), pct(0.90), pct(0.99)
	if len(lats) > 0 {
		res.Maxms = lats[len(lats)-1]
	}
	res.RSSMB, res.HeapMB = peakRSS/(1<<20), peakHeap/(1<<20)
	return nil
}

// embedded measures the embedded broker with and without an Ingestor
// attached, interleaved.
func embedded(ctx context.Context, o Options, res *Result) error {
	res.EmbeddedPublishers = o.EmbeddedPublishers
	var commitMsgs, commits int64
	var sec *securedBroker
	if o.EmbeddedTLS {
		var err error
		if sec, err = newSecuredBroker(o.EmbeddedPublishers); err != nil {
			return fmt.Errorf("ingestbench: embedded TLS: %w", err)
		}
	}
	kinds := []embeddedKind{embeddedBare, embeddedDurable}
	if sec != nil {
		kinds = append(kinds, embeddedSecured)
	}
	for r := 0; r < o.Rounds; r++ {
		for k := range kinds {
			kind := kinds[(k+r)%len(kinds)] // the order rotates each round
			if err := ctx.Err(); err != nil {
				return err
			}
			dir := filepath.Join(o.Dir, fmt.Sprintf("embedded-%d-%s", r, kind))
			rate, cm, c, err := publishEmbedded(ctx, o, kind, sec, dir)
			if err != nil {
				return fmt.Errorf("ingestbench: embedded round %d (%s): %w", r, kind, err)
			}
			switch kind {
			case embeddedBare:
				res.EmbeddedBareRates = append(res.EmbeddedBareRates, rate)
			case embeddedDurable:
				res.EmbeddedRates = append(res.EmbeddedRates, rate)
				commitMsgs += cm
				commits += c
			case embeddedSecured:
				res.EmbeddedTLSRates = append(res.EmbeddedTLSRates, rate)
			}
			o.Logger.Info("embedded broker run", "round", r, "kind", kind, "publishers", o.EmbeddedPublishers,
				"messages", o.Messages, "rate", math.Round(rate))
		}
	}
	res.EmbeddedRate, res.EmbeddedBareRate = median(res.EmbeddedRates), median(res.EmbeddedBareRates)
	if res.EmbeddedBareRate > 0 {
		res.RatioEmbedded = res.EmbeddedRate / res.EmbeddedBareRate
	}
	if sec != nil {
		res.EmbeddedTLSRate = median(res.EmbeddedTLSRates)
		if res.EmbeddedRate > 0 {
			res.RatioEmbeddedTLS = res.EmbeddedTLSRate / res.EmbeddedRate
		}
	}
	if commits > 0 {
		res.EmbeddedCommitBatch = float64(commitMsgs) / float64(commits)
	}
	return nil
}

// publishEmbedded starts an embedded broker (with an Ingestor attached
// when durable), has the publishers send o.Messages between them, and
// returns the rate until the last PUBACK.
func publishEmbedded(ctx context.Context, o Options, kind embeddedKind, sec *securedBroker, dir string) (rate float64, commitMsgs, commits int64, err error) {
	durable := kind != embeddedBare
	bc := ingest.BrokerConfig{Addr: "127.0.0.1:0", Ingest: durable}
	if kind == embeddedSecured {
		sec.configure(&bc)
	}
	b, err := ingest.StartBroker(bc)
	if err != nil {
		return 0, 0, 0, err
	}
	defer b.Stop()
	url, tc := b.URL(), (*tls.Config)(nil)
	if kind == embeddedSecured {
		url, tc = b.TLSURL(), sec.client
	}
	sink := &countSink{done: make(chan struct{})}
	var in *ingest.Ingestor
	if durable {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return 0, 0, 0, err
		}
		in, err = ingest.New(ingest.Config{
			DataDir: dir, Embedded: b, BatchMessages: o.BatchMessages, BatchDelay: o.BatchDelay, Sink: sink,
			Limits: ingest.Limits{MaxPast: 30 * 24 * time.Hour},
		})
		if err != nil {
			return 0, 0, 0, err
		}
		if err := in.Start(ctx); err != nil {
			return 0, 0, 0, err
		}
		defer in.Stop()
	}
	n := o.EmbeddedPublishers
	pubs := make([]*Publisher, n)
	for i := range pubs {
		// Each publisher has its own devices, so readings never collide.
		secret := ""
		if sec != nil && kind == embeddedSecured {
			secret = sec.secrets[i]
		}
		if pubs[i], err = newPublisher(url, tc, publisherID(i), secret, fmt.Sprintf("p%d-dev-", i), o.Devices); err != nil {
			return 0, 0, 0, err
		}
		defer pubs[i].Close()
	}
	base := time.Now().Add(-time.Duration(o.Messages) * time.Microsecond)
	runtime.GC()
	start := time.Now()
	errs := make(chan error, n)
	for i, p := range pubs {
		share := o.Messages / n
		if i < o.Messages%n {
			share++
		}
		go func() {
			for j := 0; j < share; j++ {
				if err := p.Publish(base.Add(time.Duration(j) * time.Microsecond)); err != nil {
					errs <- err
					return
				}
			}
			errs <- p.Flush()
		}()
	}
	for range pubs {
		if err := <-errs; err != nil {
			return 0, 0, 0, err
		}
	}
	el := time.Since(start)
	if durable {
		st, err := in.Store().Stats(ctx)
		if err != nil {
			return 0, 0, 0, err
		}
		if st.Messages != int64(o.Messages) || st.StoredTotal != 3*int64(o.Messages) {
			return 0, 0, 0, fmt.Errorf("every publish acknowledged, but the store holds %d messages and %d readings; want %d and %d",
				st.Messages, st.StoredTotal, o.Messages, 3*o.Messages)
		}
	}
	return float64(o.Messages) / el.Seconds(), sink.msgs.Load(), sink.commits.Load(), nil
}

// RunAgentProcess is the agent process of the footprint run: an
// ingestor with the default configuration subscribed to broker, storing
// in dir. It writes "ready" to stdout once subscribed and stops when
// stdin ends.
func RunAgentProcess(ctx context.Context, broker, dir string, stdin io.Reader, stdout io.Writer) error {
	in, err := ingest.New(ingest.Config{DataDir: dir, MQTT: ingest.MQTTConfig{Broker: broker, ClientID: "ingestbench-agent"}})
	if err != nil {
		return err
	}
	if err := in.Start(ctx); err != nil {
		return err
	}
	defer in.Stop()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = in.WaitSubscribed(wctx)
	cancel()
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(stdout, "ready"); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, stdin)
	return nil
}

// footprint samples the resident memory of a separate agent process
// while this process publishes Rate messages/s to it for Duration.
func footprint(ctx context.Context, o Options, res *Result) error {
	dir := filepath.Join(o.Dir, fmt.Sprintf("footprint-%d", time.Now().UnixNano()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cmd := o.AgentCommand(o.Broker, dir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("ingestbench: start the agent process: %w", err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		ok := false
		for sc.Scan() {
			if sc.Text() == "ready" && !ok {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
	}()
	select {
	case ok := <-ready:
		if !ok {
			return fmt.Errorf("ingestbench: the agent process ended before it subscribed: %.500s", stderr.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		return fmt.Errorf("ingestbench: the agent process did not subscribe in 30 s: %.500s", stderr.String())
	}
	pid := strconv.Itoa(cmd.Process.Pid)
	res.AgentIdleRSSMB = procStatus(pid, "VmRSS") / (1 << 20)
	pub, err := NewPublisher(o.Broker, fmt.Sprintf("footprint-pub-%d", time.Now().UnixNano()), o.Devices)
	if err != nil {
		return err
	}
	defer pub.Close()
	var peak float64
	start := time.Now()
	next := start
	sent := 0
	for time.Since(start) < o.Duration {
		if err := ctx.Err(); err != nil {
			return err
		}
		for due := int(time.Since(start).Seconds() * float64(o.Rate)); sent < due; sent++ {
			if err := pub.Publish(time.Now()); err != nil {
				return err
			}
		}
		if time.Now().After(next) {
			peak = max(peak, procStatus(pid, "VmRSS"))
			next = time.Now().Add(100 * time.Millisecond)
		}
		time.Sleep(time.Millisecond)
	}
	if err := pub.Flush(); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		rep, err := ingest.Inspect(dir)
		if err == nil && rep.Stats.Messages >= int64(sent) {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ingestbench: the agent process committed %d of %d messages (%v)", rep.Stats.Messages, sent, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	res.AgentRSSMB = max(peak, procStatus(pid, "VmRSS")) / (1 << 20)
	res.AgentHWMMB = procStatus(pid, "VmHWM") / (1 << 20)
	return nil
}
