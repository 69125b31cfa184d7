package fedlearn

import (
	"fmt"
	"reflect"
	"unsafe"

	G "gorgonia.org/gorgonia"
	"gorgonia.org/tensor"
)

// solverState is what a solver carries from one step to the next: the
// momentum solver's velocities ("v.w0", ...), Adam's first and second
// moments ("m.w0", "v.w0", ...) and step count. Plain SGD has none.
//
// gorgonia keeps this state in unexported fields (Momentum.cache,
// AdamSolver.cache and AdamSolver.iter, each cache entry a *dualValue whose
// Value and d hold the two tensors) and offers no accessor, so it is read
// and written here through reflection. go.mod pins gorgonia v0.9.18;
// stateFields checks the layout it expects and returns an error, never
// panics, if a different version changed it, and the checkpoint tests
// compare a resumed run with an uninterrupted one bit for bit.
type solverState struct {
	iter    int
	tensors []Tensor
}

// stateFields returns the solver's cache slice and, for Adam, its
// iteration counter, as settable values.
func stateFields(s G.Solver) (cache, iter reflect.Value, err error) {
	v := reflect.ValueOf(s)
	if v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		return cache, iter, fmt.Errorf("fedlearn: solver state: unexpected solver type %T", s)
	}
	v = v.Elem()
	settable := func(f reflect.Value) reflect.Value {
		return reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem()
	}
	c := v.FieldByName("cache")
	if !c.IsValid() || c.Kind() != reflect.Slice || c.Type().Elem().Kind() != reflect.Pointer {
		return cache, iter, fmt.Errorf("fedlearn: solver state: %T has no cache of pointers (gorgonia version?)", s)
	}
	dv := c.Type().Elem().Elem()
	if dv.Kind() != reflect.Struct || dv.NumField() != 2 || dv.Field(0).Name != "Value" || dv.Field(1).Name != "d" {
		return cache, iter, fmt.Errorf("fedlearn: solver state: %T cache entries are %v (gorgonia version?)", s, dv)
	}
	cache = settable(c)
	if _, ok := s.(*G.AdamSolver); ok {
		it := v.FieldByName("iter")
		if !it.IsValid() || it.Kind() != reflect.Int {
			return cache, iter, fmt.Errorf("fedlearn: solver state: %T has no iteration count (gorgonia version?)", s)
		}
		iter = settable(it)
	}
	return cache, iter, nil
}

// stateNames are the names of the two tensors of one cache entry.
func stateNames(s Solver) (value, deriv string) {
	if s == SolverAdam {
		return "m.", "v."
	}
	return "v.", ""
}

// solverState copies the solver's state out.
func (t *Trainer) solverState() (solverState, error) {
	var st solverState
	if t.cfg.Solver == SolverSGD {
		return st, nil
	}
	cache, iter, err := stateFields(t.solver)
	if err != nil {
		return st, err
	}
	if iter.IsValid() {
		st.iter = int(iter.Int())
	}
	if cache.Len() == 0 {
		return st, nil // no step yet
	}
	if cache.Len() != len(t.params) {
		return st, fmt.Errorf("fedlearn: solver state: %d entries for %d parameters", cache.Len(), len(t.params))
	}
	vn, dn := stateNames(t.cfg.Solver)
	for i, p := range t.params {
		e := cache.Index(i)
		if e.IsNil() {
			return solverState{}, fmt.Errorf("fedlearn: solver state: no entry for %s", p.Name())
		}
		e = e.Elem()
		add := func(prefix string, f reflect.Value) error {
			f = reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem()
			d, ok := f.Interface().(*tensor.Dense)
			if !ok {
				return fmt.Errorf("fedlearn: solver state of %s is %T, not a dense tensor", p.Name(), f.Interface())
			}
			data, ok := d.Data().([]float64)
			if !ok || len(data) != len(paramData(p)) {
				return fmt.Errorf("fedlearn: solver state of %s does not match the parameter", p.Name())
			}
			st.tensors = append(st.tensors, Tensor{Name: prefix + p.Name(), Shape: append([]int(nil), t.shapes[i]...), Data: append([]float64(nil), data...)})
			return nil
		}
		if err := add(vn, e.Field(0)); err != nil {
			return solverState{}, err
		}
		if dn != "" {
			if err := add(dn, e.Field(1)); err != nil {
				return solverState{}, err
			}
		}
	}
	return st, nil
}

