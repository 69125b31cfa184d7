package ingest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/mqtttest"
)

// dataDir returns the shared data directory: $EDGEFLEET_DATA, else
// ../shared/data relative to the repository root.
func dataDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("EDGEFLEET_DATA"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, "..", "shared", "data")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

func occupancyFiles(t *testing.T) []string {
	t.Helper()
	files, err := OccupancyFiles(dataDir(t))
	if err != nil {
		t.Skipf("occupancy data set not found (set EDGEFLEET_DATA): %v", err)
	}
	return files
}

func TestReadOccupancy(t *testing.T) {
	good := `"Date","Temperature","Humidity","Light","CO2","HumidityRatio","Occupancy"
"1","2015-02-04 17:51:00",23.18,27.272,426,721.25,0.00479298817650529,1
"2015-02-04 17:51:59",23.15,27.2675,429.5,714,0.00478344094931065,0
`
	rows, err := ReadOccupancy(strings.NewReader(good))
	if err != nil {
		t.Fatal(err)
	}
	want0 := OccupancyRow{Time: time.Date(2015, 2, 4, 17, 51, 0, 0, time.UTC), Temperature: 23.18, Humidity: 27.272, Light: 426,
		CO2: 721.25, HumidityRatio: 0.00479298817650529, Occupied: true}
	if len(rows) != 2 || rows[0] != want0 || rows[1].Occupied {
		t.Fatalf("rows %+v", rows)
	}
	for _, bad := range []string{
		``,
		`"Date","Temperature"` + "\n",
		`"Date","Temp","Humidity","Light","CO2","HumidityRatio","Occupancy"` + "\n",
		`"Date","Temperature","Humidity","Light","CO2","HumidityRatio","Occupancy"` + "\n",
		`"Date","Temperature","Humidity","Light","CO2","HumidityRatio","Occupancy"` + "\n" + `"2015-02-04",1,2,3,4,5,1` + "\n",
		`"Date","Temperature","Humidity","Light","CO2","HumidityRatio","Occupancy"` + "\n" + `"2015-02-04 17:51:00",x,2,3,4,5,1` + "\n",
		`"Date","Temperature","Humidity","Light","CO2","HumidityRatio","Occupancy"` + "\n" + `"2015-02-04 17:51:00",1,2,3,4,5,2` + "\n",
		`"Date","Temperature","Humidity","Light","CO2","HumidityRatio","Occupancy"` + "\n" + `"2015-02-04 17:51:00",1,2` + "\n",
	} {
		if _, err := ReadOccupancy(strings.NewReader(bad)); err == nil || !strings.HasPrefix(err.Error(), "ingest: ") {
			t.Errorf("%q: error %v", bad, err)
		}
	}
}

func TestReadOccupancyDataSet(t *testing.T) {
	want := map[string]int{"datatraining.txt": 8143, "datatest.txt": 2665, "datatest2.txt": 9752}
	for _, f := range occupancyFiles(t) {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := ReadOccupancy(fh)
		fh.Close()
		if err != nil {
			t.Fatal(err)
		}
		if n, ok := want[filepath.Base(f)]; ok && len(rows) != n {
			t.Errorf("%s: %d rows, want %d", f, len(rows), n)
		}
	}
}

