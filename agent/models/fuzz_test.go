package models

import (
	"testing"
	"time"
)

// FuzzDecodeRound: a stored round decodes or fails with an error, never
// panics, and what encodes decodes back.
func FuzzDecodeRound(f *testing.F) {
	at := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	good := appendPrediction([]byte{roundFormat}, "room-1", "comfort", "1", "stuffy", 1, at.UnixMicro(), at.UnixMicro(), []float64{0.25, 0.75})
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add([]byte{roundFormat})
	f.Add([]byte{roundFormat, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		ps, err := decodeRound(b)
		if err != nil {
			return
		}
		re := []byte{roundFormat}
		for _, p := range ps {
			re = appendPrediction(re, p.Device, p.Model, p.Version, p.Label, p.Class, p.ReadingTime.UnixMicro(), p.At.UnixMicro(), p.Probabilities)
		}
		again, err := decodeRound(re)
		if err != nil || len(again) != len(ps) {
			t.Fatalf("re-encoded round: %d of %d, %v", len(again), len(ps), err)
		}
	})
}
