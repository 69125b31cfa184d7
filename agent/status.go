package agent

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/procstat"
)

// Health statuses reported in heartbeats.
const (
	healthOK       = "ok"
	healthDegraded = "degraded"
	healthFailing  = "failing"
)

// heartbeatCheckTimeout bounds the store checks of one heartbeat.
const heartbeatCheckTimeout = 2 * time.Second

// heartbeat is what the uplink reports to the control plane: health
// checks and resources. The uplink fills in the version, OS and
// architecture of the binary (internal/buildinfo).
func (a *Agent) heartbeat() cpapi.Heartbeat {
	return cpapi.Heartbeat{
		Name:      a.Name(),
		Health:    a.health(),
		Resources: a.resources(),
	}
}

// health runs the agent's checks: "failing" when the replicated state
// cannot be read, "degraded" when ingestion is impaired (no broker
// session, held back, its database unreadable), else "ok".
func (a *Agent) health() *cpapi.Health {
	ctx, cancel := context.WithTimeout(context.Background(), heartbeatCheckTimeout)
	defer cancel()
	h := &cpapi.Health{Status: healthOK, Checks: map[string]string{}}
	worse := func(s string) {
		if s == healthFailing || h.Status == healthOK {
			h.Status = s
		}
	}
	if s, err := a.liveStore(); err != nil {
		h.Checks["state_store"] = err.Error()
		worse(healthFailing)
	} else if _, err := s.VersionVector(ctx); err != nil {
		h.Checks["state_store"] = err.Error()
		worse(healthFailing)
	} else {
		h.Checks["state_store"] = healthOK
	}
	peers := a.peers.Load()
	h.Checks["members_alive"] = strconv.Itoa(peers.Count(StateAlive))
	if n := peers.Count(StateDead); n > 0 {
		h.Checks["members_dead"] = strconv.Itoa(n)
	}
	if h.Incidents = heartbeatIncidents(a.Incidents()); len(h.Incidents) > 0 {
		worse(healthDegraded)
	}
	a.mu.Lock()
	in, store := a.ingestor, a.ingestStore
	a.mu.Unlock()
	if in == nil {
		h.Checks["ingest"] = "disabled"
		return h
	}
	if in.Subscribed() {
		h.Checks["ingest_subscribed"] = healthOK
	} else {
		h.Checks["ingest_subscribed"] = "not subscribed to " + in.Broker()
		worse(healthDegraded)
	}
	if p := in.Stats().Backpressure; p != "" {
		h.Checks["ingest_backpressure"] = "held back: " + p
		worse(healthDegraded)
	}
	if _, err := store.Stats(ctx); err != nil {
		h.Checks["ingest_store"] = err.Error()
		worse(healthDegraded)
	} else {
		h.Checks["ingest_store"] = healthOK
	}
	return h
}

// resources samples CPU, load, memory, the data directory's file system
// and the agent's uptime. Values a platform does not report are 0.
//
// The CPU sample pairs the process's CPU time with the system clock, not
// a.clk: both are measurements of the real process, and a percentage of
// real CPU seconds over simulated (scaled or manual) seconds would mean
// nothing. Uptime is logic and uses a.clk.
func (a *Agent) resources() *cpapi.Resources {
	r := &cpapi.Resources{CPUPercent: a.cpu.percent(time.Now(), procstat.CPUSeconds())}
	r.Load1 = readLoad1()
	r.MemUsedBytes, r.MemTotalBytes = memoryUsage()
	r.DiskUsedBytes, r.DiskTotalBytes, _ = diskUsage(a.cfg.DataDir)
	if up := a.clk.Now().Sub(a.startedAt); up > 0 && !a.startedAt.IsZero() {
		r.UptimeSeconds = uint64(up / time.Second)
	}
	r.Energy = a.energyReport()
	return r
}

// cpuSampler turns the process's cumulative CPU time into a percentage of
// one core between two samples.
type cpuSampler struct {
	mu      sync.Mutex
	lastAt  time.Time
	lastCPU float64
}

func (c *cpuSampler) percent(now time.Time, cpuSeconds float64) float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	prevAt, prevCPU := c.lastAt, c.lastCPU
	c.lastAt, c.lastCPU = now, cpuSeconds
	if prevAt.IsZero() {
		return 0
	}
	wall := now.Sub(prevAt).Seconds()
	if wall <= 0 || cpuSeconds < prevCPU {
		return 0
	}
	return 100 * (cpuSeconds - prevCPU) / wall
}

// readLoad1 is the 1-minute load average from /proc/loadavg (Linux).
func readLoad1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	return parseLoad1(b)
}

func parseLoad1(b []byte) float64 {
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil || v < 0 {
		return 0
	}
	return v
}

// memoryUsage is the host's used (total minus available) and total memory
// from /proc/meminfo; elsewhere the memory this process holds from the OS.
func memoryUsage() (used, total uint64) {
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if used, total, err := parseMeminfo(b); err == nil {
			return used, total
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Sys, 0
}

// parseMeminfo reads MemTotal and MemAvailable (kB) from /proc/meminfo.
func parseMeminfo(b []byte) (used, total uint64, err error) {
	var avail uint64
	var haveTotal, haveAvail bool
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, perr := strconv.ParseUint(f[0], 10, 64)
		if perr != nil {
			continue
		}
		switch name {
		case "MemTotal":
			total, haveTotal = v*1024, true
		case "MemAvailable":
			avail, haveAvail = v*1024, true
		}
	}
	if !haveTotal || !haveAvail || avail > total {
		return 0, 0, fmt.Errorf("agent: meminfo lacks MemTotal or MemAvailable")
	}
	return total - avail, total, nil
}
