package cpapi

import (
	"bytes"
	"math"
	"slices"
	"testing"
)

func TestFLUpdateRoundTrip(t *testing.T) {
	u := FLUpdate{Job: "flj-1", Round: 3, Attempt: 1, Examples: 42, Delta: []float32{1, -2.5, float32(math.NaN())}}
	got, err := DecodeFLUpdate(EncodeFLUpdate(u))
	if err != nil {
		t.Fatal(err)
	}
	if got.Job != u.Job || got.Round != 3 || got.Attempt != 1 || got.Examples != 42 || len(got.Delta) != 3 ||
		got.Delta[1] != -2.5 || !math.IsNaN(float64(got.Delta[2])) {
		t.Fatalf("round trip: %+v", got)
	}
	b := EncodeFLUpdate(u)
	for _, bad := range [][]byte{nil, b[:5], b[:len(b)-1], append(slices.Clone(b), 0)} {
		if _, err := DecodeFLUpdate(bad); err == nil {
			t.Errorf("decoded %d bytes of %d", len(bad), len(b))
		}
	}
	z := EncodeFLUpdate(FLUpdate{Job: "j", Round: 1, Examples: 0})
	if _, err := DecodeFLUpdate(z); err == nil {
		t.Error("decoded an update of 0 examples")
	}
}

func FuzzDecodeFLUpdate(f *testing.F) {
	f.Add(EncodeFLUpdate(FLUpdate{Job: "flj-1", Round: 1, Examples: 5, Delta: []float32{1, 2, 3}}))
	f.Add(EncodeFLUpdate(FLUpdate{Job: "j", Round: 7, Attempt: 2, Examples: 1}))
	f.Add([]byte(flUpdateMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		u, err := DecodeFLUpdate(b)
		if err != nil {
			return
		}
		if again := EncodeFLUpdate(u); !bytes.Equal(again, b) {
			t.Fatalf("decoded %x, encodes back to %x", b, again)
		}
	})
}
