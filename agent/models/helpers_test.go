package models

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// signingKey is a fixed ML-DSA-65 key of the seed byte.
func signingKey(t testing.TB, b byte) *pqcrypto.SigningKey {
	t.Helper()
	k, err := pqcrypto.NewSigningKey(bytes.Repeat([]byte{b}, pqcrypto.SigningSeedSize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testFile is an MLP 3→8→2 on the metrics of the footprint publisher
// (temperature, humidity, co2), one of its features windowed.
func testFile(t testing.TB, version string, seed uint64) *fedlearn.File {
	t.Helper()
	a, err := fedlearn.ParseArch("mlp:8", 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	return &fedlearn.File{
		Name: "comfort", Version: version, Arch: a, Weights: fedlearn.InitWeights(a, seed),
		Schema: fedlearn.Schema{Features: []fedlearn.Feature{
			{Name: "temp", Metric: "temperature", Agg: fedlearn.AggLatest, Impute: 21, Mean: 21, Std: 2},
			{Name: "hum", Metric: "humidity", Agg: fedlearn.AggLatest, Impute: 40, Mean: 40, Std: 8},
			{Name: "co2_mean", Metric: "co2", Agg: fedlearn.AggMean, Window: fedlearn.Duration(time.Minute), Impute: 600, Mean: 600, Std: 200},
		}},
		Labels:   []string{"ok", "stuffy"},
		Training: fedlearn.Training{Epochs: 1, Seed: seed, Created: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)},
	}
}

// sign encodes f and signs it with k.
func sign(t testing.TB, f *fedlearn.File, k *pqcrypto.SigningKey) []byte {
	t.Helper()
	b, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	s, err := fedlearn.Sign(b, "control-plane", k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// signedWithNaN is f encoded with its first weight set to NaN, a correct
// digest and a valid signature: only the content check can refuse it.
func signedWithNaN(t testing.TB, f *fedlearn.File, k *pqcrypto.SigningKey) []byte {
	t.Helper()
	b, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	hl := int(binary.BigEndian.Uint32(b[10:]))
	off := 18 + hl
	binary.LittleEndian.PutUint64(b[off:], math.Float64bits(math.NaN()))
	content := b[:len(b)-sha256.Size]
	sum := sha256.Sum256(content)
	copy(b[len(content):], sum[:])
	signer := "control-plane"
	msg := append(append(append([]byte(nil), sum[:]...), byte(len(signer))), signer...)
	sig, err := k.Sign(fedlearn.SignatureContext, msg)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, "EFSG"...)
	b = append(b, byte(len(signer)))
	b = append(b, signer...)
	return append(b, sig...)
}

// newTestManager is a manager over a temporary directory trusting k.
func newTestManager(t testing.TB, dir string, k *pqcrypto.SigningKey, devices func(context.Context) ([]DeviceMetrics, error)) (*Manager, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	mg, err := New(Config{Dir: dir, VerifyingKey: func() *pqcrypto.VerifyingKey { return k.Public() },
		Devices: devices, Registry: reg, Clock: clock.NewManual(time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC))})
	if err != nil {
		t.Fatal(err)
	}
	return mg, reg
}

func failures(_ *prometheus.Registry, m *Manager, reason string) float64 {
	return counter(m.m.installFailures.WithLabelValues(reason))
}

// counter reads a counter's value.
func counter(c prometheus.Counter) float64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		return -1
	}
	return d.GetCounter().GetValue()
}
