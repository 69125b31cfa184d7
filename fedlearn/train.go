package fedlearn

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// Solver names a gradient-descent method; all three are gorgonia's.
type Solver string

// Solvers.
const (
	// SolverSGD is plain stochastic gradient descent (gorgonia's VanillaSolver).
	SolverSGD Solver = "sgd"
	// SolverMomentum is SGD with momentum (gorgonia's Momentum).
	SolverMomentum Solver = "momentum"
	// SolverAdam is Adam (gorgonia's AdamSolver; beta1 0.9, beta2 0.999,
	// eps 1e-8).
	SolverAdam Solver = "adam"
)

// MaxBatchSize bounds a mini-batch, so that a configuration cannot make a
// device allocate without bound: the trainer keeps a few batch-sized
// buffers per layer.
const MaxBatchSize = 1 << 16

// ErrTrainConfig is returned for an invalid training configuration.
var ErrTrainConfig = errors.New("fedlearn: invalid training configuration")

// ErrNotFinite is returned when training produces a non-finite loss,
// gradient or weight (a learning rate too high, inputs too large). The
// step that produced it does not change the weights when the loss or a
// gradient is not finite; when the update itself overflows, the trainer is
// unusable afterwards and every later call returns the error again.
var ErrNotFinite = errors.New("fedlearn: training diverged (non-finite value)")

// TrainConfig configures a Trainer. There are no silent defaults: every
// field that must be set is checked by NewTrainer.
type TrainConfig struct {
	// Solver is "sgd", "momentum" or "adam".
	Solver Solver `json:"solver"`
	// LearnRate is the step size, > 0.
	LearnRate float64 `json:"learn_rate"`
	// Momentum is the momentum solver's coefficient, in [0, 1). Must be 0
	// for the other solvers.
	Momentum float64 `json:"momentum,omitempty"`
	// BatchSize is the mini-batch size, 1..MaxBatchSize. The loss of a
	// batch is the mean over its examples.
	BatchSize int `json:"batch_size"`
	// L2 is the L2 penalty L2/2·‖W‖² on the weight matrices (not the
	// biases), >= 0: its gradient L2·W is added to the batch gradient.
	L2 float64 `json:"l2,omitempty"`
	// Mu is the FedProx proximal term Mu/2·‖w − Global‖² over all
	// parameters, >= 0; 0 turns it off. When > 0, Global must be set.
	Mu float64 `json:"mu,omitempty"`
	// Global is the global model the proximal term pulls towards; it is
	// copied by NewTrainer.
	Global Weights `json:"-"`
	// Seed drives the shuffling of examples in Epoch. The same seed, data
	// and initial weights give the same weights, bit for bit.
	Seed uint64 `json:"seed"`
}

