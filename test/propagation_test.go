package test

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	propAgents  = flag.Int("propagation.agents", 5, "TestPropagation: agent processes per fleet")
	propWrites  = flag.Int("propagation.writes", 10, "TestPropagation: single writes per fleet, on rotating agents")
	propIdle    = flag.Duration("propagation.idle", 5*time.Second, "TestPropagation: window of the idle gossip measurement")
	propProfile = flag.String("propagation.profile", "lan", "TestPropagation: gossip profile of the agents")
)

// propPoll is how often each agent is asked whether it holds the write.
const propPoll = 25 * time.Millisecond

// TestPropagation measures how fast a single write reaches every agent
// process, with the relay of gossiped deltas on and, as the baseline in
// the same run, off: two fleets of -propagation.agents real edge-agent
// processes on loopback run side by side (separate clusters), each takes
// the same writes at the same moments, and each agent is polled over its
// API until it holds the write. It also measures idle gossip per agent
// from /metrics. It reports figures and asserts only that every write
// reaches every agent (performance is measured here, not asserted):
//
//	go test ./test/ -run TestPropagation -v -args -propagation.agents=30 -propagation.writes=100
func TestPropagation(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario test: skipped with -short")
	}
	n, writes := *propAgents, *propWrites
	if n < 2 || writes < 1 {
		t.Fatalf("need at least 2 agents and 1 write, got %d and %d", n, writes)
	}
	load0 := loadAvg()
	fleets := []*propFleet{startPropFleet(t, "relay-on", n, true), startPropFleet(t, "relay-off", n, false)}
	for _, f := range fleets {
		f.waitFormed(t)
	}

	// Idle gossip, both fleets over the same window, before any write.
	before := make([][]float64, len(fleets))
	for i, f := range fleets {
		before[i] = f.bytesOut(t)
	}
	t0 := time.Now()
	time.Sleep(*propIdle)
	window := time.Since(t0).Seconds()
	for i, f := range fleets {
		after := f.bytesOut(t)
		var sum float64
		for j := range after {
			sum += after[j] - before[i][j]
		}
		f.idle = sum / window / float64(n)
	}

	// The same write at the same moment on both fleets, on rotating agents.
	for w := 0; w < writes; w++ {
		var wg sync.WaitGroup
		errs := make([]error, len(fleets))
		for i, f := range fleets {
			wg.Add(1)
			go func() {
				defer wg.Done()
				took, err := f.write(w)
				errs[i] = err
				f.took = append(f.took, took)
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	}

	on, off := fleets[0].summary(), fleets[1].summary()
	ratio := 0.0
	if on.P50 > 0 {
		ratio = off.P50 / on.P50
	}
	report := map[string]any{
		"agents": n, "writes": writes, "profile": *propProfile,
		"relay_on": on, "relay_off": off, "p50_ratio_off_on": round3(ratio),
		"load_average_start": load0, "load_average_end": loadAvg(),
	}
	b, _ := json.Marshal(report)
	t.Logf("propagation: %s", b)
}

// propSummary is one fleet's figures, in seconds and bytes per second.
type propSummary struct {
	P50             float64 `json:"p50_seconds"`
	P95             float64 `json:"p95_seconds"`
	Max             float64 `json:"max_seconds"`
	IdleBytesPerSec float64 `json:"idle_gossip_bytes_per_agent_per_second"`
	Relayed         float64 `json:"relayed_total"`
}

// propFleet is one cluster of agent processes.
type propFleet struct {
	name  string
	procs []*proc
	idle  float64
	took  []float64
	t     *testing.T
}

func startPropFleet(t *testing.T, name string, n int, relay bool) *propFleet {
	t.Helper()
	f := &propFleet{name: name, t: t}
	for i := 0; i < n; i++ {
		var seeds []string
		for j := 0; j < i && j < 3; j++ {
			seeds = append(seeds, f.procs[j].gossip)
		}
		p := newProc(t, fmt.Sprintf("%s-%02d", name, i), seeds...)
		p.extra = []string{"--profile", *propProfile, "--cluster", "edgefleet-" + name, "--no-ingest"}
		p.env = []string{"EDGEFLEET_LOG_LEVEL=info", "EDGEFLEET_GOSSIP_RELAY=" + strconv.FormatBool(relay)}
		p.start()
		f.procs = append(f.procs, p)
	}
	return f
}

func (f *propFleet) waitFormed(t *testing.T) {
	t.Helper()
	for _, p := range f.procs {
		eventually(t, 2*time.Minute, p.name+" sees the whole fleet", func() error {
			n, err := p.aliveMembers()
			if err == nil && n != len(f.procs) {
				err = fmt.Errorf("%d of %d alive", n, len(f.procs))
			}
			return err
		})
	}
}

// write puts key w on agent w mod n and returns the seconds until every
// agent held it.
func (f *propFleet) write(w int) (float64, error) {
	origin := f.procs[w%len(f.procs)]
	key := fmt.Sprintf("w-%04d", w)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	if err := origin.put(ctx, "propagation", key, fmt.Sprintf(`{"by":%q}`, origin.name)); err != nil {
		return 0, fmt.Errorf("%s: write %s on %s: %w", f.name, key, origin.name, err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(f.procs))
	for _, p := range f.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if _, ok, err := p.get("propagation", key); err == nil && ok {
					return
				}
				time.Sleep(propPoll)
			}
			errs <- fmt.Errorf("%s: %s never got write %s", f.name, p.name, key)
		}()
	}
	wg.Wait()
	took := time.Since(start).Seconds()
	close(errs)
	return took, <-errs
}

// bytesOut reads each agent's gossip bytes sent from /metrics.
func (f *propFleet) bytesOut(t *testing.T) []float64 {
	t.Helper()
	out := make([]float64, len(f.procs))
	for i, p := range f.procs {
		v, err := scrape(p, `edgefleet_gossip_bytes_total{dir="out"}`)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = v
	}
	return out
}

func (f *propFleet) summary() propSummary {
	s := append([]float64(nil), f.took...)
	sort.Float64s(s)
	at := func(q float64) float64 {
		i := int(q*float64(len(s))+0.999999) - 1
		return round3(s[max(0, min(i, len(s)-1))])
	}
	var relayed float64
	for _, p := range f.procs {
		v, err := scrape(p, "edgefleet_gossip_relayed_total")
		if err != nil {
			f.t.Error(err)
		}
		relayed += v
	}
	return propSummary{P50: at(0.5), P95: at(0.95), Max: round3(s[len(s)-1]), IdleBytesPerSec: round3(f.idle), Relayed: relayed}
}

// scrape reads one sample (name with its labels, as exposed) from an
// agent's /metrics.
func scrape(p *proc, series string) (float64, error) {
	resp, err := http.Get(p.url("/metrics"))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("%s: no %s in /metrics (%v)", p.name, series, sc.Err())
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func round3(x float64) float64 { return float64(int64(x*1000+0.5)) / 1000 }
