package fedlearn

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Kind names a model architecture.
type Kind string

// Architectures.
const (
	// KindLR is multinomial logistic regression: one dense layer, softmax.
	KindLR Kind = "lr"
	// KindMLP is a multilayer perceptron: dense layers with ReLU between
	// them, softmax at the end.
	KindMLP Kind = "mlp"
)

// Limits on a model's shape, so that a hostile or broken model file cannot
// make a device allocate without bound.
const (
	MaxInputs       = 4096
	MaxClasses      = 1024
	MaxHiddenLayers = 8
	MaxWidth        = 4096
	// MaxParams bounds the total number of weights of one model.
	MaxParams = 1 << 22
)

// ErrArch is returned for an invalid architecture.
var ErrArch = errors.New("fedlearn: invalid architecture")

// Arch is a model's architecture.
type Arch struct {
	Kind Kind `json:"kind"`
	// Inputs is the number of features.
	Inputs int `json:"inputs"`
	// Hidden are the widths of the MLP's hidden layers (ReLU); empty for LR.
	Hidden []int `json:"hidden,omitempty"`
	// Classes is the number of output classes.
	Classes int `json:"classes"`
}

// ParseArch reads an architecture name as given on the command line: "lr",
// "mlp:64" or "mlp:64,32".
func ParseArch(s string, inputs, classes int) (Arch, error) {
	a := Arch{Inputs: inputs, Classes: classes}
	kind, widths, hasWidths := strings.Cut(strings.TrimSpace(s), ":")
	switch Kind(kind) {
	case KindLR:
		if hasWidths {
			return Arch{}, fmt.Errorf("%w: %q: lr takes no hidden layers", ErrArch, s)
		}
		a.Kind = KindLR
	case KindMLP:
		a.Kind = KindMLP
		if !hasWidths || widths == "" {
			return Arch{}, fmt.Errorf("%w: %q: mlp needs hidden widths, e.g. mlp:64", ErrArch, s)
		}
		for _, f := range strings.Split(widths, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return Arch{}, fmt.Errorf("%w: %q: hidden width %q is not a number", ErrArch, s, f)
			}
			a.Hidden = append(a.Hidden, n)
		}
	default:
		return Arch{}, fmt.Errorf("%w: %q: unknown kind (want lr or mlp:W[,W...])", ErrArch, s)
	}
	if err := a.Validate(); err != nil {
		return Arch{}, err
	}
	return a, nil
}

// String is the command-line name of the architecture ("lr", "mlp:64,32").
func (a Arch) String() string {
	if a.Kind != KindMLP {
		return string(a.Kind)
	}
	w := make([]string, len(a.Hidden))
	for i, h := range a.Hidden {
		w[i] = strconv.Itoa(h)
	}
	return "mlp:" + strings.Join(w, ",")
}

// Validate checks the architecture against the limits.
func (a Arch) Validate() error {
	switch a.Kind {
	case KindLR:
		if len(a.Hidden) != 0 {
			return fmt.Errorf("%w: lr has no hidden layers, got %d", ErrArch, len(a.Hidden))
		}
	case KindMLP:
		if len(a.Hidden) == 0 || len(a.Hidden) > MaxHiddenLayers {
			return fmt.Errorf("%w: mlp needs 1-%d hidden layers, got %d", ErrArch, MaxHiddenLayers, len(a.Hidden))
		}
		for i, h := range a.Hidden {
			if h < 1 || h > MaxWidth {
				return fmt.Errorf("%w: hidden layer %d has width %d (want 1-%d)", ErrArch, i, h, MaxWidth)
			}
		}
	default:
		return fmt.Errorf("%w: unknown kind %q", ErrArch, a.Kind)
	}
	if a.Inputs < 1 || a.Inputs > MaxInputs {
		return fmt.Errorf("%w: %d inputs (want 1-%d)", ErrArch, a.Inputs, MaxInputs)
	}
	if a.Classes < 2 || a.Classes > MaxClasses {
		return fmt.Errorf("%w: %d classes (want 2-%d)", ErrArch, a.Classes, MaxClasses)
	}
	if n := a.NumParams(); n > MaxParams {
		return fmt.Errorf("%w: %d parameters (limit %d)", ErrArch, n, MaxParams)
	}
	return nil
}

// Layers returns the (inputs, outputs) of each dense layer in order.
func (a Arch) Layers() [][2]int {
	in := a.Inputs
	var out [][2]int
	for _, h := range a.Hidden {
		out = append(out, [2]int{in, h})
		in = h
	}
	return append(out, [2]int{in, a.Classes})
}

// NumParams is the number of weights and biases. Computed without overflow
// for any widths within the per-layer limits.
func (a Arch) NumParams() int {
	n := 0
	for _, l := range a.Layers() {
		n += l[0]*l[1] + l[1]
	}
	return n
}

// Equal reports whether two architectures are the same.
func (a Arch) Equal(b Arch) bool {
	if a.Kind != b.Kind || a.Inputs != b.Inputs || a.Classes != b.Classes || len(a.Hidden) != len(b.Hidden) {
		return false
	}
	for i := range a.Hidden {
		if a.Hidden[i] != b.Hidden[i] {
			return false
		}
	}
	return true
}
