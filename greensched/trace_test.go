package greensched

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestReadTrace(t *testing.T) {
	in := "Time,Carbon Intensity\r\n" +
		"2020-01-01 00:00:00,100.5\r\n" +
		"2020-01-01 00:15:00,101\n" +
		"2020-01-01 00:30:00,102\n" +
		"2020-01-01 01:15:00,103\n" + // 45 minutes: one gap, two missing
		"2020-01-01 01:30:00,0\n"
	s, st, err := ReadTrace(strings.NewReader(in), "DE", nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Zone != "DE" || s.Step != 15*time.Minute || len(s.Points) != 5 {
		t.Fatalf("series %q step %v points %d", s.Zone, s.Step, len(s.Points))
	}
	if st != (TraceStats{Points: 5, Gaps: 1, Missing: 2}) {
		t.Fatalf("stats %+v", st)
	}
	if want := time.Date(2020, 1, 1, 1, 15, 0, 0, time.UTC); !s.Points[3].Time.Equal(want) || s.Points[3].Intensity != 103 {
		t.Fatalf("point 3 %+v", s.Points[3])
	}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestReadTraceRefuses(t *testing.T) {
	const h = "Time,Carbon Intensity\n"
	const ok = "2020-01-01 00:00:00,1\n"
	for _, c := range []struct{ name, in, want string }{
		{"empty", "", "empty"},
		{"header only", h, "no samples"},
		{"wrong header", "time,ci\n" + ok, "line 1: header"},
		{"duplicate", h + ok + ok, "line 3: time 2020-01-01 00:00:00 is the same as"},
		{"unordered", h + ok + "2019-12-31 23:30:00,1\n", "line 3: time 2019-12-31 23:30:00 is before"},
		{"negative", h + ok + "2020-01-01 00:30:00,-1\n", "line 3: intensity -1 is negative"},
		{"nan", h + "2020-01-01 00:00:00,NaN\n", "line 2: intensity \"NaN\" is not finite"},
		{"inf", h + "2020-01-01 00:00:00,+Inf\n", "line 2: intensity \"+Inf\" is not finite"},
		{"non-numeric", h + "2020-01-01 00:00:00,abc\n", "line 2: intensity \"abc\" is not a number"},
		{"empty value", h + "2020-01-01 00:00:00,\n", "line 2: intensity \"\" is not a number"},
		{"iso time", h + "2020-01-01T00:00:00Z,1\n", "line 2: time \"2020-01-01T00:00:00Z\" is not in the format"},
		{"short time", h + "2020-01-01 00:00,1\n", "line 2: time"},
		{"three fields", h + "2020-01-01 00:00:00,1,2\n", "line 2: want 2 fields"},
		{"one field", h + ok + "2020-01-01 00:30:00\n", "line 3: want 2 fields"},
		{"blank line", h + ok + "\n", "line 3: want 2 fields"},
		{"long line", h + strings.Repeat("x", 5000) + "\n", "line 2: longer than"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, _, err := ReadTrace(strings.NewReader(c.in), "X", nil)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "greensched: ") {
				t.Fatalf("err %v, want one containing %q", err, c.want)
			}
		})
	}
}

// FuzzReadTrace: any input is read or refused with an error, never a
// panic; what is read is a valid series whose stats add up.
func FuzzReadTrace(f *testing.F) {
	f.Add([]byte("Time,Carbon Intensity\n2020-01-01 00:00:00,1\n2020-01-01 00:30:00,2.5\n"))
	f.Add([]byte("Time,Carbon Intensity\n2020-01-01 00:00:00,1\n2020-01-01 02:00:00,2\n2020-01-01 02:15:00,3\n"))
	f.Add([]byte("Time,Carbon Intensity\n2020-01-01 00:00:00,NaN\n"))
	f.Add([]byte("Time,Carbon Intensity\n2020-01-01 00:00:00,1\n2020-01-01 00:00:00,1\n"))
	f.Add([]byte("\ufeffTime,Carbon Intensity\r\n2020-02-29 23:45:00,1e3\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, st, err := ReadTrace(strings.NewReader(string(data)), "Z", nil)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "greensched: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatal(err)
		}
		if st.Points != len(s.Points) || st.Points == 0 || st.Gaps < 0 || st.Missing < st.Gaps {
			t.Fatalf("stats %+v for %d points", st, len(s.Points))
		}
		for _, p := range s.Points {
			if math.IsNaN(p.Intensity) || p.Intensity < 0 {
				t.Fatalf("bad point %+v", p)
			}
		}
	})
}

// dataDir returns the shared data directory: $EDGEFLEET_DATA, else
// ../shared/data relative to the repository root.
func dataDir(t testing.TB) string {
	if d := os.Getenv("EDGEFLEET_DATA"); d != "" {
		return d
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(wd, "..", "..", "shared", "data")
}

// readSharedTrace reads one of the shared carbon traces, or skips the test.
func readSharedTrace(t testing.TB, file, zone string) (Series, TraceStats) {
	f, err := os.Open(filepath.Join(dataDir(t), "carbon", file))
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("SKIP: carbon trace %s not found (set EDGEFLEET_DATA to the shared data directory): %v", file, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, st, err := ReadTrace(f, zone, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s, st
}

func TestReadSharedTraces(t *testing.T) {
	for _, c := range []struct {
		file, zone string
		step       time.Duration
	}{
		{"ger_ci_2020.csv", "DE", 15 * time.Minute},
		{"gb_ci_2020.csv", "GB", 30 * time.Minute},
		{"fr_ci_2020.csv", "FR", 30 * time.Minute},
	} {
		s, st := readSharedTrace(t, c.file, c.zone)
		if s.Step != c.step {
			t.Errorf("%s: step %v, want %v", c.file, s.Step, c.step)
		}
		t.Logf("%s: %d points, step %v, %d gaps, %d missing, mean %.1f", c.file, st.Points, s.Step, st.Gaps, st.Missing, s.Mean())
	}
}

func TestMarks(t *testing.T) {
	in := "Time,Carbon Intensity\n2020-01-01 00:00:00,1\n2020-01-01 00:15:00,2\n2020-01-01 00:30:00,3\n2020-01-01 00:45:00,4\n2020-01-01 01:00:00,5\n"
	s, _, err := ReadTrace(strings.NewReader(in), "DE", nil)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.Marks(30 * time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if m.Step != 30*time.Minute || len(m.Points) != 3 || m.Points[0].Intensity != 1 || m.Points[1].Intensity != 3 || m.Points[2].Intensity != 5 {
		t.Fatalf("marks %+v", m)
	}
	if _, err := s.Marks(7 * time.Minute); err == nil {
		t.Fatal("7-minute marks accepted")
	}
}
