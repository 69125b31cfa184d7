package agent

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"
)

// envInt and envDuration read benchmark knobs.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkFleetPartitionHeal measures, on a fleet of agents with the lan
// profile on loopback: idle gossip bytes per agent per second (sent plus
// received, all memberlist traffic), and the time from healing a partition
// (held long enough for both sides to declare each other dead, with writes
// on both sides) until every agent sees every other alive and holds the
// same state. Knobs: EDGEFLEET_BENCH_AGENTS (50), EDGEFLEET_BENCH_PARTITION
// (30s), EDGEFLEET_BENCH_IDLE (20s), EDGEFLEET_BENCH_WRITES (20 per agent
// during the partition). One iteration takes about a minute:
//
//	go test -run XXX -bench FleetPartitionHeal -benchtime 1x ./agent/
func BenchmarkFleetPartitionHeal(b *testing.B) {
	n := envInt("EDGEFLEET_BENCH_AGENTS", 50)
	partition := envDuration("EDGEFLEET_BENCH_PARTITION", 30*time.Second)
	idle := envDuration("EDGEFLEET_BENCH_IDLE", 20*time.Second)
	writes := envInt("EDGEFLEET_BENCH_WRITES", 20) // per agent while partitioned
	for i := 0; i < b.N; i++ {
		c := newCluster(b)
		lan := func(cfg *Config) {
			cfg.Gossip.Profile = ProfileLAN
			cfg.Gossip.SyncInterval = DefaultConfig().Gossip.SyncInterval
			cfg.Gossip.SyncTimeout = DefaultConfig().Gossip.SyncTimeout
			cfg.Gossip.ReconnectInterval = DefaultConfig().Gossip.ReconnectInterval
			cfg.API.Addr = ""
		}
		var agents []*Agent
		for j := 0; j < n; j++ {
			var seeds []string
			if j > 0 {
				seeds = []string{agents[0].GossipAddr()}
			}
			agents = append(agents, c.start(fmt.Sprintf("agent-%02d", j), seeds, lan))
		}
		start := time.Now()
		waitFor(b, 60*time.Second, "membership", func() (bool, string) { return allAlive(agents) })
		formed := time.Since(start)
		ctx := context.Background()
		for j, a := range agents {
			if err := a.Put(ctx, "devices", a.Name(), []byte(strconv.Itoa(j))); err != nil {
				b.Fatal(err)
			}
		}
		waitFor(b, 60*time.Second, "initial convergence", func() (bool, string) { return sameState(agents) })
		time.Sleep(5 * time.Second) // let broadcasts and suspicion settle

		bytesOf := func() uint64 {
			var t uint64
			for _, a := range agents {
				st := a.Stats()
				t += st.GossipBytesSent + st.GossipBytesReceived
			}
			return t
		}
		streamOf := func() uint64 {
			var t uint64
			for _, a := range agents {
				t += a.m.traffic.StreamBytesOut.Load() + a.m.traffic.StreamBytesIn.Load()
			}
			return t
		}
		rounds := func() uint64 {
			var t uint64
			for _, a := range agents {
				t += a.Stats().SyncRounds
			}
			return t
		}
		extra := func() (ms, rc uint64) {
			for _, a := range agents {
				st := a.Stats()
				ms += st.MemberSyncs
				rc += st.Reconnects
			}
			return
		}
		b0, s0, r0, t0 := bytesOf(), streamOf(), rounds(), time.Now()
		ms0, rc0 := extra()
		time.Sleep(idle)
		secs := time.Since(t0).Seconds()
		idleRate := float64(bytesOf()-b0) / secs / float64(n)
		ms1, rc1 := extra()
		b.Logf("idle: streams %.0f B/s per agent, sync rounds %.2f/s per agent, member push/pulls %d, reconnects %d",
			float64(streamOf()-s0)/secs/float64(n), float64(rounds()-r0)/secs/float64(n), ms1-ms0, rc1-rc0)
		b.ReportMetric(idleRate, "idle_B/s/agent")
		b.Logf("%d agents formed one cluster in %v; idle gossip %.0f B/s per agent (sent+received)", n, formed.Round(time.Millisecond), idleRate)

		var g1, g2 []string
		for j, a := range agents {
			if j%2 == 0 {
				g1 = append(g1, a.GossipAddr())
			} else {
				g2 = append(g2, a.GossipAddr())
			}
		}
		c.part.Split(g1, g2)
		splitAt := time.Now()
		for j, a := range agents {
			for k := 0; k < writes; k++ {
				if err := a.Put(ctx, "devices", fmt.Sprintf("%s-%d", a.Name(), k), []byte("partitioned-"+strconv.Itoa(j))); err != nil {
					b.Fatal(err)
				}
			}
			if err := a.CounterAdd(ctx, "writes", "total", 1); err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(partition - time.Since(splitAt))
		dead := 0
		for _, m := range agents[0].Members() {
			if m.State == StateDead {
				dead++
			}
		}
		b.Logf("after %v of partition agent-00 sees %d dead", partition, dead)

		var rounds0, skipped0, chunks0 uint64
		for _, a := range agents {
			st := a.Stats()
			rounds0, skipped0, chunks0 = rounds0+st.SyncRounds, skipped0+st.SyncSkipped, chunks0+st.SyncChunksSent
		}
		healed := time.Now()
		c.part.Heal()
		// For each agent, when its state hash last changed and when it last
		// saw a member change state; once the fleet has converged, these are
		// when each agent reached the final state and the full membership.
		type mark struct {
			hash         string
			alive        int
			hashAt, memb time.Duration
		}
		last := make([]mark, n)
		var slowestHash, slowestSweep time.Duration
		waitFor(b, 180*time.Second, "convergence after heal", func() (bool, string) {
			now := time.Since(healed)
			defer func() { slowestSweep = max(slowestSweep, time.Since(healed)-now) }()
			for j, a := range agents {
				t0 := time.Now()
				h, err := a.Store().StateHash(ctx)
				slowestHash = max(slowestHash, time.Since(t0))
				if err != nil {
					return false, err.Error()
				}
				alive := 0
				for _, m := range a.Members() {
					if m.State == StateAlive {
						alive++
					}
				}
				if h != last[j].hash {
					last[j].hash, last[j].hashAt = h, now
				}
				if alive != last[j].alive {
					last[j].alive, last[j].memb = alive, now
				}
			}
			for j := range last {
				if last[j].alive != n || last[j].hash != last[0].hash {
					return false, fmt.Sprintf("%s: %d alive", agents[j].Name(), last[j].alive)
				}
			}
			return true, ""
		})
		pct := func(get func(mark) time.Duration) (time.Duration, time.Duration, time.Duration) {
			ts := make([]time.Duration, n)
			for j := range last {
				ts[j] = get(last[j])
			}
			sort.Slice(ts, func(x, y int) bool { return ts[x] < ts[y] })
			return ts[n/2], ts[(n*99-1)/100], ts[n-1]
		}
		s50, s99, smax := pct(func(m mark) time.Duration { return m.hashAt })
		m50, m99, mmax := pct(func(m mark) time.Duration { return m.memb })
		b.ReportMetric(s50.Seconds(), "state_p50_s")
		b.ReportMetric(s99.Seconds(), "state_p99_s")
		b.ReportMetric(m99.Seconds(), "members_p99_s")
		b.Logf("after heal, final state held: p50 %v p99 %v max %v", s50.Round(time.Millisecond), s99.Round(time.Millisecond), smax.Round(time.Millisecond))
		b.Logf("after heal, every member alive: p50 %v p99 %v max %v", m50.Round(time.Millisecond), m99.Round(time.Millisecond), mmax.Round(time.Millisecond))
		b.Logf("healed at %s; slowest poll sweep %v, slowest StateHash %v", healed.UTC().Format("15:04:05.000"),
			slowestSweep.Round(time.Millisecond), slowestHash.Round(time.Millisecond))
		var rounds1, skipped1, chunks1 uint64
		for _, a := range agents {
			st := a.Stats()
			rounds1, skipped1, chunks1 = rounds1+st.SyncRounds, skipped1+st.SyncSkipped, chunks1+st.SyncChunksSent
		}
		b.Logf("heal: %d sync rounds, %d requests skipped, %d delta chunks sent", rounds1-rounds0, skipped1-skipped0, chunks1-chunks0)
		var reconnects []int
		for _, a := range agents {
			reconnects = append(reconnects, int(a.Stats().Reconnects))
		}
		sort.Ints(reconnects)
		b.Logf("reconnects per agent: min %d median %d max %d", reconnects[0], reconnects[n/2], reconnects[n-1])
		for _, a := range agents {
			a.Kill()
		}
	}
}
