package models

import (
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"
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

// FuzzPayloadFromRound: the publisher's reading of a stored round in
// place fails with an error or gives valid JSON for each prediction that
// decodeRound finds too (invalid UTF-8 in a string is replaced, as
// encoding/json does), never panics.
func FuzzPayloadFromRound(f *testing.F) {
	at := time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)
	good := appendPrediction([]byte{roundFormat}, "room-1", "comfort", "1", "st\"u\nffy", 1, at.UnixMicro(), at.UnixMicro(), []float64{0.25, 0.75})
	good = appendPrediction(good, "room-2", "comfort", "1+b", "ok", 0, at.UnixMicro(), at.UnixMicro(), []float64{1, 0})
	f.Add(good)
	f.Add(good[:len(good)-3])
	f.Add([]byte{roundFormat, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) == 0 || b[0] != roundFormat {
			return
		}
		ps, derr := decodeRound(b)
		rest := b[1:]
		for i := 0; len(rest) > 0; i++ {
			var payload, device []byte
			var err error
			payload, device, rest, err = appendPayloadFromRound(nil, rest, 1, int64(i+1))
			if err != nil {
				if derr == nil {
					t.Fatalf("prediction %d: %v, decodeRound read it", i, err)
				}
				return
			}
			var p struct {
				published
				Time string `json:"time"` // past year 9999 not RFC 3339
			}
			if err := json.Unmarshal(payload, &p); err != nil {
				t.Fatalf("prediction %d: %q: %v", i, payload, err)
			}
			if derr == nil && (string(device) != ps[i].Device || p.Class.Index != ps[i].Class ||
				utf8.ValidString(ps[i].Device) && p.Device != ps[i].Device || utf8.ValidString(ps[i].Label) && p.Class.Label != ps[i].Label) {
				t.Fatalf("prediction %d: published %+v, decoded %+v", i, p, ps[i])
			}
		}
	})
}
