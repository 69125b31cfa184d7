package localapi

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/agent/models"
	"github.com/edgefleet/edgefleet/internal/modeltest"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// comfortModel is modeltest's comfort model, installed in a manager.
func comfortModel(t testing.TB) *models.Model {
	t.Helper()
	k := modeltest.Key(t, 1)
	mg, err := models.New(models.Config{Dir: t.TempDir(), VerifyingKey: func() *pqcrypto.VerifyingKey { return k.Public() }})
	if err != nil {
		t.Fatal(err)
	}
	if err := mg.Install(context.Background(), modeltest.Sign(t, modeltest.Comfort(t, "1", 1), k)); err != nil {
		t.Fatal(err)
	}
	m, _ := mg.Get("comfort")
	return m
}

func TestParseFeatures(t *testing.T) {
	m := comfortModel(t)
	raw, err := parseFeatures(m, json.RawMessage(`[21.5, null, 1e3]`))
	if err != nil || raw[0] != 21.5 || !math.IsNaN(raw[1]) || raw[2] != 1000 {
		t.Fatalf("array: %v %v", raw, err)
	}
	raw, err = parseFeatures(m, json.RawMessage(`{"co2_mean": 700, "hum": 41, "temp": null}`))
	if err != nil || !math.IsNaN(raw[0]) || raw[1] != 41 || raw[2] != 700 {
		t.Fatalf("object: %v %v", raw, err)
	}
	for in, want := range map[string]string{
		``:                        `no "features"`,
		`[1,2,3,4]`:               "wrong number of features: 4 given",
		`[1,2,-1e400]`:            `"co2_mean" (index 2) is -1e400: not finite`,
		`[1,"Infinity",3]`:        `"hum" (index 1) is Infinity: not finite`,
		`[1,true,3]`:              `"hum" (index 1) is true: want a number or null`,
		`{"temp":1,"hum":2}`:      `"co2_mean" (index 2) is missing`,
		`{"temp":1,"humidity":2}`: `no feature "humidity"`,
		`"1,2,3"`:                 "must be an array or an object",
	} {
		if _, err := parseFeatures(m, json.RawMessage(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", in, err, want)
		}
	}
}

// FuzzParseFeatures: any request body's features parse into as many
// values as the model has features, none infinite, or fail with an
// error; Predict then never fails on them but for ErrInput.
func FuzzParseFeatures(f *testing.F) {
	m := comfortModel(f)
	for _, s := range []string{`[1,2,3]`, `{"temp":1,"hum":null,"co2_mean":3}`, `[1e999,0,0]`, `["NaN",1,2]`, `[`, `{}`, `null`, `[[1],2,3]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		raw, err := parseFeatures(m, b)
		if err != nil {
			return
		}
		if len(raw) != 3 {
			t.Fatalf("%d values", len(raw))
		}
		for _, v := range raw {
			if math.IsInf(v, 0) {
				t.Fatalf("infinite value from %q", b)
			}
		}
		if _, err := m.PredictRaw(raw); err != nil && !errors.Is(err, models.ErrInput) {
			t.Fatal(err)
		}
	})
}