// setSolverState puts state taken by solverState into a fresh trainer's
// solver, after checking that it fits the solver and the parameters.
func (t *Trainer) setSolverState(st solverState) error {
	switch {
	case t.cfg.Solver == SolverSGD && (len(st.tensors) != 0 || st.iter != 0):
		return fmt.Errorf("%w: solver sgd has no state, checkpoint has %d tensors and iteration %d", ErrCheckpoint, len(st.tensors), st.iter)
	case t.cfg.Solver == SolverSGD:
		return nil
	case t.cfg.Solver == SolverMomentum && st.iter != 0:
		return fmt.Errorf("%w: solver momentum has no iteration count, checkpoint has %d", ErrCheckpoint, st.iter)
	}
	if len(st.tensors) == 0 {
		if st.iter != 0 {
			return fmt.Errorf("%w: solver iteration %d without state", ErrCheckpoint, st.iter)
		}
		return nil
	}
	vn, dn := stateNames(t.cfg.Solver)
	per := 1
	if dn != "" {
		per = 2
	}
	if len(st.tensors) != per*len(t.params) {
		return fmt.Errorf("%w: %d solver state tensors, %s with %d parameters needs %d", ErrCheckpoint, len(st.tensors), t.cfg.Solver, len(t.params), per*len(t.params))
	}
	cache, iter, err := stateFields(t.solver)
	if err != nil {
		return err
	}
	entries := reflect.MakeSlice(cache.Type(), len(t.params), len(t.params))
	for i, p := range t.params {
		e := reflect.New(cache.Type().Elem().Elem())
		for k := 0; k < per; k++ {
			ct := st.tensors[per*i+k]
			want := vn + p.Name()
			if k == 1 {
				want = dn + p.Name()
			}
			if ct.Name != want || !sameShape(ct.Shape, t.shapes[i]) {
				return fmt.Errorf("%w: solver state tensor %q %v, want %q %v", ErrCheckpoint, ct.Name, ct.Shape, want, t.shapes[i])
			}
			// gorgonia's cache tensors have the parameter node's shape.
			d := tensor.New(tensor.WithShape(p.Shape().Clone()...), tensor.WithBacking(append([]float64(nil), ct.Data...)))
			f := e.Elem().Field(k)
			reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Set(reflect.ValueOf(G.Value(d)))
		}
		if per == 1 {
			// Momentum keeps a gradient-shaped zero tensor beside the velocity.
			d := tensor.New(tensor.WithShape(p.Shape().Clone()...), tensor.Of(tensor.Float64))
			f := e.Elem().Field(1)
			reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Set(reflect.ValueOf(G.Value(d)))
		}
		entries.Index(i).Set(e)
	}
	cache.Set(entries)
	if iter.IsValid() {
		iter.SetInt(int64(st.iter))
	}
	return nil
}

// runner executes a compiled tape machine's program once per call.
//
// gorgonia's RunAll locks the calling goroutine to its OS thread, starts a
// goroutine for the program and waits on channels for it (the design
// serves CUDA); on the CPU that is two thread hand-offs (futex sleeps and
// wake-ups) per step, a third of the LR step's time in pprof. And Reset,
// which RunAll needs before every run, drops every register, so each run
// allocated all intermediate tensors again (957 KB a step for the MLP
// 43-64-6 at batch 256). The machine's exported Run method executes a
// program fragment on the calling goroutine and leaves the registers in
// place, so the ops write into last run's tensors; its argument type is
// unexported, so the program's instructions are fetched and Run is called
// through reflection. If the layout is not the expected one (a gorgonia
// other than the pinned v0.9.18), runner falls back to Reset and RunAll.
//
// Run differs from RunAll in two ways that do not matter here: it does not
// run the machine's closure queue (filled only for gradients of identity
// ops, which these graphs do not have; checked on every run) and, after
// the program, it binds each node to its register's final value. The
// trainer reads nothing through those bindings: the loss op records its
// value and the gradients are read from the parameters' dual values.
type runner struct {
	vm    G.VM
	run   reflect.Value // the machine's Run method, or invalid
	args  []reflect.Value
	queue reflect.Value // the machine's closure queue (read only)
}

func newRunner(vm G.VM, prog any) runner {
	r := runner{vm: vm}
	p := reflect.ValueOf(prog)
	if p.Kind() != reflect.Pointer || p.IsNil() || p.Elem().Kind() != reflect.Struct {
		return r
	}
	instr := p.Elem().FieldByName("instructions")
	run := reflect.ValueOf(vm).MethodByName("Run")
	if !instr.IsValid() || !run.IsValid() || run.Type().NumIn() != 1 || run.Type().In(0) != instr.Type() ||
		run.Type().NumOut() != 1 || run.Type().Out(0) != reflect.TypeFor[error]() {
		return r
	}
	q := reflect.ValueOf(vm).Elem().FieldByName("closureQueue")
	if !q.IsValid() || q.Kind() != reflect.Slice {
		return r
	}
	r.run, r.queue = run, q
	r.args = []reflect.Value{reflect.NewAt(instr.Type(), unsafe.Pointer(instr.UnsafeAddr())).Elem()}
	return r
}

// exec runs the program once.
func (r runner) exec() error {
	if !r.run.IsValid() {
		r.vm.Reset()
		return r.vm.RunAll()
	}
	if n := r.queue.Len(); n != 0 {
		return fmt.Errorf("fedlearn: the graph queued %d deferred gradient updates, which the runner does not run", n)
	}
	if err, _ := r.run.Call(r.args)[0].Interface().(error); err != nil {
		return err
	}
	return nil
}
