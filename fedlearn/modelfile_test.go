package fedlearn

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

// testModel is a small valid model: MLP 3→4→2 on three metrics.
func testModel(t testing.TB) *File {
	t.Helper()
	a, err := ParseArch("mlp:4", 3, 2)
	if err != nil {
		t.Fatal(err)
	}
	return &File{
		Name:    "occupancy",
		Version: "1.0.0",
		Arch:    a,
		Weights: InitWeights(a, 7),
		Schema: Schema{
			Features: []Feature{
				{Name: "temp", Metric: "temperature", Agg: AggLatest, Impute: 21, Mean: 21, Std: 1.5},
				{Name: "light_mean", Metric: "light", Agg: AggMean, Window: Duration(5 * time.Minute), Impute: 120, Mean: 120, Std: 200},
				{Name: "co2", Metric: "co2", Agg: AggLatest, Impute: 600, Mean: 600, Std: 300},
			},
			Label: Label{Metric: "occupancy"},
		},
		Labels: []string{"empty", "occupied"},
		Training: Training{
			Dataset: "occupancy", Epochs: 5, Seed: 7, Examples: 8143, HeldOut: 1628,
			Loss: 0.12, Accuracy: 0.978, Params: map[string]string{"optimizer": "adam"},
			Created: time.Date(2026, 12, 7, 5, 0, 0, 0, time.UTC),
		},
	}
}

