package secagg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
)

// Shamir secret sharing over the prime field GF(p), p = 2^61 − 1.
//
// A 32-byte secret is cut into five chunks (four of 7 bytes, one of 4),
// each below 2^56 < p, and every chunk is shared with its own random
// polynomial of degree t−1 evaluated at the holder's client id (1..n, never
// 0). A share is the five evaluations. Reconstruction by Lagrange
// interpolation at 0 from any t shares; a chunk at or above its bound
// means the shares do not belong together.

const (
	fieldP     = 1<<61 - 1
	chunks     = 5
	secretSize = 32
)

// share is one holder's share of one 32-byte secret.
type share [chunks]uint64

func fadd(a, b uint64) uint64 {
	s := a + b
	if s >= fieldP {
		s -= fieldP
	}
	return s
}

func fsub(a, b uint64) uint64 {
	if a >= b {
		return a - b
	}
	return a + fieldP - b
}

func fmul(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	// a·b = hi·2^64 + lo = (hi<<3 | lo>>61)·2^61 + (lo & p), and 2^61 ≡ 1.
	s := (hi<<3 | lo>>61) + lo&fieldP
	for s >= fieldP {
		s -= fieldP
	}
	return s
}

func finv(a uint64) uint64 {
	r, e := uint64(1), uint64(fieldP-2)
	for ; e > 0; e >>= 1 {
		if e&1 == 1 {
			r = fmul(r, a)
		}
		a = fmul(a, a)
	}
	return r
}

// randField draws a uniform field element from r (rejection sampling).
func randField(r io.Reader) (uint64, error) {
	var b [8]byte
	for {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, fmt.Errorf("secagg: randomness: %w", err)
		}
		if v := binary.LittleEndian.Uint64(b[:]) & fieldP; v < fieldP {
			return v, nil
		}
	}
}

func chunkBounds(i int) (off, size int) {
	if i < chunks-1 {
		return 7 * i, 7
	}
	return 28, 4
}

// split shares secret among the holders xs (distinct, nonzero) with
// threshold t.
func split(secret *[secretSize]byte, xs []uint32, t int, r io.Reader) ([]share, error) {
	out := make([]share, len(xs))
	coef := make([]uint64, t)
	for c := 0; c < chunks; c++ {
		off, size := chunkBounds(c)
		var b [8]byte
		copy(b[:], secret[off:off+size])
		coef[0] = binary.LittleEndian.Uint64(b[:])
		for i := 1; i < t; i++ {
			v, err := randField(r)
			if err != nil {
				return nil, err
			}
			coef[i] = v
		}
		for h, x := range xs {
			y := uint64(0) // Horner
			for i := t - 1; i >= 0; i-- {
				y = fadd(fmul(y, uint64(x)), coef[i])
			}
			out[h][c] = y
		}
	}
	return out, nil
}

var errShares = errors.New("shares do not reconstruct a secret")

// combine reconstructs a secret from the first t of the shares ys held by
// xs (distinct, nonzero; len ≥ t).
func combine(xs []uint32, ys []share, t int) ([secretSize]byte, error) {
	var secret [secretSize]byte
	if len(xs) < t || len(ys) != len(xs) {
		return secret, fmt.Errorf("%d shares, need %d", len(xs), t)
	}
	xs, ys = xs[:t], ys[:t]
	lambda := make([]uint64, t)
	for i := range xs {
		num, den := uint64(1), uint64(1)
		for j := range xs {
			if i == j {
				continue
			}
			if xs[i] == xs[j] || xs[i] == 0 {
				return secret, fmt.Errorf("holder ids %v not distinct and nonzero", xs)
			}
			num = fmul(num, uint64(xs[j]))
			den = fmul(den, fsub(uint64(xs[j]), uint64(xs[i])))
		}
		lambda[i] = fmul(num, finv(den))
	}
	for c := 0; c < chunks; c++ {
		v := uint64(0)
		for i := range ys {
			v = fadd(v, fmul(lambda[i], ys[i][c]))
		}
		off, size := chunkBounds(c)
		if v>>(8*size) != 0 {
			return secret, errShares
		}
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], v)
		copy(secret[off:off+size], b[:size])
	}
	return secret, nil
}
