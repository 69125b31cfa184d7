package strategy

import (
	"encoding/binary"
	"math"
	"testing"
)

// FuzzAggregate feeds every strategy arbitrary rounds (any float32 bits,
// including NaN and Inf; empty, repeated names; any example counts): each
// returns an error or a finite model of the right length, never panics.
func FuzzAggregate(f *testing.F) {
	f.Add([]byte{3, 2, 1, 0, 0, 128, 63, 0, 0, 0, 64, 2, 0, 0, 64, 64, 0, 0, 128, 64, 3, 0, 0, 160, 64, 0, 0, 192, 64})
	f.Add([]byte{2, 1, 0, 0, 0, 192, 127, 1, 1, 0, 0, 128, 127})
	f.Add([]byte{1, 1, 5, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		n, d := int(data[0]%9), 1+int(data[1]%7)
		data = data[2:]
		us := make([]Update, 0, n)
		for i := 0; i < n && len(data) > 0; i++ {
			u := Update{Client: string(rune('a' + data[0]%6)), Examples: int(data[0]/6) - 3}
			if data[0]%6 == 5 {
				u.Client = ""
			}
			data = data[1:]
			size := d
			if len(data) > 0 && data[0] == 0xff { // a wrong length now and then
				size, data = d+1, data[1:]
			}
			for j := 0; j < size; j++ {
				var v float32
				if len(data) >= 4 {
					v = math.Float32frombits(binary.LittleEndian.Uint32(data))
					data = data[4:]
				}
				u.Delta = append(u.Delta, v)
			}
			us = append(us, u)
		}
		global := make([]float64, d)
		for j := range global {
			global[j] = float64(j) - 1
		}
		for _, newS := range allStrategies(t) {
			s := newS()
			out, err := s.Aggregate(global, us)
			if err != nil {
				continue
			}
			if len(out) != d {
				t.Fatalf("%s: %d values, want %d", s.Name(), len(out), d)
			}
			for j, v := range out {
				if math.IsNaN(v) || math.IsInf(v, 0) {
					t.Fatalf("%s: value %d is %v for %+v", s.Name(), j, v, us)
				}
			}
		}
	})
}