func encoded(t testing.TB) []byte {
	t.Helper()
	b, err := testModel(t).Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// raw builds a file from parts with a correct digest, so that checks after
// the digest can be reached with bad content.
func raw(version uint16, header []byte, count uint32, weights []float64) []byte {
	b := []byte(fileMagic)
	b = binary.BigEndian.AppendUint16(b, version)
	b = binary.BigEndian.AppendUint32(b, uint32(len(header)))
	b = binary.BigEndian.AppendUint32(b, count)
	b = append(b, header...)
	for _, v := range weights {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// parts splits a valid encoding into its header JSON and weights.
func parts(t *testing.T, b []byte) (map[string]any, []float64) {
	t.Helper()
	hl := int(binary.BigEndian.Uint32(b[10:]))
	n := int(binary.BigEndian.Uint32(b[14:]))
	var h map[string]any
	if err := json.Unmarshal(b[preludeSize:preludeSize+hl], &h); err != nil {
		t.Fatal(err)
	}
	w := make([]float64, n)
	for i := range w {
		w[i] = math.Float64frombits(binary.LittleEndian.Uint64(b[preludeSize+hl+8*i:]))
	}
	return h, w
}

func rebuild(t *testing.T, h map[string]any, w []float64) []byte {
	t.Helper()
	hj, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	return raw(FormatVersion, hj, uint32(len(w)), w)
}

func TestModelFileRoundTrip(t *testing.T) {
	m := testModel(t)
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != m.Name || got.Version != m.Version || !got.Arch.Equal(m.Arch) || got.Digest != m.Digest {
		t.Fatalf("decoded %s %s %s %x, want %s %s %s %x", got.Name, got.Version, got.Arch, got.Digest, m.Name, m.Version, m.Arch, m.Digest)
	}
	if !equalFloats(got.Weights.Flatten(nil), m.Weights.Flatten(nil)) {
		t.Error("weights differ after the round trip")
	}
	gj, _ := json.Marshal([]any{got.Schema, got.Labels, got.Training})
	mj, _ := json.Marshal([]any{m.Schema, m.Labels, m.Training})
	if !bytes.Equal(gj, mj) {
		t.Errorf("schema, labels or training differ:\n%s\n%s", gj, mj)
	}
	if got.SignerID != "" || got.Signature != nil {
		t.Error("unsigned file decoded with a signature")
	}
	// Encoding is deterministic: same model, same bytes.
	b2, _ := testModel(t).Encode()
	if !bytes.Equal(b, b2) {
		t.Error("two encodings of the same model differ")
	}
	// Inference through the decoded weights matches the original.
	f1, _ := NewForward(m.Arch, m.Weights)
	f2, _ := NewForward(got.Arch, got.Weights)
	x := []float64{0.3, -1, 2}
	p1, p2 := make([]float64, 2), make([]float64, 2)
	f1.Predict(x, p1)
	f2.Predict(x, p2)
	if !equalFloats(p1, p2) {
		t.Errorf("predictions differ: %v %v", p1, p2)
	}
}

func equalFloats(a, b []float64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float64bits(a[i]) != math.Float64bits(b[i]) {
			return false
		}
	}
	return true
}

func TestModelFileTruncated(t *testing.T) {
	b := encoded(t)
	for n := 0; n < len(b); n++ {
		_, err := Decode(b[:n])
		// A prefix cut inside the body either misses bytes its lengths
		// promise or (when cut exactly) no longer hashes right.
		if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrDigest) {
			t.Fatalf("prefix of %d of %d bytes: err %v, want truncated", n, len(b), err)
		}
	}
	_, err := Decode(b[:len(b)-1])
	if !errors.Is(err, ErrTruncated) || !strings.Contains(err.Error(), "need") {
		t.Errorf("one byte short: %v", err)
	}
}

func TestModelFileBadInput(t *testing.T) {
	good := encoded(t)
	h0, w0 := parts(t, good)
	cp := func() (map[string]any, []float64) {
		var h map[string]any
		j, _ := json.Marshal(h0)
		json.Unmarshal(j, &h)
		return h, append([]float64(nil), w0...)
	}
	hj, _ := json.Marshal(h0)

	cases := []struct {
		name string
		b    func() []byte
		want error
		msg  string
	}{
		{"empty", func() []byte { return nil }, ErrTruncated, "0 bytes"},
		{"not a model", func() []byte { return []byte("hello") }, ErrNotModel, "without the magic"},
		{"magic", func() []byte { b := bytes.Clone(good); b[0] = 'X'; return b }, ErrNotModel, "magic"},
		{"format version", func() []byte { return raw(2, hj, uint32(len(w0)), w0) }, ErrFormatVersion, "version 2"},
		{"digest", func() []byte { b := bytes.Clone(good); b[len(b)-40] ^= 1; return b }, ErrDigest, "stored"},
		{"digest byte", func() []byte { b := bytes.Clone(good); b[len(b)-1] ^= 1; return b }, ErrDigest, "stored"},
		{"zero header", func() []byte { return raw(1, nil, 0, nil) }, ErrModelFile, "header length 0"},
		{"huge header length", func() []byte {
			b := bytes.Clone(good)
			binary.BigEndian.PutUint32(b[10:], MaxHeaderSize+1)
			return b
		}, ErrModelFile, "header length"},
		{"huge weight count", func() []byte {
			b := bytes.Clone(good)
			binary.BigEndian.PutUint32(b[14:], math.MaxUint32)
			return b
		}, ErrModelFile, "exceeds the limit"},
		{"count longer than file", func() []byte {
			b := bytes.Clone(good)
			binary.BigEndian.PutUint32(b[14:], uint32(len(w0)+1000))
			return b
		}, ErrTruncated, "need"},
		{"header not json", func() []byte { return raw(1, []byte("{nope"), uint32(len(w0)), w0) }, ErrModelFile, "header"},
		{"header trailing", func() []byte { return raw(1, append(bytes.Clone(hj), " {}"...), uint32(len(w0)), w0) }, ErrModelFile, "after the JSON"},
		{"unknown field", func() []byte { h, w := cp(); h["extra"] = 1; return rebuild(t, h, w) }, ErrModelFile, "extra"},
		{"bad arch", func() []byte {
			h, w := cp()
			h["arch"].(map[string]any)["kind"] = "cnn"
			return rebuild(t, h, w)
		}, ErrArch, "cnn"},
		{"arch over limits", func() []byte {
			h, w := cp()
			h["arch"].(map[string]any)["hidden"] = []int{4096, 4096}
			return rebuild(t, h, w)
		}, ErrArch, "parameters"},
		{"tensor shape", func() []byte {
			h, w := cp()
			h["tensors"].([]any)[0].(map[string]any)["shape"] = []int{4, 3}
			return rebuild(t, h, w)
		}, ErrWeights, `"w0" [4 3]`},
		{"tensor name", func() []byte {
			h, w := cp()
			h["tensors"].([]any)[1].(map[string]any)["name"] = "bias"
			return rebuild(t, h, w)
		}, ErrWeights, `"bias"`},
		{"missing tensor", func() []byte {
			h, w := cp()
			h["tensors"] = h["tensors"].([]any)[:3]
			return rebuild(t, h, w)
		}, ErrWeights, "3 tensors"},
		{"weight count", func() []byte { h, w := cp(); return rebuild(t, h, w[:len(w)-1]) }, ErrWeights, "holds 25 weights"},
		{"NaN weight", func() []byte { h, w := cp(); w[12+2] = math.NaN(); return rebuild(t, h, w) }, ErrWeights, `tensor "b0" value 2 is NaN`},
		{"Inf weight", func() []byte { h, w := cp(); w[len(w)-1] = math.Inf(-1); return rebuild(t, h, w) }, ErrWeights, `tensor "b1" value 1 is -Inf`},
		{"schema too short", func() []byte {
			h, w := cp()
			s := h["schema"].(map[string]any)
			s["features"] = s["features"].([]any)[:2]
			return rebuild(t, h, w)
		}, ErrSchema, "2 features, architecture mlp:4 takes 3 inputs"},
		{"schema invalid", func() []byte {
			h, w := cp()
			h["schema"].(map[string]any)["features"].([]any)[1].(map[string]any)["window"] = "0s"
			return rebuild(t, h, w)
		}, ErrSchema, "needs a window"},
		{"negative std", func() []byte {
			h, w := cp()
			h["schema"].(map[string]any)["features"].([]any)[0].(map[string]any)["std"] = -1
			return rebuild(t, h, w)
		}, ErrSchema, "negative std"},
		{"labels count", func() []byte { h, w := cp(); h["labels"] = []string{"a", "b", "c"}; return rebuild(t, h, w) }, ErrModelFile, "3 label names, architecture has 2 classes"},
		{"duplicate label", func() []byte { h, w := cp(); h["labels"] = []string{"a", "a"}; return rebuild(t, h, w) }, ErrModelFile, `label "a" appears twice`},
		{"empty label", func() []byte { h, w := cp(); h["labels"] = []string{"a", ""}; return rebuild(t, h, w) }, ErrModelFile, "label 1 is empty"},
		{"bad name", func() []byte { h, w := cp(); h["name"] = "../etc"; return rebuild(t, h, w) }, ErrModelFile, `name "../etc"`},
		{"empty version", func() []byte { h, w := cp(); h["version"] = ""; return rebuild(t, h, w) }, ErrModelFile, "version"},
		{"accuracy", func() []byte {
			h, w := cp()
			h["training"].(map[string]any)["accuracy"] = 1.5
			return rebuild(t, h, w)
		}, ErrModelFile, "accuracy 1.5"},
		{"no created time", func() []byte {
			h, w := cp()
			delete(h["training"].(map[string]any), "created")
			return rebuild(t, h, w)
		}, ErrModelFile, "creation time"},
		{"trailing bytes", func() []byte { return append(bytes.Clone(good), "garbage"...) }, ErrModelFile, "trailing"},
		{"short signature block", func() []byte { return append(bytes.Clone(good), "EFSG\x02cp"...) }, ErrTruncated, "signature block"},
		{"empty signer", func() []byte { return append(bytes.Clone(good), "EFSG\x00"...) }, ErrModelFile, "empty signer"},
	}
	for _, tc := range cases {
		f, err := Decode(tc.b())
		if !errors.Is(err, tc.want) || f != nil {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
			continue
		}
		if !strings.Contains(err.Error(), tc.msg) || !strings.HasPrefix(err.Error(), "fedlearn: ") {
			t.Errorf("%s: error %q does not say %q", tc.name, err, tc.msg)
		}
	}
}

func TestModelFileEncodeRefusesInvalid(t *testing.T) {
	m := testModel(t)
	m.Weights[0].Data[3] = math.Inf(1)
	if _, err := m.Encode(); !errors.Is(err, ErrWeights) || !strings.Contains(err.Error(), `tensor "w0" value 3 is +Inf`) {
		t.Errorf("Inf weight: %v", err)
	}
	m = testModel(t)
	m.Training.Loss = math.NaN()
	if _, err := m.Encode(); !errors.Is(err, ErrModelFile) {
		t.Errorf("NaN loss: %v", err)
	}
	m = testModel(t)
	m.Labels = m.Labels[:1]
	if _, err := m.Encode(); !errors.Is(err, ErrModelFile) {
		t.Errorf("one label for two classes: %v", err)
	}
}

func TestModelFileSignVerify(t *testing.T) {
	k, err := pqcrypto.NewSigningKey(bytes.Repeat([]byte{1}, 32))
	if err != nil {
		t.Fatal(err)
	}
	other, _ := pqcrypto.NewSigningKey(bytes.Repeat([]byte{2}, 32))
	b := encoded(t)

	if _, err := Verify(b, k.Public()); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("unsigned file: %v, want ErrUnsigned", err)
	}
	sb, err := Sign(b, "controlplane", k)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Verify(sb, k.Public())
	if err != nil {
		t.Fatal(err)
	}
	if f.SignerID != "controlplane" || f.DigestHex() != testModelDigest(t) {
		t.Errorf("verified %q %s", f.SignerID, f.DigestHex())
	}
	d, err := Decode(sb)
	if err != nil || d.SignerID != "controlplane" || len(d.Signature) != pqcrypto.SignatureSize {
		t.Fatalf("decode signed: %v", err)
	}
	if _, err := Verify(sb, other.Public()); !errors.Is(err, ErrBadSignature) || !errors.Is(err, pqcrypto.ErrBadSignature) {
		t.Errorf("wrong key: %v, want ErrBadSignature", err)
	}
	// A flipped signature byte, or a changed signer id, does not verify.
	bad := bytes.Clone(sb)
	bad[len(bad)-100] ^= 1
	if _, err := Verify(bad, k.Public()); !errors.Is(err, ErrBadSignature) {
		t.Errorf("flipped signature byte: %v", err)
	}
	bad = bytes.Clone(sb)
	i := bytes.LastIndex(bad, []byte("controlplane"))
	bad[i] = 'C'
	if _, err := Verify(bad, k.Public()); !errors.Is(err, ErrBadSignature) {
		t.Errorf("changed signer: %v", err)
	}
	// Changed content breaks the digest before the signature is looked at.
	bad = bytes.Clone(sb)
	bad[preludeSize+5] ^= 1
	if _, err := Verify(bad, k.Public()); !errors.Is(err, ErrDigest) {
		t.Errorf("changed content: %v", err)
	}
	// Re-signing replaces the signature; the digest stays.
	sb2, err := Sign(sb, "cp-2", other)
	if err != nil {
		t.Fatal(err)
	}
	if len(sb2) != len(sb)-len("controlplane")+len("cp-2") {
		t.Errorf("re-signed file is %d bytes, want the old signature replaced", len(sb2))
	}
	if f, err := Verify(sb2, other.Public()); err != nil || f.SignerID != "cp-2" {
		t.Errorf("re-signed: %v", err)
	}
	if _, err := Sign(bad, "x", k); !errors.Is(err, ErrDigest) {
		t.Errorf("signing a corrupt file: %v", err)
	}
	if _, err := Sign(b, "", k); !errors.Is(err, ErrModelFile) {
		t.Errorf("empty signer id: %v", err)
	}
}

