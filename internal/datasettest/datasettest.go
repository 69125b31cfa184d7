// Package datasettest turns slices of the shared data sets (occupancy,
// WISDM) into device messages at test time, so that tests can publish
// them over MQTT as a device would, and gives the training job specs that
// learn from them. The data stay in the shared data directory
// ($EDGEFLEET_DATA, else ../shared/data beside the repository); tests skip
// loudly when they are absent.
package datasettest

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/internal/testutil"
)

// Dir is the shared data directory: $EDGEFLEET_DATA, else ../shared/data
// beside the repository.
func Dir(t testing.TB) string { return testutil.DataDir(t) }

// OccupancyMetrics are the metric names the occupancy messages carry; the
// last is the label (0 empty, 1 occupied).
var OccupancyMetrics = []string{"Temperature", "Humidity", "Light", "CO2", "HumidityRatio", "Occupancy"}

// Occupancy returns rows [from, from+n) of the occupancy training file
// (datatraining.txt) as flat JSON messages, one per row, timed (in whole
// seconds) so that the last row is an hour before end and the rows keep
// their spacing (a minute), and the time range they span, [first, last+1s). It skips the
// test, saying so, when the data set is absent.
func Occupancy(t testing.TB, from, n int, end time.Time) (lines []string, first, stop time.Time) {
	t.Helper()
	path := filepath.Join(Dir(t), "occupancy", "datatraining.txt")
	f, err := os.Open(path)
	if err != nil {
		t.Skipf("SKIP: occupancy data set not found (set EDGEFLEET_DATA): %v", err)
	}
	defer f.Close()
	rows, err := ingest.ReadOccupancy(f)
	if err != nil {
		t.Fatal(err)
	}
	if from < 0 || n < 1 || from+n > len(rows) {
		t.Fatalf("datasettest: rows [%d, %d) of %d", from, from+n, len(rows))
	}
	rows = rows[from : from+n]
	shift := end.Truncate(time.Second).Add(-time.Hour).Sub(rows[len(rows)-1].Time)
	for _, r := range rows {
		occ := 0
		if r.Occupied {
			occ = 1
		}
		at := r.Time.Add(shift)
		lines = append(lines, fmt.Sprintf(`{"ts":%d,"Temperature":%g,"Humidity":%g,"Light":%g,"CO2":%g,"HumidityRatio":%g,"Occupancy":%d}`,
			at.Unix(), r.Temperature, r.Humidity, r.Light, r.CO2, r.HumidityRatio, occ))
	}
	return lines, rows[0].Time.Add(shift), rows[len(rows)-1].Time.Add(shift).Add(time.Second)
}

// OccupancySpec is a job training model ("lr", "mlp:64") on the occupancy
// messages of device in [from, to): the five sensor metrics' latest values,
// label metric Occupancy.
func OccupancySpec(device, model string, epochs int, from, to time.Time) agentapi.TrainingJobSpec {
	var feats []string
	for _, m := range OccupancyMetrics[:5] {
		feats = append(feats, fmt.Sprintf(`{"name":%q,"metric":%q,"agg":"latest"}`, m, m))
	}
	return agentapi.TrainingJobSpec{
		Model:  model,
		Schema: []byte(`{"features":[` + strings.Join(feats, ",") + `],"label":{"metric":"Occupancy"}}`),
		Labels: []string{"empty", "occupied"},
		Device: device, From: from, To: to,
		Epochs: epochs, Solver: "adam", LearnRate: 0.01, BatchSize: 64, Seed: 1,
	}
}

// WISDMClasses are the activity classes of WISDM v1.1, in class-index order.
var WISDMClasses = []string{"Downstairs", "Jogging", "Sitting", "Standing", "Upstairs", "Walking"}

// WISDMFeatures are the 43 feature columns of WISDM v1.1 (the columns
// between the user id and the class).
func WISDMFeatures() []string {
	var out []string
	for _, axis := range []string{"X", "Y", "Z"} {
		for i := 0; i < 10; i++ {
			out = append(out, axis+strconv.Itoa(i))
		}
	}
	return append(out, "XAVG", "YAVG", "ZAVG", "XPEAK", "YPEAK", "ZPEAK", "XABSOLDEV", "YABSOLDEV", "ZABSOLDEV",
		"XSTANDDEV", "YSTANDDEV", "ZSTANDDEV", "RESULTANT")
}

// WISDM returns every example of WISDM v1.1 (5,418 of them) as flat JSON
// messages of one device, one a second ending an hour before end: the 43
// features as metrics (a missing value '?' left out, to be imputed) and
// "activity", the class index. It skips the test when the data set is
// absent.
func WISDM(t testing.TB, end time.Time) (lines []string, first, stop time.Time) {
	t.Helper()
	path := filepath.Join(Dir(t), "wisdm", "WISDM_ar_v1.1_transformed.arff")
	f, err := os.Open(path)
	if err != nil {
		t.Skipf("SKIP: WISDM data set not found (set EDGEFLEET_DATA): %v", err)
	}
	defer f.Close()
	names := WISDMFeatures()
	var rows [][]string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '@' || line[0] == '%' {
			continue
		}
		rec := strings.Split(line, ",")
		if len(rec) != 2+len(names)+1 {
			t.Fatalf("datasettest: %s: a row of %d fields, want %d", path, len(rec), 2+len(names)+1)
		}
		rows = append(rows, rec)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	start := end.Truncate(time.Second).Add(-time.Hour).Add(-time.Duration(len(rows)-1) * time.Second)
	var b strings.Builder
	for i, rec := range rows {
		class := slices.Index(WISDMClasses, strings.TrimSpace(rec[len(rec)-1]))
		if class < 0 {
			t.Fatalf("datasettest: unknown WISDM class %q", rec[len(rec)-1])
		}
		b.Reset()
		fmt.Fprintf(&b, `{"ts":%d,"activity":%d`, start.Add(time.Duration(i)*time.Second).Unix(), class)
		for k, name := range names {
			if v := strings.TrimSpace(rec[2+k]); v != "?" {
				fmt.Fprintf(&b, ",%q:%s", name, v)
			}
		}
		b.WriteByte('}')
		lines = append(lines, b.String())
	}
	return lines, start, start.Add(time.Duration(len(rows)) * time.Second)
}

// WISDMSpec is a job training model on the WISDM messages of device.
func WISDMSpec(device, model string, epochs int, from, to time.Time) agentapi.TrainingJobSpec {
	var feats []string
	for _, m := range WISDMFeatures() {
		feats = append(feats, fmt.Sprintf(`{"name":%q,"metric":%q,"agg":"latest","window":"500ms"}`, m, m))
	}
	return agentapi.TrainingJobSpec{
		Model:  model,
		Schema: []byte(`{"features":[` + strings.Join(feats, ",") + `],"label":{"metric":"activity"}}`),
		Labels: WISDMClasses,
		Device: device, From: from, To: to,
		Epochs: epochs, Solver: "adam", LearnRate: 0.005, BatchSize: 64, Seed: 1,
	}
}
