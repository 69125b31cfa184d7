package ingest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/internal/mqtttest"
	"github.com/edgefleet/edgefleet/internal/testutil"
)

// dataDir returns the shared data directory.
func dataDir(t *testing.T) string { return testutil.DataDir(t) }

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
	type pub struct {
		topic   string
		payload []byte
		at      time.Time
	}
	var pubs []pub
	clk := clock.NewManual(testNow)
	cfg := ReplayConfig{Files: files[:1], Devices: 4, Rows: 30, Speedup: 600, Clock: clk,
		Publish: func(topic string, p []byte) error {
			pubs = append(pubs, pub{topic, p, clk.Now()})
			return nil
		}}
	st, err := replayManual(clk, cfg)
	if err != nil {
		t.Fatal(err)
	}
	slept := clk.Now().Sub(testNow)
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
	if _, err := replayManual(clk, cfg); err != nil {
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

// replayManual runs Replay on a manual clock, moving the clock to the
// replay's next deadline whenever it waits: the replay runs at once, and
// the clock ends where the last message was due.
func replayManual(clk *clock.Manual, cfg ReplayConfig) (ReplayStats, error) {
	cfg.Clock = clk
	type result struct {
		st  ReplayStats
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := Replay(context.Background(), cfg)
		done <- result{st, err}
	}()
	for {
		select {
		case r := <-done:
			return r.st, r.err
		default:
		}
		if at, ok := clk.NextDeadline(); ok {
			clk.Set(at)
		} else {
			time.Sleep(20 * time.Microsecond)
		}
	}
}

// firstValues replays one row of each of n devices and returns their
// SenML payloads with the time stripped, by device.
func firstValues(t *testing.T, cfg ReplayConfig) map[string]string {
	t.Helper()
	out := map[string]string{}
	cfg.Rows = 1
	cfg.Publish = func(topic string, p []byte) error {
		s := string(p)
		out[topic] = s[strings.Index(s, `"n":`):]
		return nil
	}
	if _, err := replayManual(clock.NewManual(testNow), cfg); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestReplayOffset: replays at different offsets (as the simulator gives
// each agent) send different values from their first message on; the
// same offset sends the same.
func TestReplayOffset(t *testing.T) {
	for _, synthetic := range []bool{false, true} {
		t.Run(map[bool]string{false: "occupancy", true: "synthetic"}[synthetic], func(t *testing.T) {
			cfg := ReplayConfig{Synthetic: true, Seed: 7, Devices: 3}
			if !synthetic {
				cfg = ReplayConfig{Files: occupancyFiles(t), Devices: 3}
			}
			a, again := firstValues(t, cfg), firstValues(t, cfg)
			cfg.Offset = 577
			b := firstValues(t, cfg)
			if len(a) != 3 || len(b) != 3 {
				t.Fatalf("devices %v %v", a, b)
			}
			for topic, v := range a {
				if v != again[topic] {
					t.Errorf("%s: the same offset sent %s, then %s", topic, v, again[topic])
				}
				if v == b[topic] {
					t.Errorf("%s sent %s at offsets 0 and 577", topic, v)
				}
			}
		})
	}
}

// TestReplaySynthetic: synthetic devices need no files, send a row per
// data minute (paced by Speedup), readings a room would have, and the
// same seed sends the same payloads.
func TestReplaySynthetic(t *testing.T) {
	run := func(seed uint64) ([]string, time.Duration) {
		var pubs []string
		clk := clock.NewManual(testNow)
		st, err := replayManual(clk, ReplayConfig{Synthetic: true, Seed: seed, Devices: 2, Rows: 120, Speedup: 60, DevicePrefix: "synthetic-room-",
			Publish: func(topic string, p []byte) error { pubs = append(pubs, topic+" "+string(p)); return nil }})
		if err != nil {
			t.Fatal(err)
		}
		if st.Messages != 240 || st.Readings != 1440 {
			t.Fatalf("stats %+v", st)
		}
		return pubs, clk.Now().Sub(testNow)
	}
	a, took := run(1)
	b, _ := run(1)
	c, _ := run(2)
	// 119 data minutes at 60×: 119 s.
	if took != 119*time.Second {
		t.Fatalf("120 rows at 60× took %s", took)
	}
	if strings.Join(a, "\n") != strings.Join(b, "\n") {
		t.Fatal("the same seed sent different payloads")
	}
	if strings.Join(a, "\n") == strings.Join(c, "\n") {
		t.Fatal("different seeds sent the same payloads")
	}
	dec := newTestDecoder(t, Limits{})
	tp, _ := ParseTopicPattern("")
	for _, p := range a {
		topic, payload, _ := strings.Cut(p, " ")
		dev, err := tp.Device(topic)
		if err != nil || !strings.HasPrefix(dev, "synthetic-room-") {
			t.Fatalf("topic %s: %q %v", topic, dev, err)
		}
		if rs, _, err := dec.appendDecode(nil, dev, []byte(payload), testNow); err != nil || len(rs) != 6 {
			t.Fatalf("payload %s: %v %v", payload, rs, err)
		}
	}
}

// TestSyntheticRoom: a week of a room, minute by minute: deterministic,
// within what an office room reads, with a daily cycle, light and CO2
// that follow occupancy, and rooms that differ.
func TestSyntheticRoom(t *testing.T) {
	start := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC) // a Monday
	week := func(seed uint64) []OccupancyRow {
		r := NewSyntheticRoom(seed, start)
		rows := make([]OccupancyRow, 7*24*60)
		for i := range rows {
			rows[i] = r.Next()
		}
		return rows
	}
	rows := week(42)
	if again := week(42); !slices.Equal(rows, again) {
		t.Fatal("the same seed gave different rows")
	}
	if other := week(43); slices.Equal(rows[:60], other[:60]) {
		t.Fatal("different seeds gave the same first hour")
	}
	var occ, free struct{ n, light, co2 float64 }
	minT, maxT := map[int]float64{}, map[int]float64{}
	occupiedDays := map[int]bool{}
	for i, r := range rows {
		if !r.Time.Equal(start.Add(time.Duration(i) * time.Minute)) {
			t.Fatalf("row %d at %s", i, r.Time)
		}
		switch {
		case r.Temperature < 17 || r.Temperature > 27,
			r.Humidity < 10 || r.Humidity > 70,
			r.Light < 0 || r.Light > 1000,
			r.CO2 < 380 || r.CO2 > 2000,
			r.HumidityRatio < 0.002 || r.HumidityRatio > 0.01:
			t.Fatalf("row %d out of an office's range: %+v", i, r)
		}
		day := i / (24 * 60)
		if _, ok := minT[day]; !ok {
			minT[day], maxT[day] = r.Temperature, r.Temperature
		}
		minT[day], maxT[day] = min(minT[day], r.Temperature), max(maxT[day], r.Temperature)
		s := &free
		if r.Occupied {
			s = &occ
			occupiedDays[day] = true
			if h := r.Time.Hour(); h < 7 || h > 19 {
				t.Fatalf("occupied at %s", r.Time)
			}
		}
		s.n++
		s.light += r.Light
		s.co2 += r.CO2
	}
	for d := 0; d < 5; d++ {
		if !occupiedDays[d] {
			t.Errorf("nobody came in on working day %d", d)
		}
		if swing := maxT[d] - minT[d]; swing < 0.4 {
			t.Errorf("day %d: temperature swung %.2f °C, no daily cycle", d, swing)
		}
	}
	if occ.n == 0 || free.n == 0 {
		t.Fatalf("occupied %v minutes, free %v", occ.n, free.n)
	}
	if occ.light/occ.n < 300 || free.light/free.n > 100 {
		t.Errorf("mean light %.0f lux occupied, %.0f free", occ.light/occ.n, free.light/free.n)
	}
	if occ.co2/occ.n < free.co2/free.n+150 {
		t.Errorf("mean CO2 %.0f ppm occupied, %.0f free", occ.co2/occ.n, free.co2/free.n)
	}
	// The humidity ratio of the data set's first row from its temperature
	// and humidity (23.18 °C, 27.272 %: 0.004793).
	if w := humidityRatio(23.18, 27.272); w < 0.00474 || w > 0.00484 {
		t.Errorf("humidity ratio %g", w)
	}
}
