package crdt

import (
	"fmt"
	"math"
)

// Limits on ops, deltas and their encodings. Anything larger is rejected as
// invalid, so a peer cannot make a replica allocate without bound.
const (
	// MaxDeltaBytes is the largest encoded []Delta accepted.
	MaxDeltaBytes = 4 << 20
	// MaxOriginLen is the longest replica id.
	MaxOriginLen = 64
	// MaxCollectionLen is the longest collection name.
	MaxCollectionLen = 256
	// MaxKeyLen is the longest key or set element.
	MaxKeyLen = 1024
	// MaxValueLen is the largest value of a put.
	MaxValueLen = 1 << 20
	// MaxObserved is the most dots one op may observe.
	MaxObserved = 1 << 16
	// MaxOpsPerMessage is the most ops one encoded []Delta may carry.
	MaxOpsPerMessage = 1 << 17
	// MaxDeltasPerMessage is the most deltas one encoded []Delta may carry.
	MaxDeltasPerMessage = 1 << 14
	// MaxVersionVectorEntries is the most origins an encoded VersionVector
	// may hold.
	MaxVersionVectorEntries = 1 << 14

	maxSeq = math.MaxInt64
)

func checkOrigin(o, what string) error {
	if len(o) == 0 || len(o) > MaxOriginLen {
		return fmt.Errorf("%s length %d outside 1..%d", what, len(o), MaxOriginLen)
	}
	return nil
}

func checkDot(d Dot, what string) error {
	if err := checkOrigin(d.Origin, what+" origin"); err != nil {
		return err
	}
	if d.Seq == 0 || d.Seq > maxSeq {
		return fmt.Errorf("%s sequence %d outside 1..%d", what, d.Seq, uint64(maxSeq))
	}
	return nil
}

func checkName(coll, key string) error {
	if len(coll) == 0 || len(coll) > MaxCollectionLen {
		return fmt.Errorf("collection name length %d outside 1..%d", len(coll), MaxCollectionLen)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("key length %d exceeds %d", len(key), MaxKeyLen)
	}
	return nil
}

func dotLess(a, b Dot) bool {
	if a.Origin != b.Origin {
		return a.Origin < b.Origin
	}
	return a.Seq < b.Seq
}

// Validate checks op on its own: dot, timestamp, type and kind agreeing,
// name and value sizes, fields only where the kind uses them, and observed
// dots valid, distinct and sorted by (origin, seq). Errors wrap
// ErrInvalidDelta.
func (op Op) Validate() error {
	if err := op.validate(); err != nil {
		return fmt.Errorf("%w: op %s:%d: %v", ErrInvalidDelta, op.Dot.Origin, op.Dot.Seq, err)
	}
	return nil
}

func (op *Op) validate() error {
	if err := checkDot(op.Dot, "dot"); err != nil {
		return err
	}
	if op.HLC == 0 || op.HLC > maxTimestamp {
		return fmt.Errorf("timestamp %d out of range", uint64(op.HLC))
	}
	if !op.Kind.Valid() {
		return fmt.Errorf("unknown kind %d", uint8(op.Kind))
	}
	if !op.Type.Valid() {
		return fmt.Errorf("unknown type %q", string(op.Type))
	}
	if op.Kind.Type() != op.Type {
		return fmt.Errorf("kind %s does not belong to type %s", op.Kind, op.Type)
	}
	if err := checkName(op.Collection, op.Key); err != nil {
		return err
	}
	switch op.Kind {
	case KindPut, KindMVPut:
		if len(op.Value) > MaxValueLen {
			return fmt.Errorf("value length %d exceeds %d", len(op.Value), MaxValueLen)
		}
	default:
		if len(op.Value) != 0 {
			return fmt.Errorf("kind %s carries a value", op.Kind)
		}
	}
	if op.Kind == KindCounter {
		if op.P > math.MaxInt64 || op.N > math.MaxInt64 {
			return fmt.Errorf("counter totals %d/%d exceed %d", op.P, op.N, int64(math.MaxInt64))
		}
	} else if op.P != 0 || op.N != 0 {
		return fmt.Errorf("kind %s carries counter totals", op.Kind)
	}
	switch op.Kind {
	case KindRemove, KindMVPut, KindMVDelete:
		if len(op.Observed) > MaxObserved {
			return fmt.Errorf("%d observed dots exceed %d", len(op.Observed), MaxObserved)
		}
		for i, d := range op.Observed {
			if err := checkDot(d, fmt.Sprintf("observed dot %d", i)); err != nil {
				return err
			}
			if d == op.Dot {
				return fmt.Errorf("observed dot %d is the op's own dot", i)
			}
			if i > 0 && !dotLess(op.Observed[i-1], d) {
				return fmt.Errorf("observed dots not strictly sorted at %d", i)
			}
		}
	default:
		if len(op.Observed) != 0 {
			return fmt.Errorf("kind %s carries observed dots", op.Kind)
		}
	}
	return nil
}

// Validate checks d: origin, a non-empty range From < To, and ops of that
// origin with strictly increasing sequence numbers inside (From, To], each
// valid on its own. Errors wrap ErrInvalidDelta.
func (d Delta) Validate() error {
	if err := d.validate(); err != nil {
		return fmt.Errorf("%w: delta %s (%d,%d]: %v", ErrInvalidDelta, d.Origin, d.From, d.To, err)
	}
	return nil
}

func (d *Delta) validate() error {
	if err := checkOrigin(d.Origin, "origin"); err != nil {
		return err
	}
	if d.To > maxSeq {
		return fmt.Errorf("range end %d exceeds %d", d.To, uint64(maxSeq))
	}
	if d.From >= d.To {
		return fmt.Errorf("empty range")
	}
	if uint64(len(d.Ops)) > d.To-d.From {
		return fmt.Errorf("%d ops do not fit the range", len(d.Ops))
	}
	prev := d.From
	for i := range d.Ops {
		op := &d.Ops[i]
		if op.Dot.Origin != d.Origin {
			return fmt.Errorf("op %d has origin %q", i, op.Dot.Origin)
		}
		if op.Dot.Seq <= prev || op.Dot.Seq > d.To {
			return fmt.Errorf("op %d sequence %d out of order or outside the range", i, op.Dot.Seq)
		}
		prev = op.Dot.Seq
		if err := op.validate(); err != nil {
			return fmt.Errorf("op %d (seq %d): %v", i, op.Dot.Seq, err)
		}
	}
	return nil
}
