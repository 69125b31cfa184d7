package provider

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
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

// TestDecodersRefuse: bodies that are not the documented shape, or carry
// impossible values, are refused with the reason and the field named.
func TestDecodersRefuse(t *testing.T) {
	wt := func(meta, data string) string { return `{"data":[` + data + `],"meta":{` + meta + `}}` }
	const wtPoint = `{"point_time":"2024-06-01T12:00:00+00:00","value":900}`
	for _, c := range []struct {
		name, body string
		decode     func([]byte) error
		reason     string
		want       string
	}{
		{"trailing data", string(readFixture(t, "watttime/forecast.json")) + "{}", decodeWT, ReasonBadJSON, "data after the JSON value"},
		{"wt unit", wt(`"units":"kg_co2_per_mwh"`, wtPoint), decodeWT, ReasonBadData, `meta.units "kg_co2_per_mwh"`},
		{"wt signal", wt(`"signal_type":"health_damage"`, wtPoint), decodeWT, ReasonBadData, `meta.signal_type "health_damage"`},
		{"wt period", wt(`"data_point_period_seconds":-5`, wtPoint), decodeWT, ReasonBadData, "data_point_period_seconds"},
		{"wt time", wt(``, `{"point_time":"2024-06-01 12:00","value":1}`), decodeWT, ReasonBadData, "data[0].point_time"},
		{"wt no value", wt(``, `{"point_time":"2024-06-01T12:00:00Z"}`), decodeWT, ReasonBadData, "data[0].value missing"},
		{"wt duplicate", wt(``, wtPoint+","+wtPoint), decodeWT, ReasonBadData, "two points at"},
		{"wt empty", wt(`"units":"lbs_co2_per_mwh"`, ``), decodeWT, ReasonEmpty, "empty data"},
		{"em all null", `{"zone":"DE","history":[{"carbonIntensity":null,"datetime":"2024-06-01T12:00:00Z"}]}`, decodeEMHistory, ReasonEmpty, "no history point"},
		{"em negative", `{"zone":"DE","history":[{"carbonIntensity":-4,"datetime":"2024-06-01T12:00:00Z"}]}`, decodeEMHistory, ReasonBadData, "history[0].carbonIntensity"},
		{"em string", `{"zone":"DE","history":[{"carbonIntensity":"12","datetime":"2024-06-01T12:00:00Z"}]}`, decodeEMHistory, ReasonBadJSON, "electricity maps history"},
		{"ca two", `[{"forecastData":[]},{"forecastData":[]}]`, decodeCAForecast, ReasonBadData, "2 forecasts"},
		{"ca rating", `[{"location":"x","time":"2024-06-01T12:00:00Z"}]`, decodeCAEmissions, ReasonBadData, "emissions[0].rating missing"},
		{"ca object", `{"location":"x"}`, decodeCAEmissions, ReasonBadJSON, "carbon aware emissions"},
		{"login", `{"token":""}`, func(b []byte) error { _, err := decodeWattTimeLogin(b); return err }, ReasonBadData, "no token"},
	} {
		err := c.decode([]byte(c.body))
		var fe *FetchError
		if !errors.As(err, &fe) || fe.Reason != c.reason || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want reason %s and %q", c.name, err, c.reason, c.want)
		}
	}
}

func decodeWT(b []byte) error { _, err := decodeWattTimeData(b); return err }

func decodeEMHistory(b []byte) error { _, err := decodeElectricityMaps(b, "history"); return err }

func decodeCAForecast(b []byte) error { _, _, err := decodeCarbonAwareForecast(b); return err }

func decodeCAEmissions(b []byte) error { _, err := decodeCarbonAwareEmissions(b); return err }
