//go:build linux

package test

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

var fullDiskMessages = flag.Int("fulldisk.messages", 20000, "TestFullDiskHoldsBack: messages queued in Mosquitto (the issue's run: 200000)")

// fullDiskMetrics is how many readings each message of TestFullDiskHoldsBack
// carries: 20,000 such messages need more than the 12 MB file system.
const fullDiskMetrics = 20

// TestFullDiskHoldsBack: a backlog of QoS 1 messages waits in Mosquitto
// (max_queued_messages 0) for an agent whose data directory is a 12 MB
// file system, with no free-space reserve, so the disk really fills
// (ENOSPC, SQLITE_FULL) under the ingestion database. The agent stays up,
// shows disk_full backpressure (/v1/ingest, /metrics, its log), stops
// acknowledging and dead-letters nothing; once the file system grows,
// every reading is stored exactly once.
func TestFullDiskHoldsBack(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario test: skipped with -short")
	}
	mnt := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	mountTmpfs(t, mnt, "12m")
	m, err := mqtttest.Start(mqtttest.Options{Dir: t.TempDir()})
	if errors.Is(err, mqtttest.ErrNoMosquitto) {
		skipLoudly(t, "mosquitto is not installed (Debian: apt-get install mosquitto mosquitto-clients)")
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
	pub, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		skipLoudly(t, "mosquitto_pub is not installed (Debian: apt-get install mosquitto-clients)")
	}

	p := newProc(t, "edge-fulldisk")
	p.dataDir = filepath.Join(mnt, "agent")
	cfg := filepath.Join(t.TempDir(), "agent.yaml")
	conf := fmt.Sprintf("ingest:\n  mqtt:\n    broker: %s\n    client_id: fulldisk-agent\n  min_free_bytes: 0\n", m.URL())
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p.extra = append(p.extra, "--config", cfg)
	// First run: the agent's persistent session is created, then the
	// agent stops and Mosquitto queues the backlog for it.
	p.start()
	p.waitBroker()
	p.stop()

	total := *fullDiskMessages
	publishBacklog(t, pub, m.Port(), total)
	t.Logf("%d messages of %d readings queued in Mosquitto", total, fullDiskMetrics)

	p.start()
	// The disk fills: commits fail with SQLITE_FULL, ingestion holds back.
	var st fullDiskStatus
	eventually(t, 120*time.Second, "disk_full backpressure", func() error {
		st = fullDiskStatus{}
		if err := p.getJSON("/v1/ingest", &st); err != nil {
			return err
		}
		if st.Stats.Acked == int64(total) {
			t.Fatalf("all %d messages stored before the file system filled: raise -fulldisk.messages or the payload", total)
		}
		if st.Pressure != "disk_full" {
			return fmt.Errorf("pressure %q, acked %d", st.Pressure, st.Stats.Acked)
		}
		return nil
	})
	if free := fsFree(t, mnt); free > 1<<20 {
		t.Fatalf("disk_full with %d bytes free on the file system", free)
	}
	// Held: nothing acknowledged that is not stored, nothing
	// dead-lettered, the agent up. Acknowledgements follow commits
	// asynchronously, so they may still catch up with messages committed
	// before the disk filled; they never run ahead of the store.
	time.Sleep(2 * time.Second)
	var held fullDiskStatus
	if err := p.getJSON("/v1/ingest", &held); err != nil {
		t.Fatal(err)
	}
	if held.Pressure != "disk_full" || held.Stats.Acked > held.Store.Messages+held.Store.DuplicateMessages || held.Store.DeadLetters != 0 || held.Stats.Backpressure != "disk_full" {
		t.Fatalf("while full: %+v (2 s before: %+v)", held, st)
	}
	t.Logf("full: %d of %d messages acknowledged, %d readings stored, %d bytes free", held.Stats.Acked, total, held.Store.Readings, fsFree(t, mnt))
	if v := metricLine(t, p, `edgefleet_ingest_backpressure{reason="disk_full"}`); v != "1" {
		t.Fatalf("metric edgefleet_ingest_backpressure{reason=\"disk_full\"} = %q while full", v)
	}
	if logs := p.logs.String(); !strings.Contains(logs, "reason=disk_full") {
		t.Fatalf("no disk_full in the agent's log:\n%s", logs)
	}
	resp, err := http.Get(p.url("/healthz"))
	if err != nil {
		t.Fatalf("agent unreachable while the disk is full: %v", err)
	}
	resp.Body.Close()
	// A state write either fits (200, then it is there) or is refused as
	// retryable (503), never acknowledged falsely nor blamed on the caller.
	big := `"` + strings.Repeat("x", 256<<10) + `"`
	switch err := p.put(context.Background(), "fulldisk", "big", big); {
	case err == nil:
		if got, ok, err := p.get("fulldisk", "big"); err != nil || !ok || string(got) != big {
			t.Fatalf("state write acknowledged while full, then: found %v, %v", ok, err)
		}
		t.Log("state write fitted while the disk was full")
	case strings.Contains(err.Error(), "503"):
		t.Logf("state write while full: %v", err)
	default:
		t.Fatalf("state write while full: %v, want 200 or 503", err)
	}

	// The file system grows: everything is stored, once.
	// Room for the whole backlog: about 150 bytes a reading stored (rows,
	// indexes, WAL), never less than 256 MiB. 200,000 messages of 20
	// readings filled 256 MiB again before the last ones were stored.
	remountTmpfs(t, mnt, fmt.Sprintf("%dm", max(256, total*fullDiskMetrics*150>>20+64)))
	eventually(t, 300*time.Second, "every message stored", func() error {
		st = fullDiskStatus{}
		if err := p.getJSON("/v1/ingest", &st); err != nil {
			return err
		}
		if st.Stats.Acked != int64(total) || st.Pressure != "" {
			return fmt.Errorf("acked %d of %d, pressure %q", st.Stats.Acked, total, st.Pressure)
		}
		return nil
	})
	want := int64(total * fullDiskMetrics)
	if st.Store.Readings != want || st.Store.StoredTotal != want || st.Store.DeadLetters != 0 || st.Store.Messages != int64(total) {
		t.Fatalf("after the file system grew: store %+v; want %d readings, each once, %d messages, no dead letter", st.Store, want, total)
	}
	if v := metricLine(t, p, `edgefleet_ingest_backpressure{reason="disk_full"}`); v != "0" {
		t.Fatalf("metric edgefleet_ingest_backpressure{reason=\"disk_full\"} = %q after the file system grew", v)
	}
	select {
	case <-p.exited:
		t.Fatalf("agent exited:\n%s", p.logs.String())
	default:
	}
}

