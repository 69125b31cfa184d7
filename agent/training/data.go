package training

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// Readings is the agent's time-series store as training reads it
// (*ingest.Store): page by page, so a long range is walked in bounded
// memory.
type Readings interface {
	// DeviceNames lists the devices with stored readings.
	DeviceNames(ctx context.Context) ([]string, error)
	// SeriesPage returns up to limit numeric readings of device's metric
	// with times in (after, to), Unix microseconds, oldest first.
	SeriesPage(ctx context.Context, device, metric string, after, to int64, limit int) ([]ingest.SeriesPoint, error)
}

// State reads the replicated state (state labels).
type State interface {
	// Get returns the LWW value of key in coll; found false when absent.
	Get(ctx context.Context, coll, key string) (value []byte, found bool, err error)
}

// pageSize is how many readings of a series are read at once.
const pageSize = 2048

// seriesSource walks one series page by page as a fedlearn.PointSource.
type seriesSource struct {
	ctx            context.Context
	r              Readings
	device, metric string
	after, to      int64 // Unix microseconds
	page           []ingest.SeriesPoint
	i              int
	done           bool
}

func (s *seriesSource) Next() (fedlearn.Point, bool, error) {
	if s.i >= len(s.page) {
		if s.done {
			return fedlearn.Point{}, false, nil
		}
		page, err := s.r.SeriesPage(s.ctx, s.device, s.metric, s.after, s.to, pageSize)
		if err != nil {
			return fedlearn.Point{}, false, err
		}
		s.page, s.i = page, 0
		if len(page) < pageSize {
			s.done = true
		}
		if len(page) == 0 {
			return fedlearn.Point{}, false, nil
		}
		s.after = page[len(page)-1].TS
	}
	p := s.page[s.i]
	s.i++
	return fedlearn.Point{T: p.TS * int64(time.Microsecond), V: p.Value}, true, nil
}

// dataset is a job's examples, normalised, split in two.
type dataset struct {
	train, held fedlearn.Examples
	schema      fedlearn.Schema // with the normalisation used
	stats       fedlearn.FeatureStats
	info        DataInfo
}

// DataInfo describes the examples of a job (agentapi.TrainingData).
type DataInfo struct {
	Devices     []string `json:"devices"`
	Anchors     int64    `json:"anchors"`
	Unlabelled  int64    `json:"unlabelled"`
	Incomplete  int64    `json:"incomplete"`
	Examples    int64    `json:"examples"`
	Kept        int      `json:"kept"`
	Train       int      `json:"train"`
	HeldOut     int      `json:"held_out"`
	ClassCounts []int    `json:"class_counts"`
	Digest      string   `json:"digest"`
	Changed     bool     `json:"changed,omitempty"`
}

// ErrNoExamples: the selected range holds no labelled example.
var ErrNoExamples = errors.New("training: no labelled examples in the selected data")

