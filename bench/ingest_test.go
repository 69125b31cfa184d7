package bench

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

func TestIngestOptionsRefused(t *testing.T) {
	for _, o := range []IngestOptions{
		{Messages: -1},
		{Rate: -5},
		{Malformed: -1},
		{BatchDelay: -time.Millisecond},
		{Duration: 500 * time.Millisecond},
		{SkipBacklog: true, SkipLatency: true},
		{Embedded: true, EmbeddedPublishers: -1},
	} {
		if _, err := RunIngest(context.Background(), o); err == nil || !strings.HasPrefix(err.Error(), "bench: ingest: ") {
			t.Errorf("%+v: %v", o, err)
		}
	}
}

// TestRunIngestTiny measures a tiny workload against a Mosquitto the
// suite starts itself: every figure is present and plausible. The
// figures' sizes are for `edge-agent bench ingest`, not for this test.
func TestRunIngestTiny(t *testing.T) {
	if _, err := mqtttest.Binary(); err != nil {
		t.Skipf("skipping: %v", err)
	}
	rep, err := RunIngest(context.Background(), IngestOptions{
		Messages: 300, Rounds: 1, Rate: 200, Duration: time.Second, Devices: 3, Malformed: 8, Dir: t.TempDir(), Embedded: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Suite != "ingest" || !strings.HasPrefix(rep.Machine["broker"], "mosquitto") || !strings.Contains(rep.Machine["workload"], "backlog=300 malformed=8") {
		t.Fatalf("report: %+v", rep)
	}
	byName := map[string]Result{}
	for _, r := range rep.Results {
		byName[r.Name] = r
	}
	drain := byName["ingest_backlog_drain"]
	if drain.Value <= 0 || drain.Baseline == nil || drain.Baseline.Value <= 0 || drain.Ratio <= 0 {
		t.Errorf("drain: %+v", drain)
	}
	if b := byName["ingest_commit_batch"]; b.Value < 1 || b.Value > 300 {
		t.Errorf("commit batch: %+v", b)
	}
	_, haveSub := exec.LookPath("mosquitto_sub")
	if vs, ok := byName["ingest_backlog_drain_vs_mosquitto_sub"]; ok != (haveSub == nil) || (ok && (vs.Baseline.Value <= 0 || vs.Ratio <= 0)) {
		t.Errorf("mosquitto_sub comparison (installed: %v): %+v", haveSub == nil, vs)
	}
	p50, p99 := byName["ingest_publish_to_commit_p50"], byName["ingest_publish_to_commit_p99"]
	if p50.Value <= 0 || p99.Value < p50.Value || byName["ingest_publish_to_commit_max"].Value < p99.Value {
		t.Errorf("latency: p50 %+v p99 %+v", p50, p99)
	}
	if r := byName["ingest_publish_rate"]; r.Value <= 0 {
		t.Errorf("publish rate: %+v", r)
	}
	if r := byName["ingest_rss_mb"]; r.Value <= 0 {
		t.Errorf("rss: %+v", r)
	}
	if e := byName["ingest_embedded_publish"]; e.Value <= 0 || e.Baseline == nil || e.Baseline.Value <= 0 || e.Ratio <= 0 {
		t.Errorf("embedded: %+v", e)
	}
	if b := byName["ingest_embedded_commit_batch"]; b.Value < 1 || b.Value > 300 {
		t.Errorf("embedded commit batch: %+v", b)
	}
}

// TestRunIngestEmbeddedTLS: the TLS variant reports its drain beside the
// clear-text one, and the stores hold every message (publishEmbedded
// checks them).
func TestRunIngestEmbeddedTLS(t *testing.T) {
	rep, err := RunIngest(context.Background(), IngestOptions{
		Messages: 500, Rounds: 1, Devices: 3, Dir: t.TempDir(), SkipBacklog: true, SkipLatency: true, EmbeddedTLS: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	var tlsRes, plain *Result
	for i, r := range rep.Results {
		switch r.Name {
		case "ingest_embedded_publish_tls":
			tlsRes = &rep.Results[i]
		case "ingest_embedded_publish":
			plain = &rep.Results[i]
		}
	}
	if tlsRes == nil || plain == nil || tlsRes.Value <= 0 || tlsRes.Baseline == nil || tlsRes.Baseline.Value != plain.Value || tlsRes.Ratio <= 0 {
		t.Fatalf("TLS result %+v beside %+v", tlsRes, plain)
	}
}
