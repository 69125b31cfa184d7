package secagg

import (
	"testing"
)

// Every decoder is fuzzed from real messages of a small round. A message
// that decodes must encode back to the same bytes (one encoding per
// message), and must then be refused with an error or handled by the
// state machine of the stage it belongs to, never panic.

var fuzzRound = round{cfg: Config{NumShares: 3, ReconstructionThreshold: 2}, n: 4, dim: 8, seed: 11}

// seedMessages returns the encoded messages of one round of fuzzRound,
// by message type.
func seedMessages(t testing.TB) map[byte][][]byte {
	out := map[byte][][]byte{}
	r := fuzzRound
	r.dropMasked = []int{1}
	r.wire = func(b []byte) { out[b[5]] = append(out[b[5]], append([]byte(nil), b...)) }
	must(t, r.run())
	return out
}

func addSeeds(f *testing.F, typ byte) {
	for _, b := range seedMessages(f)[typ] {
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add([]byte("EFSA\x01"))
	f.Add([]byte{})
}

// stopped returns fuzzRound's state just before the given stage.
func stopped(t *testing.T, stage string) roundOutcome {
	r := fuzzRound
	r.stopBefore = stage
	return must(t, r.run())
}

func roundTrips(t *testing.T, typ byte, b []byte) bool {
	again, err := decodeAny(typ, b)
	if err != nil {
		return false
	}
	if string(again) != string(b) {
		t.Fatalf("decoded and encoded again differs:\n%x\n%x", b, again)
	}
	return true
}

func FuzzSetup(f *testing.F) {
	addSeeds(f, typeSetup)
	f.Fuzz(func(t *testing.T, b []byte) {
		if !roundTrips(t, typeSetup, b) {
			return
		}
		var m Setup
		_ = m.Unmarshal(b)
		_, _ = NewClient("f", seeded(1, 1)).Setup(m)
	})
}

func FuzzPublicKeys(f *testing.F) {
	addSeeds(f, typePublicKeys)
	f.Fuzz(func(t *testing.T, b []byte) {
		if !roundTrips(t, typePublicKeys, b) {
			return
		}
		var m PublicKeys
		_ = m.Unmarshal(b)
		s, err := NewServer(fuzzRound.cfg, 7, []string{name(0), name(1), name(2), name(3)}, 8, seeded(1, 0))
		if err != nil {
			t.Fatal(err)
		}
		_ = s.AddPublicKeys(name(int(m.ClientID)%4), m)
	})
}

func FuzzKeysRequest(f *testing.F) {
	addSeeds(f, typeKeysRequest)
	f.Fuzz(func(t *testing.T, b []byte) {
		if !roundTrips(t, typeKeysRequest, b) {
			return
		}
		var m KeysRequest
		_ = m.Unmarshal(b)
		_, _ = stopped(t, "keys").clients[name(0)].ShareKeys(m)
	})
}

func FuzzShares(f *testing.F) {
	addSeeds(f, typeShares)
	f.Fuzz(func(t *testing.T, b []byte) {
		if !roundTrips(t, typeShares, b) {
			return
		}
		var m Shares
		_ = m.Unmarshal(b)
		_ = stopped(t, "keys").server.AddShares(name(int(m.From)%4), m)
	})
}

func FuzzCollectRequest(f *testing.F) {
	addSeeds(f, typeCollectRequest)
	f.Fuzz(func(t *testing.T, b []byte) {
		if !roundTrips(t, typeCollectRequest, b) {
			return
		}
		var m CollectRequest
		_ = m.Unmarshal(b)
		o := stopped(t, "collect")
		_, _ = o.clients[name(0)].MaskVector(m, o.deltas[name(0)])
	})
}

func FuzzMaskedVector(f *testing.F) {
	addSeeds(f, typeMaskedVector)
	f.Fuzz(func(t *testing.T, b []byte) {
		if !roundTrips(t, typeMaskedVector, b) {
			return
		}
		var m MaskedVector
		_ = m.Unmarshal(b)
		_ = stopped(t, "collect").server.AddMaskedVector(name(int(m.From)%4), m)
	})
}

func FuzzUnmaskRequest(f *testing.F) {
	addSeeds(f, typeUnmaskRequest)
	f.Fuzz(func(t *testing.T, b []byte) {
		if !roundTrips(t, typeUnmaskRequest, b) {
			return
		}
		var m UnmaskRequest
		_ = m.Unmarshal(b)
		_, _ = stopped(t, "unmask").clients[name(0)].Unmask(m)
	})
}

func FuzzUnmaskResponse(f *testing.F) {
	addSeeds(f, typeUnmaskResponse)
	f.Fuzz(func(t *testing.T, b []byte) {
		if !roundTrips(t, typeUnmaskResponse, b) {
			return
		}
		var m UnmaskResponse
		_ = m.Unmarshal(b)
		s := stopped(t, "unmask").server
		if s.AddUnmask(name(int(m.From)%4), m) == nil {
			_, _ = s.Result()
		}
	})
}
