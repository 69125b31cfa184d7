package bench

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/edgefleet/edgefleet/bench/mlbench"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// MLOptions configure RunML. Zero values take the defaults.
type MLOptions struct {
	// Rounds of measurements, ours and baseline interleaved; medians are
	// reported. 0 = 9.
	Rounds int
	// MinTime is the least time one measurement runs; 0 = 100ms.
	MinTime time.Duration
	// Latencies is the number of single-reading predictions timed one by
	// one per round for the latency percentiles; 0 = 2000.
	Latencies int
	// Seed draws the weights and the examples.
	Seed uint64
	// Now is the clock; nil = time.Now (wall time). CPUClock measures the
	// process's CPU time instead.
	Now func() time.Time
	// ClockName names the clock in the report's workload line.
	ClockName string
}

// RunML runs the ml suite: fedlearn's training and inference beside a
// hand-written gonum implementation of the same model (bench/mlbench:
// BLAS GEMM forward and backward, same loss, gradients and update, no
// allocation per step), in the same run:
//
//   - ml_train_step_<model>_b<batch> (examples/s): one SGD step of
//     fedlearn's gorgonia Trainer (graph and tape machine built once) on a
//     full mini-batch, beside mlbench.Net.Step; for MLP 43→64→6 at batch
//     256 and 64 and LR 5→2 at batch 64, and Adam at batch 256.
//   - ml_infer_batch_<model>_b256 (examples/s): fedlearn.Forward's
//     PredictBatch on 256 rows beside mlbench's batched GEMM forward;
//     ml_infer_batch_rowwise_<model>_b256: Forward.Predict row by row;
//     ml_infer_batch_gorgonia_<model>_b256: a forward-only gorgonia graph
//     (built once, tape machine) on the same rows, beside the same
//     baseline. Inference runs through Forward; these show why.
//   - ml_infer_single_<model> (predictions/s) and its _p50 and _p99
//     latencies (µs, wall clock whatever Now is: one Forward.Predict of
//     one reading timed alone), beside mlbench predicting a batch of one.
//     For latencies Ratio is baseline / ours, so higher is better
//     everywhere.
//
// Each round measures ours and the baseline back to back, alternating
// which goes first.
func RunML(ctx context.Context, opt MLOptions) (Report, error) {
	if opt.Rounds < 0 || opt.MinTime < 0 || opt.Latencies < 0 {
		return Report{}, fmt.Errorf("bench: ml: negative option in %+v", opt)
	}
	if opt.Rounds == 0 {
		opt.Rounds = 9
	}
	if opt.MinTime == 0 {
		opt.MinTime = 100 * time.Millisecond
	}
	if opt.Latencies == 0 {
		opt.Latencies = 2000
	}
	if opt.Now == nil {
		opt.Now, opt.ClockName = time.Now, "wall"
	}
	if opt.Now().IsZero() {
		return Report{}, fmt.Errorf("bench: ml: the clock gives no readings on this system")
	}
	pairs, closers, err := mlPairs(opt)
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	if err != nil {
		return Report{}, err
	}
	if err := runPairs(ctx, "ml", opt.Now, opt.MinTime, opt.Rounds, pairs); err != nil {
		return Report{}, err
	}
	rep := Report{
		Suite:   "ml",
		Machine: Machine(fmt.Sprintf("rounds=%d min_time=%s latencies=%d seed=%d clock=%s float64", opt.Rounds, opt.MinTime, opt.Latencies, opt.Seed, opt.ClockName)),
	}
	rep.Results = pairResults(pairs)
	lat, err := mlLatencies(ctx, opt)
	if err != nil {
		return Report{}, err
	}
	rep.Results = append(rep.Results, lat...)
	return rep, nil
}

func modelLabel(a fedlearn.Arch) string {
	s := fmt.Sprintf("%s_%d", a.Kind, a.Inputs)
	for _, h := range a.Hidden {
		s += fmt.Sprintf("x%d", h)
	}
	return fmt.Sprintf("%sx%d", s, a.Classes)
}

