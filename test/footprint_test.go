package test

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/bench/ingestbench"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cptest"
	"github.com/edgefleet/edgefleet/internal/modeltest"
	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

var (
	footprintFor  = flag.Duration("footprint", 0, "run TestAgentFootprint for this long at -footprint.rate (0: skip it)")
	footprintRate = flag.Int("footprint.rate", 5000, "TestAgentFootprint: messages/s published")
	footprintMax  = flag.Float64("footprint.max-mb", 0, "TestAgentFootprint: most resident memory allowed, MB (0: 30, or 36 with -footprint.model)")
	footprintAnon = flag.Float64("footprint.max-anon-mb", 0, "TestAgentFootprint: most anonymous memory allowed while devices publish, MB (0: no bound, or 16 with -footprint.model)")
	footprintEmb  = flag.Bool("footprint.embedded", false, "TestAgentFootprint: devices publish to the agent's embedded broker instead of Mosquitto")
	footprintDevs = flag.Int("footprint.devices", 10, "TestAgentFootprint: devices publishing, each on its own connection")
	footprintMod  = flag.Bool("footprint.model", false, "TestAgentFootprint: deploy a model (MLP 3→8→2, a windowed feature) that predicts on every message")
)

// TestAgentFootprint measures the resident memory of a whole edge-agent
// process on its defaults (gossip, state, API, ingestion from Mosquitto,
// uploads to a control plane) while devices publish -footprint.rate QoS 1
// messages/s to the broker, sampling /proc/PID/status every 250 ms. The
// broker is Mosquitto, or with -footprint.embedded the agent's own (its
// memory then counts). It runs only when asked (-footprint 30s): it needs
// a quiet machine.
//
// With -footprint.model the agent serves a model on every message: it is
// pushed to the control plane and deployed to the agent (signed, sealed,
// verified) before devices publish, and every message's prediction is
// published and stored.
//
//	go test ./test/ -run TestAgentFootprint -v -args -footprint 30s [-footprint.embedded] [-footprint.model]
func TestAgentFootprint(t *testing.T) {
	if *footprintFor <= 0 {
		t.Skip("footprint run: give -footprint DURATION to run it")
	}
	dir := t.TempDir()
	brokerArgs := []string{"--mqtt-listen", "127.0.0.1:0"}
	if !*footprintEmb {
		mosq, err := mqtttest.Start(mqtttest.Options{Dir: t.TempDir()})
		if errors.Is(err, mqtttest.ErrNoMosquitto) {
			t.Skip(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		defer mosq.Stop()
		brokerArgs = []string{"--mqtt-broker", mosq.URL()}
	}

	srv, cp := cptest.Start(t, cptest.Config(filepath.Join(dir, "cp")))
	ctx, cancel := context.WithTimeout(context.Background(), *footprintFor+2*time.Minute)
	defer cancel()
	toks, err := cp.CreateEnrollmentTokens(ctx, time.Hour, map[string]string{"role": "footprint"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(toks[0].Token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	p := newProc(t, "footprint")
	args := []string{"run", "--data", p.dataDir, "--bind", p.gossip, "--api", p.api, "--node-name", p.name,
		"--control-plane", srv.URL(), "--ca", srv.CAPath(), "--enrollment-token-file", tokFile}
	args = append(args, brokerArgs...)
	p.startWith(append(os.Environ(), "EDGEFLEET_GOSSIP_KEY="+testGossipKey), args...)
	broker := p.waitBroker()
	eventually(t, 30*time.Second, "agent enrolled", func() error {
		var up struct {
			Enrolled bool `json:"enrolled"`
		}
		if err := p.getJSON("/v1/uplink", &up); err != nil {
			return err
		}
		if !up.Enrolled {
			return fmt.Errorf("not enrolled yet")
		}
		return nil
	})
	if *footprintMod {
		deployTestModel(t, ctx, cp, p)
	}
	pid := strconv.Itoa(p.cmd.Process.Pid)
	idle := readStatus(t, pid) // VmHWM here: the peak of start-up and enrollment

	pubs := make([]*ingestbench.Publisher, *footprintDevs)
	for i := range pubs {
		pub, err := ingestbench.NewPrefixPublisher(broker, fmt.Sprintf("footprint-dev-%d", i), fmt.Sprintf("dev%d-", i), 1)
		if err != nil {
			t.Fatal(err)
		}
		defer pub.Close()
		pubs[i] = pub
	}
	// Sampled every 100 ms while devices publish and until the agent has
	// committed and uploaded everything.
	type sample struct {
		procMem
		at         time.Duration
		publishing bool
	}
	var (
		samples    []sample
		publishing atomic.Bool
		stopSample = make(chan struct{})
		sampled    = make(chan struct{})
	)
	publishing.Store(true)
	cpu0 := readCPU(t, pid)
	start := time.Now()
	go func() {
		defer close(sampled)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if m, err := procStatus(pid); err == nil {
				samples = append(samples, sample{m, time.Since(start), publishing.Load()})
			}
			select {
			case <-stopSample:
				return
			case <-tick.C:
			}
		}
	}()
	sent := 0
	for time.Since(start) < *footprintFor {
		for due := int(time.Since(start).Seconds() * float64(*footprintRate)); sent < due; sent++ {
			if err := pubs[sent%len(pubs)].Publish(time.Now()); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Millisecond)
	}
	for _, pub := range pubs {
		if err := pub.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	publishing.Store(false)
	cpu := readCPU(t, pid) - cpu0
	eventually(t, 60*time.Second, "every message committed and uploaded", func() error {
		var st struct {
			Stats struct {
				Acked int64 `json:"acked"`
			} `json:"stats"`
			Store struct {
				Pending int64 `json:"outbox_pending"`
			} `json:"store"`
		}
		if err := p.getJSON("/v1/ingest", &st); err != nil {
			return err
		}
		if st.Stats.Acked < int64(sent) || st.Store.Pending > 0 {
			return fmt.Errorf("acked %d of %d, outbox pending %d", st.Stats.Acked, sent, st.Store.Pending)
		}
		return nil
	})
	var drained time.Duration
	if *footprintMod {
		drained = waitPublished(t, p, elapsed, start)
	}
	close(stopSample)
	<-sampled
	after := readStatus(t, pid)

	var rss []float64
	var peak, drainPeak sample
	for _, s := range samples {
		switch {
		case s.publishing:
			rss = append(rss, s.RSS)
			if s.RSS > peak.RSS {
				peak = s
			}
		case s.RSS > drainPeak.RSS:
			drainPeak = s
		}
	}
	if len(rss) == 0 {
		t.Fatal("no samples")
	}
	slices.Sort(rss)
	t.Logf("%d messages from %d devices in %s (%.0f msg/s), %d samples", sent, len(pubs), elapsed.Round(time.Millisecond), float64(sent)/elapsed.Seconds(), len(samples))
	t.Logf("agent CPU while publishing and flushing: %.1f s (%.0f%% of one core)", cpu.Seconds(), 100*cpu.Seconds()/time.Since(start).Seconds())
	t.Logf("idle before: RSS %.1f MB (anon %.1f, file %.1f); peak of start-up and enrollment %.1f MB", idle.RSS, idle.Anon, idle.File, idle.HWM)
	t.Logf("while devices publish: RSS median %.1f MB, p90 %.1f, max %.1f at %.1fs (anon %.1f, file %.1f)",
		rss[len(rss)/2], rss[len(rss)*9/10], peak.RSS, peak.at.Seconds(), peak.Anon, peak.File)
	t.Logf("while the last commits and uploads finish: max %.1f MB at %.1fs (anon %.1f); peak of the process (VmHWM) %.1f MB",
		drainPeak.RSS, drainPeak.at.Seconds(), drainPeak.Anon, after.HWM)
	if *footprintMod {
		reportInference(t, p, sent, drained)
	}
	maxRSS, maxAnon := *footprintMax, *footprintAnon
	if maxRSS == 0 {
		maxRSS = 30 // the ingestion issue's bar
		if *footprintMod {
			maxRSS = 36 // the on-device learning issue's bar, with a model serving
		}
	}
	if maxAnon == 0 && *footprintMod {
		maxAnon = 16
	}
	if after.HWM > maxRSS {
		t.Errorf("peak RSS (VmHWM) %.1f MB over %.0f MB", after.HWM, maxRSS)
	}
	var anonPeak float64
	for _, s := range samples {
		if s.publishing {
			anonPeak = max(anonPeak, s.Anon)
		}
	}
	t.Logf("anonymous memory while devices publish: max %.1f MB", anonPeak)
	if maxAnon > 0 && anonPeak > maxAnon {
		t.Errorf("anonymous memory %.1f MB while devices publish, over %.0f MB", anonPeak, maxAnon)
	}
}

// deployTestModel pushes the comfort model to the control plane, deploys
// it to the agent's label and waits until the agent serves it.
func deployTestModel(t *testing.T, ctx context.Context, cp *cpapi.Client, p *proc) {
	t.Helper()
	b, err := modeltest.Comfort(t, "1", 7).Encode()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cp.PushModel(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, err := cp.DeployModel(ctx, "comfort", "1", "role=footprint"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the agent serves the model", func() error {
		var l struct {
			Models []struct {
				Name string `json:"name"`
			} `json:"models"`
		}
		if err := p.getJSON("/v1/models", &l); err != nil {
			return err
		}
		if len(l.Models) != 1 {
			return fmt.Errorf("models %v", l.Models)
		}
		return nil
	})
}

// reportInference logs the model's predictions and inference latency from
// the agent's metrics and checks that every message got its prediction
// and every prediction was published (acknowledged by the broker);
// drained is how long after the load the backlog of predictions to
// publish drained (waitPublished).
func reportInference(t *testing.T, p *proc, sent int, drained time.Duration) {
	t.Helper()
	var val map[string]float64
	var buckets [][2]float64 // le, cumulative count
	deadline := time.Now().Add(20 * time.Second)
	for {
		val, buckets = scrapeAll(t, p)
		done := val[`edgefleet_inference_predictions_total{model="comfort"}`] + val["edgefleet_inference_dropped_readings_total"]
		if done >= float64(sent) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}

	preds := val[`edgefleet_inference_predictions_total{model="comfort"}`]
	count := val["edgefleet_inference_latency_seconds_count"]
	p99 := math.Inf(1)
	for _, bk := range buckets {
		if bk[1] >= 0.99*count {
			p99 = bk[0]
			break
		}
	}
	t.Logf("inference: %.0f predictions for %d messages, mean latency %.1f µs, p99 <= %g ms (histogram bucket), dropped readings %.0f, publish failures (sent again) %.0f, store failures %.0f",
		preds, sent, 1e6*val["edgefleet_inference_latency_seconds_sum"]/count, p99*1e3,
		val["edgefleet_inference_dropped_readings_total"], val["edgefleet_inference_publish_failures_total"], val["edgefleet_inference_store_failures_total"])
	t.Logf("published: %.0f acknowledged by the broker, backlog %.0f, unpublished dropped %.0f; the backlog drained %.1f s after the load ended",
		val["edgefleet_inference_published_total"], val["edgefleet_inference_publish_backlog"], val["edgefleet_inference_unpublished_dropped_total"], drained.Seconds())
	if b := val["edgefleet_inference_publish_backlog"]; b > 0 || val["edgefleet_inference_published_total"] < preds || val["edgefleet_inference_unpublished_dropped_total"] > 0 {
		t.Errorf("%.0f predictions, %.0f published, backlog %.0f, unpublished dropped %.0f", preds, val["edgefleet_inference_published_total"], b, val["edgefleet_inference_unpublished_dropped_total"])
	}
	if preds+val["edgefleet_inference_dropped_readings_total"] < float64(sent) {
		t.Errorf("%.0f predictions and %.0f dropped readings for %d messages", preds, val["edgefleet_inference_dropped_readings_total"], sent)
	}
}

// waitPublished waits (up to 5 minutes) until every message has its
// prediction and the agent has no prediction left to publish, and
// returns how long after the load (elapsed after start) that was.
func waitPublished(t *testing.T, p *proc, elapsed time.Duration, start time.Time) time.Duration {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		val, _ := scrapeAll(t, p)
		if val["edgefleet_inference_publish_backlog"] == 0 && val["edgefleet_inference_latency_seconds_count"] > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	return time.Since(start) - elapsed
}

// scrapeAll reads the agent's metrics: value by name and labels, and the
// inference latency histogram's buckets.
func scrapeAll(t *testing.T, p *proc) (map[string]float64, [][2]float64) {
	t.Helper()
	resp, err := http.Get(p.url("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	val := map[string]float64{}
	var buckets [][2]float64
	for _, line := range strings.Split(string(b), "\n") {
		name, v, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			continue
		}
		val[name] = f
		if le, ok := strings.CutPrefix(name, `edgefleet_inference_latency_seconds_bucket{le="`); ok {
			if x, err := strconv.ParseFloat(strings.TrimSuffix(le, `"}`), 64); err == nil {
				buckets = append(buckets, [2]float64{x, f})
			}
		}
	}
	return val, buckets
}

// procMem is a process's resident memory in MB, from /proc/PID/status.
type procMem struct {
	RSS, Anon, File, HWM float64
}

func readStatus(t *testing.T, pid string) procMem {
	t.Helper()
	m, err := procStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// procStatus reads a process's resident memory from /proc/PID/status.
func procStatus(pid string) (procMem, error) {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return procMem{}, err
	}
	defer f.Close()
	var m procMem
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if err != nil {
			continue
		}
		switch k {
		case "VmRSS":
			m.RSS = kb / 1024
		case "RssAnon":
			m.Anon = kb / 1024
		case "RssFile":
			m.File = kb / 1024
		case "VmHWM":
			m.HWM = kb / 1024
		}
	}
	return m, sc.Err()
}

// readCPU returns the user and system CPU time a process used so far.
func readCPU(t *testing.T, pid string) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	// The fields after the command name (which may hold spaces): state is
	// the first, utime and stime the 12th and 13th.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		t.Fatalf("/proc/%s/stat: unexpected format", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%s/stat: utime %q stime %q", pid, f[11], f[12])
	}
	// Clock ticks are 100 per second on Linux (USER_HZ).
	return time.Duration(ut+st) * 10 * time.Millisecond
}
