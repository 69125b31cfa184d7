package fedlearn

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
)

// ErrCheckpoint is returned for a checkpoint that cannot be restored.
var ErrCheckpoint = errors.New("fedlearn: invalid checkpoint")

// Checkpoint layout, all integers little-endian:
//
//	magic      8 bytes  "EFCKPT\x00\x01" (format, version 1)
//	headerLen  uint32
//	header     headerLen bytes of JSON (checkpointHeader)
//	values     float64s: the weights in Weights order, then the solver
//	           state tensors in header order
//	digest     32 bytes: SHA-256 of everything before it
//
// A truncated or altered checkpoint fails the digest check before anything
// else is read.
var checkpointMagic = []byte("EFCKPT\x00\x01")

// maxCheckpointHeader bounds the JSON header.
const maxCheckpointHeader = 1 << 20

type checkpointTensor struct {
	Name  string `json:"name"`
	Shape []int  `json:"shape"`
}

type checkpointHeader struct {
	Arch      Arch               `json:"arch"`
	Solver    Solver             `json:"solver"`
	BatchSize int                `json:"batch_size"`
	Epochs    int                `json:"epochs"`
	Steps     int                `json:"steps"`
	RNG       []byte             `json:"rng"`
	Weights   []checkpointTensor `json:"weights"`
	// State names the solver's state tensors (see solverState).
	State     []checkpointTensor `json:"state,omitempty"`
	StateIter int                `json:"state_iter,omitempty"`
}

// Checkpoint serialises the trainer's weights, the solver's state, the
// number of epochs done and the shuffling generator's state, so that
// RestoreTrainer continues where this trainer is. Taken between epochs,
// a restored trainer then produces the same weights, bit for bit, as one
// that was never interrupted.
func (t *Trainer) Checkpoint() ([]byte, error) {
	if t.broken != nil {
		return nil, t.broken
	}
	rng, err := t.pcg.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("fedlearn: checkpoint: generator state: %w", err)
	}
	h := checkpointHeader{
		Arch: t.arch, Solver: t.cfg.Solver, BatchSize: t.cfg.BatchSize,
		Epochs: t.epochs, Steps: t.steps, RNG: rng,
	}
	var values [][]float64
	for i, p := range t.params {
		h.Weights = append(h.Weights, checkpointTensor{Name: p.Name(), Shape: t.shapes[i]})
		values = append(values, paramData(p))
	}
	st, err := t.solverState()
	if err != nil {
		return nil, err
	}
	h.StateIter = st.iter
	for _, s := range st.tensors {
		h.State = append(h.State, checkpointTensor{Name: s.Name, Shape: s.Shape})
		values = append(values, s.Data)
	}
	hdr, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("fedlearn: checkpoint header: %w", err)
	}
	n := 0
	for _, v := range values {
		n += len(v)
	}
	buf := make([]byte, 0, len(checkpointMagic)+4+len(hdr)+8*n+sha256.Size)
	buf = append(buf, checkpointMagic...)
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(hdr)))
	buf = append(buf, hdr...)
	for _, v := range values {
		for _, f := range v {
			buf = binary.LittleEndian.AppendUint64(buf, math.Float64bits(f))
		}
	}
	sum := sha256.Sum256(buf)
	return append(buf, sum[:]...), nil
}

