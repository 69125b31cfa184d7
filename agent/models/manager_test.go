package models

import (
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

func TestInstallPredictAndPersist(t *testing.T) {
	k := signingKey(t, 1)
	dir := t.TempDir()
	mg, _ := newTestManager(t, dir, k, nil)
	f := testFile(t, "1", 1)
	if err := mg.Install(context.Background(), sign(t, f, k)); err != nil {
		t.Fatal(err)
	}
	m, ok := mg.Get("comfort")
	if !ok || m.Version() != "1" || m.Digest() == "" {
		t.Fatalf("serving %v %v", m, ok)
	}
	raw := []float64{24.5, math.NaN(), 900}
	p, err := mg.Predict("comfort", append([]float64(nil), raw...))
	if err != nil {
		t.Fatal(err)
	}
	wc, wp := forwardOf(t, f, raw)
	if p.Class != wc || p.Label != f.Labels[wc] || !equalProbs(p.Probabilities, wp, 0) {
		t.Fatalf("predict %+v, forward %d %v", p, wc, wp)
	}
	if m.Served() != 1 {
		t.Fatalf("served %d", m.Served())
	}
	// Installing the same file again changes nothing.
	if err := mg.Install(context.Background(), sign(t, f, k)); err != nil {
		t.Fatal(err)
	}
	if m2, _ := mg.Get("comfort"); m2 != m {
		t.Fatal("the same file was installed again as a new model")
	}

	// A new manager over the same directory loads it, verified again.
	mg2, _ := newTestManager(t, dir, k, nil)
	if n, err := mg2.Load(context.Background()); err != nil || n != 1 {
		t.Fatalf("load: %d %v", n, err)
	}
	if m, ok := mg2.Get("comfort"); !ok || m.Version() != "1" {
		t.Fatal("not loaded")
	}
	// Under another key it is refused at load, set aside, not served.
	mg3, reg3 := newTestManager(t, dir, signingKey(t, 2), nil)
	if n, err := mg3.Load(context.Background()); err != nil || n != 0 {
		t.Fatalf("load under another key: %d %v", n, err)
	}
	if got := failures(reg3, mg3, ReasonSignature); got != 1 {
		t.Fatalf("signature failures %v", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "comfort.model.refused")); err != nil {
		t.Fatalf("refused file not set aside: %v", err)
	}
}

func TestInstallRefusedKeepsPrevious(t *testing.T) {
	k := signingKey(t, 1)
	devs := []DeviceMetrics{{Device: "room-1", Metrics: []string{"temperature", "humidity", "co2"}}}
	mg, reg := newTestManager(t, t.TempDir(), k, func(context.Context) ([]DeviceMetrics, error) { return devs, nil })
	v1 := testFile(t, "1", 1)
	if err := mg.Install(context.Background(), sign(t, v1, k)); err != nil {
		t.Fatal(err)
	}
	good := sign(t, testFile(t, "2", 2), k)
	unsigned, err := testFile(t, "2", 2).Encode()
	if err != nil {
		t.Fatal(err)
	}
	otherMetric := testFile(t, "2", 2)
	otherMetric.Schema.Features[1].Metric = "rel_humidity"

	corrupt := append([]byte(nil), good...)
	corrupt[40] ^= 0x01 // in the header: the digest no longer matches
	wrongDigest := append([]byte(nil), good...)
	digestAt := len(good) - (4 + 1 + len("control-plane") + 3309) - 32
	wrongDigest[digestAt] ^= 0xff
	badSig := append([]byte(nil), good...)
	badSig[len(badSig)-10] ^= 0x01

	cases := []struct {
		name, reason, want string
		file               []byte
	}{
		{"truncated", ReasonFormat, "truncated", good[:len(good)/2]},
		{"empty", ReasonFormat, "", nil},
		{"not a model", ReasonFormat, "not a model file", []byte("hello, world: this is not a model")},
		{"corrupted", ReasonDigest, "digest", corrupt},
		{"wrong digest", ReasonDigest, "digest", wrongDigest},
		{"missing signature", ReasonSignature, "not signed", unsigned},
		{"bad signature", ReasonSignature, "signature does not verify", badSig},
		{"other signer", ReasonSignature, "signature does not verify", sign(t, testFile(t, "2", 2), signingKey(t, 9))},
		{"NaN weight", ReasonModel, "NaN", signedWithNaN(t, testFile(t, "2", 2), k)},
		{"schema not matching the devices", ReasonDevices, "rel_humidity", sign(t, otherMetric, k)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := failures(reg, mg, c.reason)
			err := mg.Install(context.Background(), c.file)
			var ie *InstallError
			if !errors.As(err, &ie) || !errors.Is(err, ErrRefused) || ie.Reason != c.reason {
				t.Fatalf("err %v (want reason %s)", err, c.reason)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
			if got := failures(reg, mg, c.reason); got != before+1 {
				t.Fatalf("failures{%s} %v, want %v", c.reason, got, before+1)
			}
			m, ok := mg.Get("comfort")
			if !ok || m.Version() != "1" {
				t.Fatalf("previous version not serving: %s", m.Version())
			}
			if _, err := mg.Predict("comfort", []float64{21, 40, 600}); err != nil {
				t.Fatalf("previous version does not predict: %v", err)
			}
		})
	}
	// Then a good new version replaces it.
	if err := mg.Install(context.Background(), good); err != nil {
		t.Fatal(err)
	}
	if m, _ := mg.Get("comfort"); m.Version() != "2" {
		t.Fatalf("version %s after a good install", m.Version())
	}
}

func TestPredictInputErrors(t *testing.T) {
	k := signingKey(t, 1)
	mg, _ := newTestManager(t, t.TempDir(), k, nil)
	if err := mg.Install(context.Background(), sign(t, testFile(t, "1", 1), k)); err != nil {
		t.Fatal(err)
	}
	if _, err := mg.Predict("nope", []float64{1, 2, 3}); !errors.Is(err, ErrUnknownModel) {
		t.Fatalf("unknown model: %v", err)
	}
	if _, err := mg.Predict("comfort", []float64{1, 2}); !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), "2 features given") {
		t.Fatalf("two features: %v", err)
	}
	if _, err := mg.Predict("comfort", []float64{1, math.Inf(1), 3}); !errors.Is(err, ErrInput) || !strings.Contains(err.Error(), `"hum"`) {
		t.Fatalf("infinite feature: %v", err)
	}
}