func testModelDigest(t *testing.T) string {
	m := testModel(t)
	if _, err := m.Encode(); err != nil {
		t.Fatal(err)
	}
	return m.DigestHex()
}

func TestCheckName(t *testing.T) {
	for _, ok := range []string{"a", "occupancy-lr", "wisdm_mlp.64"} {
		if err := CheckName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", "a/b", "a b", "a+b", strings.Repeat("a", 65)} {
		if err := CheckName(bad); !errors.Is(err, ErrModelFile) {
			t.Errorf("%q accepted", bad)
		}
	}
	if err := CheckVersion("1.2.0+r3"); err != nil {
		t.Error(err)
	}
}

// FuzzDecode: Decode never panics, and whatever it accepts encodes again
// and decodes to the same weights.
func FuzzDecode(f *testing.F) {
	good := encoded(f)
	f.Add(good)
	k, _ := pqcrypto.NewSigningKey(bytes.Repeat([]byte{1}, 32))
	if sb, err := Sign(good, "cp", k); err == nil {
		f.Add(sb)
	}
	f.Add(good[:preludeSize+10])
	f.Add([]byte(fileMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			if m != nil {
				t.Fatal("file and error")
			}
			return
		}
		again, err := m.Encode()
		if err != nil {
			t.Fatalf("decoded file does not encode: %v", err)
		}
		m2, err := Decode(again)
		if err != nil {
			t.Fatalf("re-encoded file does not decode: %v", err)
		}
		if m2.Name != m.Name || m2.Version != m.Version || !equalFloats(m2.Weights.Flatten(nil), m.Weights.Flatten(nil)) {
			t.Fatal("re-encoding changed the model")
		}
	})
}