// Validate checks the configuration for the architecture.
func (c TrainConfig) Validate(a Arch) error {
	finite := func(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
	switch c.Solver {
	case SolverSGD, SolverAdam:
		if c.Momentum != 0 {
			return fmt.Errorf("%w: momentum %v is only for the momentum solver, not %q", ErrTrainConfig, c.Momentum, c.Solver)
		}
	case SolverMomentum:
		if !(c.Momentum >= 0 && c.Momentum < 1) {
			return fmt.Errorf("%w: momentum %v (want 0 <= momentum < 1)", ErrTrainConfig, c.Momentum)
		}
	default:
		return fmt.Errorf("%w: unknown solver %q (want sgd, momentum or adam)", ErrTrainConfig, c.Solver)
	}
	if !(c.LearnRate > 0) || !finite(c.LearnRate) {
		return fmt.Errorf("%w: learning rate %v (want a finite value > 0)", ErrTrainConfig, c.LearnRate)
	}
	if c.BatchSize < 1 || c.BatchSize > MaxBatchSize {
		return fmt.Errorf("%w: batch size %d (want 1-%d)", ErrTrainConfig, c.BatchSize, MaxBatchSize)
	}
	if !(c.L2 >= 0) || !finite(c.L2) {
		return fmt.Errorf("%w: L2 %v (want a finite value >= 0)", ErrTrainConfig, c.L2)
	}
	if !(c.Mu >= 0) || !finite(c.Mu) {
		return fmt.Errorf("%w: mu %v (want a finite value >= 0)", ErrTrainConfig, c.Mu)
	}
	if c.Mu > 0 && c.Global == nil {
		return fmt.Errorf("%w: mu %v needs the global weights", ErrTrainConfig, c.Mu)
	}
	if c.Global != nil {
		if err := c.Global.Check(a); err != nil {
			return fmt.Errorf("%w: global weights: %w", ErrTrainConfig, err)
		}
	}
	return nil
}

// Examples are training or test examples: row i of X (Inputs values,
// already normalised) has label Y[i].
type Examples struct {
	X      []float64
	Y      []int
	Inputs int
}

// Len is the number of examples.
func (d Examples) Len() int { return len(d.Y) }

// Row returns example i's features (not a copy).
func (d Examples) Row(i int) []float64 { return d.X[i*d.Inputs : (i+1)*d.Inputs] }

// check verifies that the examples fit the architecture: shapes, finite
// features, labels in range.
func (d Examples) check(a Arch) error {
	if d.Inputs != a.Inputs {
		return fmt.Errorf("fedlearn: examples have %d features, model takes %d", d.Inputs, a.Inputs)
	}
	if len(d.Y) == 0 {
		return errors.New("fedlearn: no examples")
	}
	if len(d.X) != len(d.Y)*d.Inputs {
		return fmt.Errorf("fedlearn: %d feature values for %d examples of %d features", len(d.X), len(d.Y), d.Inputs)
	}
	for i, v := range d.X {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("fedlearn: example %d feature %d is %v", i/d.Inputs, i%d.Inputs, v)
		}
	}
	return checkLabels(d.Y, a.Classes)
}

func checkLabels(y []int, classes int) error {
	for i, c := range y {
		if c < 0 || c >= classes {
			return fmt.Errorf("fedlearn: example %d has label %d (want 0-%d)", i, c, classes-1)
		}
	}
	return nil
}

// Trainer trains one model with gorgonia. Its graph and tape machine are
// built once, by NewTrainer, for a batch of exactly BatchSize rows, and
// reused by every step.
//
// A batch of fewer rows (the last one of an epoch, or a short Step) is
// padded: the spare rows get zero features and a zero target weight. Each
// row's share of the loss is its target weight times its log-probability,
// so a padded row adds exactly 0 to the loss and to every gradient, and the
// result is the same, bit for bit, as a graph built for the smaller batch.
//
// A Trainer is not safe for concurrent use.
type Trainer struct {
	arch   Arch
	cfg    TrainConfig
	global [][]float64 // flat copy per parameter, when Mu > 0

	g       *G.ExprGraph
	vm      G.VM
	runner  runner
	lossVal float64 // written by the loss op on each run
	x, tgt  *G.Node
	xData   []float64 // BatchSize x Inputs, bound to x
	tData   []float64 // BatchSize x Classes: 1/n at the label, else 0
	params  G.Nodes   // in Weights order: w0, b0, w1, b1, ...
	shapes  [][]int   // Weights shapes of params
	vgs     []G.ValueGrad
	loss    *G.Node
	solver  G.Solver
	pcg     *rand.PCG
	rng     *rand.Rand
	perm    []int
	epochs  int
	steps   int
	broken  error
}

// NewTrainer validates the configuration and the starting weights, and
// builds the model's graph and tape machine. The weights are copied.
func NewTrainer(a Arch, init Weights, cfg TrainConfig) (*Trainer, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	if err := init.Check(a); err != nil {
		return nil, err
	}
	if err := cfg.Validate(a); err != nil {
		return nil, err
	}
	widest := max(a.Inputs, a.Classes)
	for _, h := range a.Hidden {
		widest = max(widest, h)
	}
	if cfg.BatchSize*widest > MaxParams {
		return nil, fmt.Errorf("%w: batch size %d with layers %d wide needs too much memory (batch x width at most %d)", ErrTrainConfig, cfg.BatchSize, widest, MaxParams)
	}
	t := &Trainer{arch: a, cfg: cfg}
	t.cfg.Global = nil
	if cfg.Mu > 0 {
		for _, p := range cfg.Global {
			t.global = append(t.global, append([]float64(nil), p.Data...))
		}
	}
	graphMu.Lock()
	err := t.build(init)
	graphMu.Unlock()
	if err != nil {
		return nil, err
	}
	t.pcg = rand.NewPCG(cfg.Seed, 0x73687566666c6521) // "shuffle!"
	t.rng = rand.New(t.pcg)
	return t, nil
}

