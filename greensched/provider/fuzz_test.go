package provider

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgefleet/edgefleet/greensched"
)

func readTestdata(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join("testdata", name))
}

// addSeeds adds the fixtures and a few broken bodies to the corpus.
func addSeeds(f *testing.F, fixtures ...string) {
	for _, name := range fixtures {
		b, err := readTestdata(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	for _, s := range []string{"", "null", "[]", "{}", "<html>", `{"data":null}`, `[{"time":"x"}]`, `{"forecast":[{"carbonIntensity":-1,"datetime":"2024-06-01T00:00:00Z"}]}`} {
		f.Add([]byte(s))
	}
}

// checkDecoded: a decoder either refuses with a FetchError of a decoding
// reason or returns valid, non-empty points.
func checkDecoded(t *testing.T, pts []greensched.Point, err error) {
	t.Helper()
	if err != nil {
		var fe *FetchError
		if !errors.As(err, &fe) || (fe.Reason != ReasonBadJSON && fe.Reason != ReasonBadData && fe.Reason != ReasonEmpty) {
			t.Fatalf("error %v is not a decoding FetchError", err)
		}
		return
	}
	if len(pts) == 0 {
		t.Fatal("no points and no error")
	}
	if err := (greensched.Series{Zone: "z", Points: pts}).Validate(); err != nil {
		t.Fatal(err)
	}
	for _, p := range pts {
		if p.Time.IsZero() {
			t.Fatalf("zero time in %v", pts)
		}
	}
}

func FuzzDecodeCarbonAwareEmissions(f *testing.F) {
	addSeeds(f, "carbonaware/bylocation.json")
	f.Fuzz(func(t *testing.T, body []byte) {
		pts, err := decodeCarbonAwareEmissions(body)
		checkDecoded(t, pts, err)
	})
}

func FuzzDecodeCarbonAwareForecast(f *testing.F) {
	addSeeds(f, "carbonaware/forecast.json")
	f.Fuzz(func(t *testing.T, body []byte) {
		s, opt, err := decodeCarbonAwareForecast(body)
		checkDecoded(t, s.Points, err)
		if err == nil && s.Step < 0 {
			t.Fatalf("step %v", s.Step)
		}
		if err == nil && len(opt) > 0 {
			checkDecoded(t, opt, nil)
		}
	})
}

func FuzzDecodeElectricityMaps(f *testing.F) {
	addSeeds(f, "electricitymaps/history.json", "electricitymaps/forecast.json")
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, list := range []string{"history", "forecast"} {
			pts, err := decodeElectricityMaps(body, list)
			checkDecoded(t, pts, err)
		}
	})
}

func FuzzDecodeWattTimeData(f *testing.F) {
	addSeeds(f, "watttime/historical.json", "watttime/forecast.json")
	f.Fuzz(func(t *testing.T, body []byte) {
		s, err := decodeWattTimeData(body)
		checkDecoded(t, s.Points, err)
		if err == nil && s.Step < 0 {
			t.Fatalf("step %v", s.Step)
		}
	})
}

func FuzzDecodeWattTimeLogin(f *testing.F) {
	addSeeds(f, "watttime/login.json")
	f.Fuzz(func(t *testing.T, body []byte) {
		tok, err := decodeWattTimeLogin(body)
		if err == nil && tok == "" {
			t.Fatal("empty token accepted")
		}
	})
}