func TestNoKeyRefusesAndLoadLeavesFiles(t *testing.T) {
	dir := t.TempDir()
	k := signingKey(t, 1)
	mg, _ := newTestManager(t, dir, k, nil)
	if err := mg.Install(context.Background(), sign(t, testFile(t, "1", 1), k)); err != nil {
		t.Fatal(err)
	}
	nokey, err := New(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := nokey.Install(context.Background(), sign(t, testFile(t, "2", 1), k)); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "enrolled") {
		t.Fatalf("install without a key: %v", err)
	}
	if n, err := nokey.Load(context.Background()); n != 0 || err != nil {
		t.Fatalf("load without a key: %d %v", n, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "comfort.model")); err != nil {
		t.Fatalf("load without a key touched the file: %v", err)
	}
}

// TestRemove: a removed model stops serving, its file (and a refused one)
// is gone, its info gauge too, the runtime is told, and a new manager
// over the directory does not load it. Removing it again is no error.
func TestRemove(t *testing.T) {
	k := signingKey(t, 1)
	dir := t.TempDir()
	mg, reg := newTestManager(t, dir, k, nil)
	var changed [][]*Model
	mg.cfg.Changed = func(s []*Model) { changed = append(changed, s) }
	if err := mg.Install(context.Background(), sign(t, testFile(t, "1", 1), k)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "comfort"+fileExt)
	if err := os.WriteFile(path+refusedExt, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := mg.Remove(context.Background(), "comfort"); err != nil {
		t.Fatal(err)
	}
	if _, ok := mg.Get("comfort"); ok || len(mg.Installed()) != 0 {
		t.Fatal("still serving after Remove")
	}
	for _, p := range []string{path, path + refusedExt} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s still there: %v", p, err)
		}
	}
	if len(changed) != 2 || len(changed[1]) != 0 {
		t.Fatalf("Changed calls %v", changed)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "edgefleet_model_info" && len(mf.GetMetric()) != 0 {
			t.Fatalf("model info still reported: %v", mf.GetMetric())
		}
	}
	if err := mg.Remove(context.Background(), "comfort"); err != nil {
		t.Fatalf("removing again: %v", err)
	}
	if err := mg.Remove(context.Background(), "../x"); err == nil {
		t.Fatal("a bad name was accepted")
	}
	mg2, _ := newTestManager(t, dir, k, nil)
	if n, err := mg2.Load(context.Background()); err != nil || n != 0 {
		t.Fatalf("after Remove a new manager loads %d: %v", n, err)
	}
}

// TestInstallDeletesStaleRefused: a good install of a name whose file was
// refused at an earlier start deletes the refused file.
func TestInstallDeletesStaleRefused(t *testing.T) {
	k := signingKey(t, 1)
	dir := t.TempDir()
	refused := filepath.Join(dir, "comfort"+fileExt+refusedExt)
	if err := os.WriteFile(refused, []byte("corrupt"), 0o600); err != nil {
		t.Fatal(err)
	}
	mg, _ := newTestManager(t, dir, k, nil)
	if err := mg.Install(context.Background(), sign(t, testFile(t, "1", 1), k)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(refused); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stale refused file still there: %v", err)
	}
}

// TestFromControlPlane: a model counts as from the control plane when its
// signature verifies with the control plane's key, not when it verifies
// only with another trusted key.
func TestFromControlPlane(t *testing.T) {
	own, cp := signingKey(t, 1), signingKey(t, 2)
	mg, _ := newTestManager(t, t.TempDir(), own, nil)
	mg.cfg.ControlPlaneKey = func() *pqcrypto.VerifyingKey { return cp.Public() }
	if err := mg.Install(context.Background(), sign(t, testFile(t, "1", 1), own)); err != nil {
		t.Fatal(err)
	}
	if in := mg.Installed(); len(in) != 1 || in[0].FromControlPlane {
		t.Fatalf("a model signed with the agent's own key counts as from the control plane: %+v", in)
	}
	mg.cfg.ControlPlaneKey = func() *pqcrypto.VerifyingKey { return own.Public() }
	if err := mg.Install(context.Background(), sign(t, testFile(t, "2", 1), own)); err != nil {
		t.Fatal(err)
	}
	if in := mg.Installed(); len(in) != 1 || !in[0].FromControlPlane {
		t.Fatalf("a model signed with the control plane's key does not count as from it: %+v", in)
	}
}