// build makes the graph, the machine and the solver.
func (t *Trainer) build(init Weights) error {
	a, b := t.arch, t.cfg.BatchSize
	g := G.NewGraph()
	t.g = g
	t.xData = make([]float64, b*a.Inputs)
	t.tData = make([]float64, b*a.Classes)
	t.x = G.NewMatrix(g, tensor.Float64, G.WithShape(b, a.Inputs), G.WithName("x"),
		G.WithValue(tensor.New(tensor.WithShape(b, a.Inputs), tensor.WithBacking(t.xData))))
	t.tgt = G.NewMatrix(g, tensor.Float64, G.WithShape(b, a.Classes), G.WithName("target"),
		G.WithValue(tensor.New(tensor.WithShape(b, a.Classes), tensor.WithBacking(t.tData))))

	layers := a.Layers()
	h := t.x
	for l, io := range layers {
		wd := append([]float64(nil), init[2*l].Data...)
		bd := append([]float64(nil), init[2*l+1].Data...)
		w := G.NewMatrix(g, tensor.Float64, G.WithShape(io[0], io[1]), G.WithName(fmt.Sprintf("w%d", l)),
			G.WithValue(tensor.New(tensor.WithShape(io[0], io[1]), tensor.WithBacking(wd))))
		bias := G.NewMatrix(g, tensor.Float64, G.WithShape(1, io[1]), G.WithName(fmt.Sprintf("b%d", l)),
			G.WithValue(tensor.New(tensor.WithShape(1, io[1]), tensor.WithBacking(bd))))
		t.params = append(t.params, w, bias)
		t.shapes = append(t.shapes, []int{io[0], io[1]}, []int{io[1]})
		xw, err := G.Mul(h, w)
		if err != nil {
			return fmt.Errorf("fedlearn: graph layer %d: %w", l, err)
		}
		if h, err = G.BroadcastAdd(xw, bias, nil, []byte{0}); err != nil {
			return fmt.Errorf("fedlearn: graph layer %d bias: %w", l, err)
		}
		if l != len(layers)-1 {
			if h, err = G.Rectify(h); err != nil {
				return fmt.Errorf("fedlearn: graph layer %d relu: %w", l, err)
			}
		}
	}
	var err error
	if t.loss, err = softmaxXentLoss(h, t.tgt, &t.lossVal); err != nil {
		return fmt.Errorf("fedlearn: graph loss: %w", err)
	}
	grads, err := G.Grad(t.loss, t.params...)
	if err != nil {
		return fmt.Errorf("fedlearn: graph gradients: %w", err)
	}
	// Compile only what the loss and the parameters' gradients need.
	// gorgonia's matrix product differentiates both operands, so the whole
	// graph also holds the gradient of the input batch x: one more GEMM
	// (batch x inputs x width) a step that nothing reads.
	outputs := append(G.Nodes{t.loss}, grads...)
	prog, locMap, err := G.CompileFunction(g, append(G.Nodes{t.x, t.tgt}, t.params...), outputs)
	if err != nil {
		return fmt.Errorf("fedlearn: compiling the graph: %w", err)
	}
	t.vm = G.NewTapeMachine(g, G.WithPrecompiled(prog, locMap), G.BindDualValues(t.params...))
	t.runner = newRunner(t.vm, prog)
	t.vgs = G.NodesToValueGrads(t.params)
	switch t.cfg.Solver {
	case SolverSGD:
		t.solver = G.NewVanillaSolver(G.WithLearnRate(t.cfg.LearnRate))
	case SolverMomentum:
		t.solver = G.NewMomentum(G.WithLearnRate(t.cfg.LearnRate), G.WithMomentum(t.cfg.Momentum))
	case SolverAdam:
		t.solver = G.NewAdamSolver(G.WithLearnRate(t.cfg.LearnRate))
	}
	return nil
}