// fullDiskStatus is the part of GET /v1/ingest TestFullDiskHoldsBack reads.
type fullDiskStatus struct {
	Pressure string `json:"pressure"`
	Stats    struct {
		Acked         int64  `json:"acked"`
		Backpressure  string `json:"backpressure"`
		DiskFreeBytes int64  `json:"disk_free_bytes"`
	} `json:"stats"`
	Store struct {
		Readings    int64 `json:"readings"`
		StoredTotal int64 `json:"stored_total"`
		DeadLetters int64 `json:"dead_letters"`
		Messages    int64 `json:"messages"`
		// Redelivered messages acknowledged without storing them again.
		DuplicateMessages int64 `json:"duplicate_messages"`
	} `json:"store"`
}

// publishBacklog publishes total QoS 1 messages of fullDiskMetrics
// readings each, with distinct times, through mosquitto_pub.
func publishBacklog(t *testing.T, bin string, port, total int) {
	t.Helper()
	// One mosquitto_pub takes at most chunk lines: it ends its stream by
	// the packet id of its last line, and ids wrap at 65535.
	const chunk = 50000
	base := time.Now().Add(-time.Hour).UnixMicro()
	for from := 0; from < total; from += chunk {
		cmd := exec.Command(bin, "-h", "127.0.0.1", "-p", strconv.Itoa(port), "-q", "1",
			"-i", fmt.Sprintf("fulldisk-pub-%d", from), "-t", "devices/filler/telemetry", "-l")
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		w := bufio.NewWriter(stdin)
		for i := from; i < min(from+chunk, total); i++ {
			fmt.Fprintf(w, `{"ts":%.6f`, float64(base+int64(i))/1e6)
			for k := range fullDiskMetrics {
				fmt.Fprintf(w, `,"m%02d":%d`, k, i+k)
			}
			w.WriteString("}\n")
		}
		if err := w.Flush(); err != nil {
			t.Fatalf("mosquitto_pub: %v: %s", err, out.String())
		}
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("mosquitto_pub: %v: %s", err, out.String())
		}
	}
}

// skipLoudly skips the test with a message that shows without -v.
func skipLoudly(t *testing.T, why string) {
	t.Helper()
	fmt.Fprintf(os.Stderr, "SKIP %s: %s\n", t.Name(), why)
	t.Skip("SKIPPED: " + why)
}

// mountTmpfs mounts a tmpfs of size on dir (unmounted when the test
// ends), or skips the test when that is not possible (not root, no
// mount).
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipLoudly(t, "needs root to mount a size-limited tmpfs (CI runs as root)")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		skipLoudly(t, fmt.Sprintf("cannot mount a tmpfs: %v: %s", err, out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
}

// remountTmpfs changes the size of the tmpfs on dir.
func remountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if out, err := exec.Command("mount", "-o", "remount,size="+size, dir).CombinedOutput(); err != nil {
		t.Fatalf("remount %s: %v: %s", dir, err, out)
	}
}

// fsFree returns the bytes free on the file system holding dir.
func fsFree(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// metricLine returns the value of one sample of the agent's /metrics.
func metricLine(t *testing.T, p *proc, sample string) string {
	t.Helper()
	resp, err := http.Get(p.url("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, sample+" "); ok {
			return v
		}
	}
	return ""
}