// RestoreTrainer builds a trainer for architecture a and configuration cfg
// from a checkpoint. The checkpoint must have been made for the same
// architecture, solver and batch size; everything in it is validated
// (digest, shapes, finite values) before use.
func RestoreTrainer(a Arch, cfg TrainConfig, ckpt []byte) (*Trainer, error) {
	if err := a.Validate(); err != nil {
		return nil, err
	}
	h, values, err := decodeCheckpoint(ckpt)
	if err != nil {
		return nil, err
	}
	if !h.Arch.Equal(a) {
		return nil, fmt.Errorf("%w: made for architecture %s with %d inputs and %d classes, not %s with %d and %d",
			ErrCheckpoint, h.Arch, h.Arch.Inputs, h.Arch.Classes, a, a.Inputs, a.Classes)
	}
	if h.Solver != cfg.Solver {
		return nil, fmt.Errorf("%w: made with solver %q, configuration has %q", ErrCheckpoint, h.Solver, cfg.Solver)
	}
	if h.BatchSize != cfg.BatchSize {
		return nil, fmt.Errorf("%w: made with batch size %d, configuration has %d", ErrCheckpoint, h.BatchSize, cfg.BatchSize)
	}
	if h.Epochs < 0 || h.Steps < 0 || h.StateIter < 0 {
		return nil, fmt.Errorf("%w: negative counter (epochs %d, steps %d, solver iteration %d)", ErrCheckpoint, h.Epochs, h.Steps, h.StateIter)
	}
	w := NewWeights(a)
	if len(h.Weights) != len(w) {
		return nil, fmt.Errorf("%w: %d weight tensors, architecture needs %d", ErrCheckpoint, len(h.Weights), len(w))
	}
	off := 0
	take := func(n int) ([]float64, error) {
		if n > len(values)-off {
			return nil, fmt.Errorf("%w: values end after %d of them", ErrCheckpoint, len(values))
		}
		v := values[off : off+n]
		off += n
		return v, nil
	}
	for i, ct := range h.Weights {
		if ct.Name != w[i].Name || !sameShape(ct.Shape, w[i].Shape) {
			return nil, fmt.Errorf("%w: weight tensor %d is %q %v, want %q %v", ErrCheckpoint, i, ct.Name, ct.Shape, w[i].Name, w[i].Shape)
		}
		v, err := take(len(w[i].Data))
		if err != nil {
			return nil, err
		}
		copy(w[i].Data, v)
	}
	if err := w.Check(a); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCheckpoint, err)
	}
	st := solverState{iter: h.StateIter}
	for _, ct := range h.State {
		n, err := shapeLen(ct.Shape)
		if err != nil {
			return nil, err
		}
		v, err := take(n)
		if err != nil {
			return nil, err
		}
		st.tensors = append(st.tensors, Tensor{Name: ct.Name, Shape: ct.Shape, Data: append([]float64(nil), v...)})
	}
	if off != len(values) {
		return nil, fmt.Errorf("%w: %d values left over", ErrCheckpoint, len(values)-off)
	}
	t, err := NewTrainer(a, w, cfg)
	if err != nil {
		return nil, err
	}
	if err := t.pcg.UnmarshalBinary(h.RNG); err != nil {
		t.Close()
		return nil, fmt.Errorf("%w: generator state: %w", ErrCheckpoint, err)
	}
	if err := t.setSolverState(st); err != nil {
		t.Close()
		return nil, err
	}
	t.epochs, t.steps = h.Epochs, h.Steps
	return t, nil
}

// shapeLen is the number of values of a shape from a checkpoint, bounded.
func shapeLen(s []int) (int, error) {
	if len(s) < 1 || len(s) > 2 {
		return 0, fmt.Errorf("%w: tensor shape %v", ErrCheckpoint, s)
	}
	n := 1
	for _, d := range s {
		if d < 1 || d > MaxParams {
			return 0, fmt.Errorf("%w: tensor shape %v", ErrCheckpoint, s)
		}
		n *= d
		if n > MaxParams {
			return 0, fmt.Errorf("%w: tensor shape %v is too large", ErrCheckpoint, s)
		}
	}
	return n, nil
}

// decodeCheckpoint checks the framing and digest and returns the header and
// the values, all finite.
func decodeCheckpoint(b []byte) (checkpointHeader, []float64, error) {
	var h checkpointHeader
	if len(b) < len(checkpointMagic)+4+sha256.Size {
		return h, nil, fmt.Errorf("%w: %d bytes, shorter than the smallest checkpoint", ErrCheckpoint, len(b))
	}
	if !bytes.Equal(b[:len(checkpointMagic)], checkpointMagic) {
		if bytes.Equal(b[:6], checkpointMagic[:6]) {
			return h, nil, fmt.Errorf("%w: unsupported version %d", ErrCheckpoint, binary.BigEndian.Uint16(b[6:8]))
		}
		return h, nil, fmt.Errorf("%w: not a fedlearn checkpoint (bad magic)", ErrCheckpoint)
	}
	body, digest := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if sum := sha256.Sum256(body); !bytes.Equal(sum[:], digest) {
		return h, nil, fmt.Errorf("%w: digest mismatch (truncated or corrupted)", ErrCheckpoint)
	}
	rest := body[len(checkpointMagic):]
	hl := binary.LittleEndian.Uint32(rest)
	rest = rest[4:]
	if hl > maxCheckpointHeader || int(hl) > len(rest) {
		return h, nil, fmt.Errorf("%w: header length %d, %d bytes left", ErrCheckpoint, hl, len(rest))
	}
	dec := json.NewDecoder(bytes.NewReader(rest[:hl]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return h, nil, fmt.Errorf("%w: header: %w", ErrCheckpoint, err)
	}
	if dec.More() {
		return h, nil, fmt.Errorf("%w: header has trailing data", ErrCheckpoint)
	}
	if err := h.Arch.Validate(); err != nil {
		return h, nil, fmt.Errorf("%w: %w", ErrCheckpoint, err)
	}
	rest = rest[hl:]
	if len(rest)%8 != 0 {
		return h, nil, fmt.Errorf("%w: %d value bytes is not a whole number of float64s", ErrCheckpoint, len(rest))
	}
	values := make([]float64, len(rest)/8)
	for i := range values {
		v := math.Float64frombits(binary.LittleEndian.Uint64(rest[8*i:]))
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return h, nil, fmt.Errorf("%w: value %d is %v", ErrCheckpoint, i, v)
		}
		values[i] = v
	}
	return h, values, nil
}

// ensure the generator's state type is what Checkpoint marshals.
var _ interface {
	MarshalBinary() ([]byte, error)
	UnmarshalBinary([]byte) error
} = (*rand.PCG)(nil)