// Arch is the architecture being trained.
func (t *Trainer) Arch() Arch { return t.arch }

// Epochs is the number of epochs completed.
func (t *Trainer) Epochs() int { return t.epochs }

// Close releases the tape machine.
func (t *Trainer) Close() error {
	if t.vm == nil {
		return nil
	}
	err := t.vm.Close()
	t.vm = nil
	return err
}

// Weights returns a copy of the current weights.
func (t *Trainer) Weights() Weights {
	w := make(Weights, len(t.params))
	for i, p := range t.params {
		w[i] = Tensor{Name: p.Name(), Shape: append([]int(nil), t.shapes[i]...), Data: append([]float64(nil), paramData(p)...)}
	}
	return w
}

// paramData is the backing array of a parameter node's value.
func paramData(n *G.Node) []float64 { return n.Value().Data().([]float64) }

// gradData is the backing array of a parameter node's gradient.
func gradData(n *G.Node) ([]float64, error) {
	g, err := n.Grad()
	if err != nil {
		return nil, fmt.Errorf("fedlearn: gradient of %s: %w", n.Name(), err)
	}
	return g.Data().([]float64), nil
}

// load copies a batch into the graph's input buffers, padding the spare
// rows. rows(i) gives the i-th example's features and label.
func (t *Trainer) load(n int, row func(i int) ([]float64, int)) {
	in, c := t.arch.Inputs, t.arch.Classes
	clear(t.tData)
	inv := 1 / float64(n)
	for i := 0; i < n; i++ {
		x, y := row(i)
		copy(t.xData[i*in:(i+1)*in], x)
		t.tData[i*c+y] = inv
	}
	clear(t.xData[n*in:])
}

// run executes the graph on the loaded batch and adds the penalties'
// gradients. It returns the batch's mean cross-entropy. On error the
// gradients are cleared, as the solver clears them after a step: the tape
// machine adds to them.
func (t *Trainer) run() (float64, error) {
	loss, err := t.runGraph()
	if err != nil {
		for _, p := range t.params {
			if g, gerr := gradData(p); gerr == nil {
				clear(g)
			}
		}
	}
	return loss, err
}

func (t *Trainer) runGraph() (float64, error) {
	if t.broken != nil {
		return 0, t.broken
	}
	if t.vm == nil {
		return 0, errors.New("fedlearn: trainer is closed")
	}
	if err := t.runner.exec(); err != nil {
		return 0, fmt.Errorf("fedlearn: training step: %w", err)
	}
	loss := t.lossVal
	if math.IsNaN(loss) || math.IsInf(loss, 0) {
		return 0, fmt.Errorf("%w: loss is %v", ErrNotFinite, loss)
	}
	for i, p := range t.params {
		g, err := gradData(p)
		if err != nil {
			return 0, err
		}
		w := paramData(p)
		if t.cfg.L2 > 0 && i%2 == 0 {
			for j, v := range w {
				g[j] += t.cfg.L2 * v
			}
		}
		if t.cfg.Mu > 0 {
			gl := t.global[i]
			for j, v := range w {
				g[j] += t.cfg.Mu * (v - gl[j])
			}
		}
		for j, v := range g {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				return 0, fmt.Errorf("%w: gradient of %s value %d is %v", ErrNotFinite, p.Name(), j, v)
			}
		}
	}
	return loss, nil
}

// update applies the solver to the gradients of the last run.
func (t *Trainer) update() error {
	if err := t.solver.Step(t.vgs); err != nil {
		t.broken = fmt.Errorf("fedlearn: solver step: %w", err)
		return t.broken
	}
	t.steps++
	for _, p := range t.params {
		for j, v := range paramData(p) {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.broken = fmt.Errorf("%w: weight %s value %d is %v after step %d", ErrNotFinite, p.Name(), j, v, t.steps)
				return t.broken
			}
		}
	}
	return nil
}