// TestReplayDeterministic replays with an injected clock and publisher:
// the schedule follows the data's minutes compressed by Speedup and
// every payload decodes into the six readings of its row.
func TestReplayDeterministic(t *testing.T) {
	files := occupancyFiles(t)
	clk := newFakeClock()
	var slept time.Duration
	type pub struct {
		topic   string
		payload []byte
		at      time.Time
	}
	var pubs []pub
	cfg := ReplayConfig{Files: files[:1], Devices: 4, Rows: 30, Speedup: 600, Clock: clk.Now,
		Sleep: func(ctx context.Context, d time.Duration) error { slept += d; clk.Advance(d); return nil },
		Publish: func(topic string, p []byte) error {
			pubs = append(pubs, pub{topic, p, clk.Now()})
			return nil
		}}
	st, err := Replay(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Messages != 120 || st.Devices != 4 || len(pubs) != 120 || st.Readings != 720 {
		t.Fatalf("stats %+v, %d publications", st, len(pubs))
	}
	// 29 steps of about a minute, compressed 600×: about 2.9 s.
	if slept < 2500*time.Millisecond || slept > 3500*time.Millisecond {
		t.Fatalf("slept %s", slept)
	}
	dec := newTestDecoder(t, Limits{})
	tp, _ := ParseTopicPattern("")
	perDev := map[string]int{}
	var first []Reading
	for i, p := range pubs {
		dev, err := tp.Device(p.topic)
		if err != nil {
			t.Fatal(err)
		}
		perDev[dev]++
		rs, _, err := dec.appendDecode(nil, dev, p.payload, p.at)
		if err != nil || len(rs) != 6 {
			t.Fatalf("payload %s: %v %v", p.payload, rs, err)
		}
		if !rs[0].Time.Equal(p.at.Truncate(time.Microsecond)) {
			t.Fatalf("reading time %s, sent %s", rs[0].Time, p.at)
		}
		if i == 0 {
			first = rs
		}
	}
	if len(perDev) != 4 || perDev["room-0"] != 30 {
		t.Fatalf("per device %v", perDev)
	}
	if first[0].Metric != "temperature" || first[0].Unit != "Cel" || first[5].Metric != "occupancy" || first[5].Kind != KindBool {
		t.Fatalf("first message readings %+v", first)
	}
	// Flat payloads and the original times.
	pubs = nil
	cfg.Flat, cfg.OriginalTimes, cfg.Devices, cfg.Rows = true, true, 1, 2
	if _, err := Replay(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Open(files[0])
	if err != nil {
		t.Fatal(err)
	}
	rows, err := ReadOccupancy(fh)
	fh.Close()
	if err != nil {
		t.Fatal(err)
	}
	wantTS := fmt.Sprintf(`"ts":%d.000000`, rows[0].Time.Unix())
	if !strings.Contains(string(pubs[0].payload), wantTS) || !strings.Contains(string(pubs[0].payload), fmt.Sprintf(`"occupancy":%v`, rows[0].Occupied)) {
		t.Fatalf("flat payload %s", pubs[0].payload)
	}
	cfg.Publish = func(string, []byte) error { return errors.New("down") }
	if _, err := Replay(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "down") {
		t.Fatalf("publish error: %v", err)
	}
	if _, err := Replay(context.Background(), ReplayConfig{}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("empty config: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Replay(ctx, ReplayConfig{Files: files[:1], Publish: func(string, []byte) error { return nil }}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled replay: %v", err)
	}
}

// TestReplayOverMosquitto: the occupancy replay over real MQTT into the
// ingestor.
func TestReplayOverMosquitto(t *testing.T) {
	files := occupancyFiles(t)
	m := startMosquitto(t, mqtttest.Options{})
	dir := t.TempDir()
	in := startMQTTIngestor(t, m.URL(), "replay-agent", dir, nil)
	defer in.Stop()
	waitSubscribed(t, in)
	st, err := Replay(context.Background(), ReplayConfig{Files: files, Devices: 5, Rows: 20, Speedup: 60000, Broker: m.URL()})
	if err != nil {
		t.Fatal(err)
	}
	rep := waitMessages(t, dir, int64(st.Messages))
	if st.Messages != 100 || rep.Readings != 600 || rep.DeadLetters != 0 || len(rep.Devices) != 5 {
		t.Fatalf("replay %+v, store %+v", st, rep)
	}
	for _, d := range rep.Devices {
		if len(d.Metrics) != 6 {
			t.Fatalf("device %+v", d)
		}
	}
}