// FuzzDecodeContent fuzzes the header and weights behind a correct digest,
// which random bytes given to FuzzDecode almost never reach.
func FuzzDecodeContent(f *testing.F) {
	good := encoded(f)
	hl := int(binary.BigEndian.Uint32(good[10:]))
	f.Add(good[preludeSize:preludeSize+hl], good[preludeSize+hl:len(good)-digestSize])
	f.Add([]byte(`{"arch":{"kind":"lr","inputs":1,"classes":2}}`), make([]byte, 32))
	f.Fuzz(func(t *testing.T, header, weights []byte) {
		if len(header) > MaxHeaderSize {
			return
		}
		b := []byte(fileMagic)
		b = binary.BigEndian.AppendUint16(b, FormatVersion)
		b = binary.BigEndian.AppendUint32(b, uint32(len(header)))
		b = binary.BigEndian.AppendUint32(b, uint32(len(weights)/8))
		b = append(b, header...)
		b = append(b, weights[:len(weights)/8*8]...)
		sum := sha256.Sum256(b)
		b = append(b, sum[:]...)
		m, err := Decode(b)
		if err != nil {
			return
		}
		if _, err := m.Encode(); err != nil {
			t.Fatalf("decoded file does not encode: %v", err)
		}
	})
}

// wisdmModel is a model of the WISDM MLP's shape (43→64→6).
func wisdmModel(b *testing.B) []byte {
	a, err := ParseArch("mlp:64", 43, 6)
	if err != nil {
		b.Fatal(err)
	}
	m := &File{Name: "wisdm", Version: "1", Arch: a, Weights: InitWeights(a, 1), Labels: []string{"a", "b", "c", "d", "e", "f"},
		Training: Training{Created: time.Unix(0, 0).UTC()}}
	for i := range 43 {
		m.Schema.Features = append(m.Schema.Features, Feature{Name: fmt.Sprintf("f%d", i), Metric: "m", Agg: AggLatest, Std: 1})
	}
	enc, err := m.Encode()
	if err != nil {
		b.Fatal(err)
	}
	return enc
}

func BenchmarkModelFileDecode(b *testing.B) {
	enc := wisdmModel(b)
	b.SetBytes(int64(len(enc)))
	for b.Loop() {
		if _, err := Decode(enc); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkModelFileVerify(b *testing.B) {
	k, _ := pqcrypto.NewSigningKey(bytes.Repeat([]byte{1}, 32))
	signed, err := Sign(wisdmModel(b), "cp", k)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(signed)))
	for b.Loop() {
		if _, err := Verify(signed, k.Public()); err != nil {
			b.Fatal(err)
		}
	}
}