// checkBatch validates a batch given to Step or Gradients.
func (t *Trainer) checkBatch(x []float64, y []int) error {
	n := len(y)
	if n < 1 || n > t.cfg.BatchSize {
		return fmt.Errorf("fedlearn: batch of %d examples (want 1-%d)", n, t.cfg.BatchSize)
	}
	if len(x) != n*t.arch.Inputs {
		return fmt.Errorf("fedlearn: batch has %d feature values, %d examples of %d features need %d", len(x), n, t.arch.Inputs, n*t.arch.Inputs)
	}
	for i, v := range x {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("fedlearn: example %d feature %d is %v", i/t.arch.Inputs, i%t.arch.Inputs, v)
		}
	}
	return checkLabels(y, t.arch.Classes)
}

func (t *Trainer) loadSlice(x []float64, y []int) {
	in := t.arch.Inputs
	t.load(len(y), func(i int) ([]float64, int) { return x[i*in : (i+1)*in], y[i] })
}

// Step trains on one mini-batch (1 to BatchSize examples; X row-major) and
// returns its mean cross-entropy before the update (without the penalty
// terms).
func (t *Trainer) Step(x []float64, y []int) (float64, error) {
	if err := t.checkBatch(x, y); err != nil {
		return 0, err
	}
	t.loadSlice(x, y)
	loss, err := t.run()
	if err != nil {
		return 0, err
	}
	return loss, t.update()
}

// Gradients returns the mean cross-entropy of one mini-batch and the
// gradient of the training objective (cross-entropy plus the L2 and
// proximal terms) at the current weights, without changing them.
func (t *Trainer) Gradients(x []float64, y []int) (Weights, float64, error) {
	if err := t.checkBatch(x, y); err != nil {
		return nil, 0, err
	}
	t.loadSlice(x, y)
	loss, err := t.run()
	if err != nil {
		return nil, 0, err
	}
	out := t.Weights()
	for i, p := range t.params {
		g, err := gradData(p)
		if err != nil {
			return nil, 0, err
		}
		copy(out[i].Data, g)
		clear(g) // the solvers clear gradients after using them; so do we
	}
	return out, loss, nil
}

// Epoch trains one pass over d: the examples are shuffled with the
// trainer's seeded generator, then trained in mini-batches of BatchSize
// (the last one may be smaller). It returns the mean of the batches'
// losses weighted by their sizes, i.e. the mean cross-entropy over the
// examples as seen during the epoch.
func (t *Trainer) Epoch(d Examples) (float64, error) {
	if err := d.check(t.arch); err != nil {
		return 0, err
	}
	n := d.Len()
	if cap(t.perm) < n {
		t.perm = make([]int, n)
	}
	t.perm = t.perm[:n]
	for i := range t.perm {
		t.perm[i] = i
	}
	t.rng.Shuffle(n, func(i, j int) { t.perm[i], t.perm[j] = t.perm[j], t.perm[i] })
	total := 0.0
	for start := 0; start < n; start += t.cfg.BatchSize {
		idx := t.perm[start:min(start+t.cfg.BatchSize, n)]
		t.load(len(idx), func(i int) ([]float64, int) { r := idx[i]; return d.Row(r), d.Y[r] })
		loss, err := t.run()
		if err != nil {
			return 0, fmt.Errorf("fedlearn: epoch %d, batch at %d: %w", t.epochs+1, start, err)
		}
		if err := t.update(); err != nil {
			return 0, fmt.Errorf("fedlearn: epoch %d, batch at %d: %w", t.epochs+1, start, err)
		}
		total += loss * float64(len(idx))
	}
	t.epochs++
	return total / float64(n), nil
}

// Evaluate computes the mean cross-entropy and the accuracy of weights w on
// d with the light forward pass.
func Evaluate(a Arch, w Weights, d Examples) (loss, accuracy float64, err error) {
	f, err := NewForward(a, w)
	if err != nil {
		return 0, 0, err
	}
	if err := d.check(a); err != nil {
		return 0, 0, err
	}
	probs := make([]float64, a.Classes)
	correct := 0
	for i, y := range d.Y {
		c, err := f.Predict(d.Row(i), probs)
		if err != nil {
			return 0, 0, err
		}
		if c == y {
			correct++
		}
		p := probs[y]
		if p < 1e-300 {
			p = 1e-300 // a confident miss costs about 690, not +Inf
		}
		loss -= math.Log(p)
	}
	n := float64(d.Len())
	return loss / n, float64(correct) / n, nil
}