func mlPairs(opt MLOptions) ([]pair, []func(), error) {
	var (
		pairs   []pair
		closers []func()
	)
	fail := func(err error) ([]pair, []func(), error) {
		return nil, closers, fmt.Errorf("bench: ml: setup: %w", err)
	}
	mlp, err := fedlearn.ParseArch("mlp:64", 43, 6)
	if err != nil {
		return fail(err)
	}
	lr, err := fedlearn.ParseArch("lr", 5, 2)
	if err != nil {
		return fail(err)
	}
	steps := []struct {
		a      fedlearn.Arch
		batch  int
		solver fedlearn.Solver
		lr     float64
	}{
		{mlp, 256, fedlearn.SolverSGD, 1e-3},
		{mlp, 64, fedlearn.SolverSGD, 1e-3},
		{lr, 64, fedlearn.SolverSGD, 1e-3},
		{mlp, 256, fedlearn.SolverAdam, 1e-4},
	}
	for _, s := range steps {
		w := fedlearn.InitWeights(s.a, opt.Seed)
		x, y := mlbench.Data(opt.Seed, s.batch, s.a.Inputs, s.a.Classes)
		tr, err := fedlearn.NewTrainer(s.a, w, fedlearn.TrainConfig{Solver: s.solver, LearnRate: s.lr, BatchSize: s.batch, Seed: opt.Seed})
		if err != nil {
			return fail(err)
		}
		closers = append(closers, func() { tr.Close() })
		net, err := mlbench.NewNet(s.a, w, s.batch, mlbench.Solver(s.solver), s.lr, 0)
		if err != nil {
			return fail(err)
		}
		suffix := ""
		if s.solver != fedlearn.SolverSGD {
			suffix = "_" + string(s.solver)
		}
		label := fmt.Sprintf("%s_b%d%s", modelLabel(s.a), s.batch, suffix)
		pairs = append(pairs, pair{
			name: "ml_train_step_" + label, baseName: "gonum_train_step_" + label, unit: "examples/s", scale: float64(s.batch),
			ours: func() error { _, err := tr.Step(x, y); return err },
			base: func() error { _, err := net.Step(x, y); return err },
		})
	}

	// Batched inference.
	const batch = 256
	w := fedlearn.InitWeights(mlp, opt.Seed)
	x, _ := mlbench.Data(opt.Seed+1, batch, mlp.Inputs, mlp.Classes)
	fwd, err := fedlearn.NewForward(mlp, w)
	if err != nil {
		return fail(err)
	}
	net, err := mlbench.NewNet(mlp, w, batch, "sgd", 1e-3, 0)
	if err != nil {
		return fail(err)
	}
	graph, err := mlbench.NewGraphForward(mlp, w, batch)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, func() { graph.Close() })
	probs := make([]float64, batch*mlp.Classes)
	classes := make([]int, batch)
	rowwise := func() error {
		for r := 0; r < batch; r++ {
			if _, err := fwd.Predict(x[r*mlp.Inputs:(r+1)*mlp.Inputs], probs[r*mlp.Classes:(r+1)*mlp.Classes]); err != nil {
				return err
			}
		}
		return nil
	}
	gonumBatch := func() error { return net.Predict(x, batch, probs) }
	label := fmt.Sprintf("%s_b%d", modelLabel(mlp), batch)
	pairs = append(pairs,
		pair{
			name: "ml_infer_batch_" + label, baseName: "gonum_infer_batch_" + label, unit: "examples/s", scale: batch,
			ours: func() error { return fwd.PredictBatch(x, batch, probs, classes) }, base: gonumBatch,
		},
		pair{
			name: "ml_infer_batch_rowwise_" + label, baseName: "gonum_infer_batch_" + label, unit: "examples/s", scale: batch,
			ours: rowwise, base: gonumBatch,
		},
		pair{
			name: "ml_infer_batch_gorgonia_" + label, baseName: "gonum_infer_batch_" + label, unit: "examples/s", scale: batch,
			ours: func() error { return graph.Predict(x, probs) }, base: gonumBatch,
		})

	// Single readings, as inference on arriving data runs.
	one := x[:mlp.Inputs]
	p := make([]float64, mlp.Classes)
	pairs = append(pairs, pair{
		name: "ml_infer_single_" + modelLabel(mlp), baseName: "gonum_infer_single_" + modelLabel(mlp), unit: "predictions/s", scale: 1,
		ours: func() error { _, err := fwd.Predict(one, p); return err },
		base: func() error { return net.Predict(one, 1, p) },
	})
	return pairs, closers, nil
}

// mlLatencies times single-reading predictions one by one, ours and the
// baseline interleaved, and reports p50 and p99.
func mlLatencies(ctx context.Context, opt MLOptions) ([]Result, error) {
	mlp, _ := fedlearn.ParseArch("mlp:64", 43, 6)
	w := fedlearn.InitWeights(mlp, opt.Seed)
	fwd, err := fedlearn.NewForward(mlp, w)
	if err != nil {
		return nil, fmt.Errorf("bench: ml: %w", err)
	}
	net, err := mlbench.NewNet(mlp, w, 1, "sgd", 1e-3, 0)
	if err != nil {
		return nil, fmt.Errorf("bench: ml: %w", err)
	}
	x, _ := mlbench.Data(opt.Seed+2, 64, mlp.Inputs, mlp.Classes)
	p := make([]float64, mlp.Classes)
	var ours, base []float64
	for i := 0; i < opt.Latencies; i++ {
		if i%256 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		row := x[(i%64)*mlp.Inputs : (i%64+1)*mlp.Inputs]
		t0 := time.Now()
		if _, err := fwd.Predict(row, p); err != nil {
			return nil, err
		}
		t1 := time.Now()
		if err := net.Predict(row, 1, p); err != nil {
			return nil, err
		}
		t2 := time.Now()
		ours = append(ours, float64(t1.Sub(t0))/1e3)
		base = append(base, float64(t2.Sub(t1))/1e3)
	}
	var out []Result
	for _, q := range []struct {
		name string
		q    float64
	}{{"p50", 0.50}, {"p99", 0.99}} {
		o, b := quantile(ours, q.q), quantile(base, q.q)
		r := Result{Name: "ml_infer_single_" + modelLabel(mlp) + "_" + q.name, Unit: "us", Value: o,
			Baseline: &Baseline{Name: "gonum_infer_single_" + modelLabel(mlp) + "_" + q.name, Value: b}}
		if o > 0 {
			r.Ratio = b / o
		}
		out = append(out, r)
	}
	return out, nil
}

// quantile of xs by nearest rank (0 for none); xs is not modified.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}
