// Package modeltest makes signed model files for the tests of the model
// runtime (agent/models, the agent, edgectl, scenario tests).
package modeltest

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// Signer is the signer id of the files this package signs.
const Signer = "control-plane"

// Key is a fixed ML-DSA-65 key made from the seed byte b.
func Key(t testing.TB, b byte) *pqcrypto.SigningKey {
	t.Helper()
	k, err := pqcrypto.NewSigningKey(bytes.Repeat([]byte{b}, pqcrypto.SigningSeedSize))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// KeyFile writes k's public key as models.verifying_key_file reads it
// (base64) into dir and returns its path.
func KeyFile(t testing.TB, dir string, k *pqcrypto.SigningKey) string {
	t.Helper()
	path := filepath.Join(dir, "model-signer.pub")
	if err := os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(k.Public().Bytes())+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// Comfort is model "comfort": an MLP 3→8→2 over the metrics the ingestion
// benchmark's devices send (temperature, humidity, co2), one of its
// features a mean over a minute; weights drawn from seed.
func Comfort(t testing.TB, version string, seed uint64) *fedlearn.File {
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

// Sign encodes f and signs it with k.
func Sign(t testing.TB, f *fedlearn.File, k *pqcrypto.SigningKey) []byte {
	t.Helper()
	b, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	s, err := fedlearn.Sign(b, Signer, k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// SignedWithNaN is f encoded with its first weight NaN, a correct digest
// and a valid signature: only the content check can refuse it.
func SignedWithNaN(t testing.TB, f *fedlearn.File, k *pqcrypto.SigningKey) []byte {
	t.Helper()
	b, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	const prelude = 8 + 2 + 4 + 4 // magic, version, header length, weight count
	off := prelude + int(binary.BigEndian.Uint32(b[10:]))
	binary.LittleEndian.PutUint64(b[off:], math.Float64bits(math.NaN()))
	content := b[:len(b)-sha256.Size]
	sum := sha256.Sum256(content)
	copy(b[len(content):], sum[:])
	msg := append(append(append([]byte(nil), sum[:]...), byte(len(Signer))), Signer...)
	sig, err := k.Sign(fedlearn.SignatureContext, msg)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, "EFSG"...)
	b = append(b, byte(len(Signer)))
	b = append(b, Signer...)
	return append(b, sig...)
}

// Forward is what fedlearn's forward pass predicts for raw features
// (NaN: missing) of f.
func Forward(t testing.TB, f *fedlearn.File, raw []float64) (int, []float64) {
	t.Helper()
	x := append([]float64(nil), raw...)
	if err := f.Schema.Normalize(x, x); err != nil {
		t.Fatal(err)
	}
	fw, err := fedlearn.NewForward(f.Arch, f.Weights)
	if err != nil {
		t.Fatal(err)
	}
	probs := make([]float64, f.Arch.Classes)
	c, err := fw.Predict(x, probs)
	if err != nil {
		t.Fatal(err)
	}
	return c, probs
}

// Close reports whether a and b are equal within tol.
func Close(a, b []float64, tol float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Abs(a[i]-b[i]) > tol {
			return false
		}
	}
	return true
}
