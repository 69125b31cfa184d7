package datasets

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Occupancy files, relative to the shared data directory: one to train on,
// two to test on.
var (
	OccupancyTrainFile = filepath.Join("occupancy", "datatraining.txt")
	OccupancyTestFiles = []string{filepath.Join("occupancy", "datatest.txt"), filepath.Join("occupancy", "datatest2.txt")}
)

// OccupancyFeatures are the feature columns of the occupancy files, and
// OccupancyMetrics the metrics an agent stores them under when the data
// set is replayed over MQTT (agent/ingest's replay), so that a model
// trained here reads a replaying device's readings.
var (
	OccupancyFeatures = []string{"Temperature", "Humidity", "Light", "CO2", "HumidityRatio"}
	OccupancyMetrics  = []string{"temperature", "humidity", "light", "co2", "humidity_ratio"}
	// OccupancyClasses names the labels 0 and 1 of the Occupancy column.
	OccupancyClasses = []string{"empty", "occupied"}
)

// ReadOccupancy reads one file of the UCI occupancy data set: CSV with a
// header naming "date", the OccupancyFeatures and "Occupancy" (any order,
// any case), then one row per minute: the date quoted as "2006-01-02
// 15:04:05" (checked, not a feature), the readings, and the occupancy 0 or
// 1. Rows may carry one more field than the header, a leading row number
// (as in the original distribution), which is ignored. file names the
// input in errors.
func ReadOccupancy(r io.Reader, file string) (Table, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	head, err := cr.Read()
	if err == io.EOF {
		return Table{}, formatErr(file, 1, "empty file, want a header")
	}
	if err != nil {
		return Table{}, csvErr(file, err)
	}
	col := map[string]int{}
	for i, h := range head {
		col[strings.ToLower(strings.TrimSpace(h))] = i
	}
	want := append([]string{"date"}, OccupancyFeatures...)
	want = append(want, "Occupancy")
	pos := make([]int, len(want))
	for k, name := range want {
		i, ok := col[strings.ToLower(name)]
		if !ok {
			return Table{}, formatErr(file, 1, "header %q has no column %q", clip(strings.Join(head, ",")), name)
		}
		pos[k] = i
	}
	width := len(head)
	t := Table{Features: OccupancyFeatures, Classes: OccupancyClasses}
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Table{}, csvErr(file, err)
		}
		line, _ := cr.FieldPos(0)
		switch len(rec) {
		case width:
		case width + 1:
			rec = rec[1:]
		default:
			return Table{}, formatErr(file, line, "%d fields, the header has %d", len(rec), width)
		}
		if _, err := time.Parse(time.DateTime, strings.TrimSpace(rec[pos[0]])); err != nil {
			return Table{}, formatErr(file, line, "date %q is not YYYY-MM-DD HH:MM:SS", clip(rec[pos[0]]))
		}
		x := make([]float64, len(OccupancyFeatures))
		for k := range x {
			v := strings.TrimSpace(rec[pos[k+1]])
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || !finite(f) {
				return Table{}, formatErr(file, line, "%s %q is not a finite number", OccupancyFeatures[k], clip(v))
			}
			x[k] = f
		}
		var y int
		switch v := strings.TrimSpace(rec[pos[len(pos)-1]]); v {
		case "0":
		case "1":
			y = 1
		default:
			return Table{}, formatErr(file, line, "Occupancy %q is not 0 or 1", clip(v))
		}
		t.X = append(t.X, x)
		t.Y = append(t.Y, y)
	}
	if len(t.X) == 0 {
		return Table{}, formatErr(file, 0, "no rows after the header")
	}
	return t, nil
}

// csvErr turns a CSV reader's error into a FormatError on its line.
func csvErr(file string, err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return formatErr(file, pe.Line, "%v", pe.Err)
	}
	return formatErr(file, 0, "read: %v", err)
}

// LoadOccupancyFile reads one occupancy file, name relative to the shared
// data directory dir.
func LoadOccupancyFile(dir, name string) (Table, error) {
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if err != nil {
		return Table{}, fmt.Errorf("datasets: occupancy: %w", err)
	}
	defer f.Close()
	return ReadOccupancy(f, path)
}