// buildDataset reads the spec's examples from the store, keeps a seeded
// uniform sample of at most spec.MaxExamples, splits it (seeded) and
// normalises it. Memory: the sample, plus one window of readings per
// feature metric and a page per series while reading.
func buildDataset(ctx context.Context, r Readings, st State, spec *Spec) (*dataset, error) {
	sc := spec.Schema
	n := len(sc.Features)
	devices := []string{spec.Device}
	if spec.Device == "" {
		var err error
		if devices, err = r.DeviceNames(ctx); err != nil {
			return nil, fmt.Errorf("training: %w", err)
		}
	}
	res, err := fedlearn.NewReservoir(n, spec.MaxExamples, spec.Seed)
	if err != nil {
		return nil, fmt.Errorf("training: %w", err)
	}
	lo, hi := int64(math.MinInt64), spec.To.UnixMicro()
	if !spec.From.IsZero() {
		lo = spec.From.UnixMicro() - 1 // SeriesPage's after is exclusive
	}
	d := &dataset{info: DataInfo{Devices: []string{}}}
	for _, dev := range devices {
		label, ok, err := deviceLabel(ctx, st, spec, dev)
		if err != nil {
			return nil, err
		}
		src := func(metric string) fedlearn.PointSource {
			// Feature readings before From still feed the windows of the
			// first examples: start one widest window earlier.
			after := lo
			if lo != math.MinInt64 {
				after = lo - int64(maxWindow(sc, metric)/time.Microsecond)
			}
			return &seriesSource{ctx: ctx, r: r, device: dev, metric: metric, after: after, to: hi}
		}
		anchors := &seriesSource{ctx: ctx, r: r, device: dev, metric: sc.AnchorMetric(), after: lo, to: hi}
		if !ok {
			label = func(fedlearn.Point) (int, bool) { return 0, false }
		}
		bs, err := fedlearn.BuildExamples(sc, anchors, src, label, func(_ int64, raw []float64, class int) error {
			return res.Add(raw, class)
		})
		if err != nil {
			return nil, fmt.Errorf("training: device %s: %w", dev, err)
		}
		if bs.Anchors > 0 {
			d.info.Devices = append(d.info.Devices, dev)
		}
		d.info.Anchors += bs.Anchors
		d.info.Unlabelled += bs.Unlabelled
		d.info.Incomplete += bs.Incomplete
		d.info.Examples += bs.Emitted
	}
	if res.Len() == 0 {
		return nil, fmt.Errorf("%w (%d readings of %q in range on %d device(s), %d unlabelled)",
			ErrNoExamples, d.info.Anchors, sc.AnchorMetric(), len(devices), d.info.Unlabelled)
	}
	x, y := res.Rows()
	d.info.Kept = len(y)
	d.info.ClassCounts = make([]int, len(spec.Labels))
	for _, c := range y {
		d.info.ClassCounts[c]++
	}
	d.info.Digest = digest(x, y)

	trainIdx, heldIdx := fedlearn.SplitIndex(len(y), *spec.HoldOut, spec.Seed)
	// The held-out rows move to an array of their own; the training rows
	// are compacted in place (their indices ascend), so the sample is not
	// copied whole.
	d.held = fedlearn.Examples{X: make([]float64, 0, len(heldIdx)*n), Y: make([]int, 0, len(heldIdx)), Inputs: n}
	for _, i := range heldIdx {
		d.held.X = append(d.held.X, x[i*n:(i+1)*n]...)
		d.held.Y = append(d.held.Y, y[i])
	}
	for j, i := range trainIdx {
		copy(x[j*n:(j+1)*n], x[i*n:(i+1)*n])
		y[j] = y[i]
	}
	d.train = fedlearn.Examples{X: x[:len(trainIdx)*n], Y: y[:len(trainIdx)], Inputs: n}
	d.info.Train, d.info.HeldOut = len(trainIdx), len(heldIdx)

	d.stats = fedlearn.NewFeatureStats(n)
	rows := make([][]float64, len(trainIdx))
	for j := range rows {
		rows[j] = d.train.X[j*n : (j+1)*n]
		d.stats.Add(rows[j])
	}
	d.schema = cloneSchema(sc)
	if spec.Normalize == NormalizeFit {
		d.schema.Standardize(rows)
	}
	for _, ex := range []fedlearn.Examples{d.train, d.held} {
		for j := 0; j < len(ex.Y); j++ {
			row := ex.X[j*n : (j+1)*n]
			if err := d.schema.Normalize(row, row); err != nil {
				return nil, fmt.Errorf("training: %w", err)
			}
		}
	}
	return d, nil
}

// deviceLabel is the LabelFunc of device's examples; ok false when the
// device has no valid state label.
func deviceLabel(ctx context.Context, st State, spec *Spec, device string) (fedlearn.LabelFunc, bool, error) {
	if spec.Schema.Label.Metric != "" {
		return fedlearn.MetricLabel(len(spec.Labels)), true, nil
	}
	if st == nil {
		return nil, false, errors.New("training: state labels need the replicated state")
	}
	coll, key := stateKey(spec.Schema, device)
	v, found, err := st.Get(ctx, coll, key)
	if err != nil {
		return nil, false, fmt.Errorf("training: state label %s/%s: %w", coll, key, err)
	}
	if !found {
		return nil, false, nil
	}
	name := strings.TrimSpace(string(v))
	var s string
	if json.Unmarshal(v, &s) == nil {
		name = s
	}
	for i, l := range spec.Labels {
		if l == name {
			return fedlearn.ConstLabel(i), true, nil
		}
	}
	return nil, false, nil
}

func maxWindow(sc fedlearn.Schema, metric string) time.Duration {
	var w time.Duration
	for _, f := range sc.Features {
		if f.Metric == metric {
			w = max(w, time.Duration(f.Window))
		}
	}
	return w
}

func cloneSchema(sc fedlearn.Schema) fedlearn.Schema {
	out := sc
	out.Features = append([]fedlearn.Feature(nil), sc.Features...)
	return out
}

// digest is the SHA-256 of the examples (raw features and classes), hex.
func digest(x []float64, y []int) string {
	h := sha256.New()
	var b [8]byte
	for _, v := range x {
		binary.LittleEndian.PutUint64(b[:], math.Float64bits(v))
		h.Write(b[:])
	}
	for _, c := range y {
		binary.LittleEndian.PutUint64(b[:], uint64(c))
		h.Write(b[:])
	}
	return hex.EncodeToString(h.Sum(nil))
}
