package secaggbench

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn/secagg"
)

func TestRunSecAgg(t *testing.T) {
	rep, err := RunSecAgg(context.Background(), SecAggOptions{Sizes: []SecAggSize{{12, 500}}, NumShares: 5, Threshold: 3, Rounds: 1, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Suite != "secagg" || len(rep.Results) != 7 {
		t.Fatalf("report %+v", rep)
	}
	for _, r := range rep.Results {
		if !strings.HasPrefix(r.Name, "12x500/") || r.Value <= 0 || (r.Baseline != nil && (r.Baseline.Value <= 0 || r.Ratio <= 0)) {
			t.Fatalf("result %+v", r)
		}
		switch r.Name {
		case "12x500/survivors":
			if r.Value != 10 { // 20 % of 12 dropped, rounded
				t.Fatalf("survivors %v", r.Value)
			}
		case "12x500/relative_error":
			if r.Value > 100 { // ppm
				t.Fatalf("relative error %v", r.Value)
			}
		case "12x500/update_bytes":
			if r.Ratio > 1.05 {
				t.Fatalf("masked update %v bytes, %.3fx the plain one", r.Value, r.Ratio)
			}
		}
	}
	if _, err := RunSecAgg(context.Background(), SecAggOptions{Sizes: []SecAggSize{{1, 10}}}); err == nil {
		t.Fatal("one client accepted")
	}
	// Too many dropouts for the threshold: the round's error, not a result.
	if _, err := RunSecAgg(context.Background(), SecAggOptions{Sizes: []SecAggSize{{6, 10}}, NumShares: 5, Threshold: 4, Dropout: 0.6, Rounds: 1}); err == nil || !strings.Contains(err.Error(), "too few") {
		t.Fatalf("round with 60%% dropouts: %v", err)
	}
}

// One SecAgg+ round per iteration, 20 % dropping after their shares, with
// the same plain round as the secagg suite; metrics per round.
func benchSecAgg(b *testing.B, n, d int) {
	cfg := secagg.Config{NumShares: 0.5, ReconstructionThreshold: 0.5}
	var sum secAggRound
	k := 0
	for b.Loop() {
		r, err := runSecAggRound(cfg, SecAggSize{n, d}, 0.2, uint64(k), time.Now)
		if err != nil {
			b.Fatal(err)
		}
		k++
		sum.clientUS += r.clientUS
		sum.plainClientUS += r.plainClientUS
		sum.serverUS += r.serverUS
		sum.plainServerUS += r.plainServerUS
		sum.updateBytes, sum.keyShareBytes, sum.relErr = r.updateBytes, r.keyShareBytes, max(sum.relErr, r.relErr)
	}
	f := float64(k)
	b.ReportMetric(sum.clientUS/f, "client-us/round")
	b.ReportMetric(sum.plainClientUS/f, "plain-client-us/round")
	b.ReportMetric(sum.serverUS/f, "server-us/round")
	b.ReportMetric(sum.plainServerUS/f, "plain-server-us/round")
	b.ReportMetric(sum.updateBytes/float64(4*d), "update-bytes/plain")
	b.ReportMetric(sum.keyShareBytes, "key-share-bytes/client")
	b.ReportMetric(sum.relErr, "max-rel-err")
}

func BenchmarkSecAgg36x3206(b *testing.B)   { benchSecAgg(b, 36, 3206) }
func BenchmarkSecAgg100x10000(b *testing.B) { benchSecAgg(b, 100, 10000) }
