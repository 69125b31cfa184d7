package dkms

import (
	"bytes"
	"testing"
)

// Benchmarks of the operations that run on the control plane per rotation
// and per agent. Run with: go test -run '^$' -bench . -benchtime 200x ./dkms/

func BenchmarkRotate(b *testing.B) {
	e := newEnv(b)
	e.svc.CreateKey(ctxb(), "data", PurposeData, Policy{})
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.svc.Rotate(ctxb(), "data"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRewrap1KiB(b *testing.B) {
	e := newEnv(b)
	e.svc.CreateKey(ctxb(), "data", PurposeData, Policy{})
	env1, _ := e.svc.Encrypt(ctxb(), "data", bytes.Repeat([]byte("x"), 1024), nil)
	e.svc.Rotate(ctxb(), "data")
	b.SetBytes(1024)
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.svc.Rewrap(ctxb(), "data", env1, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncrypt1KiB(b *testing.B) {
	e := newEnv(b)
	e.svc.CreateKey(ctxb(), "data", PurposeData, Policy{})
	pt := bytes.Repeat([]byte("x"), 1024)
	b.SetBytes(1024)
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.svc.Encrypt(ctxb(), "data", pt, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDistribute measures one key message: X-Wing seal and ML-DSA-65
// signature (a rotation costs this once per authorized agent).
func BenchmarkDistribute(b *testing.B) {
	e, a, _, _ := fleet(b)
	b.ResetTimer()
	for b.Loop() {
		if _, err := e.svc.MessageFor(ctxb(), a.id, "telemetry", 1); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAccept measures an agent checking and applying a key message
// (ML-DSA-65 verify, X-Wing open, keyring sealed to disk).
func BenchmarkAccept(b *testing.B) {
	e, a, _, _ := fleet(b)
	msgs := make([][]byte, 0, 64)
	for range 64 {
		m, _ := e.svc.MessageFor(ctxb(), a.id, "telemetry", 1)
		msgs = append(msgs, msgBytes(b, m))
	}
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if i == len(msgs) {
			b.StopTimer()
			a.keys = e.openAgent(&testAgent{id: a.id, sk: a.sk, dev: a.dev}, b.TempDir()+"/k")
			i = 0
			b.StartTimer()
		}
		if _, err := a.keys.Accept(ctxb(), msgs[i]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
