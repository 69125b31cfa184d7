package greensched

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"
)

// TraceTimeLayout is the time format of carbon traces: local wall-clock
// time, no zone ("2020-01-01 01:00:00").
const TraceTimeLayout = "2006-01-02 15:04:05"

// traceHeader is the first line of a carbon trace.
const traceHeader = "Time,Carbon Intensity"

// maxTraceLine bounds one line of a trace.
const maxTraceLine = 4096

// TraceStats describes what ReadTrace read.
type TraceStats struct {
	// Points read.
	Points int `json:"points"`
	// Gaps is the number of places where neighbouring points lie more than
	// one Step apart; Missing is the number of Step-spaced samples those
	// gaps lack (a 45-minute jump in a 15-minute trace: 1 gap, 2 missing).
	Gaps    int `json:"gaps"`
	Missing int `json:"missing"`
}

// ReadTrace reads a carbon-intensity trace in the format of the shared data
// set (../shared/data/carbon): a header "Time,Carbon Intensity", then one
// line per sample, "YYYY-MM-DD HH:MM:SS,<gCO2eq/kWh>". Times are wall-clock
// times of the zone and are returned in loc (nil: UTC) as read, without
// daylight-saving adjustment (the shared traces have none).
//
// Refused, with an error naming the line: a wrong header, a line without
// exactly two fields, a time in another format, a time not after the
// previous one (duplicate or unordered), an intensity that is not a number,
// NaN, infinite or negative, and an empty trace. Gaps (missing samples) are
// accepted: the series skips them and the stats count them. Step is the most
// frequent spacing of neighbouring points (0 for a single point).
func ReadTrace(r io.Reader, zone string, loc *time.Location) (Series, TraceStats, error) {
	if loc == nil {
		loc = time.UTC
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 256), maxTraceLine)
	s := Series{Zone: zone}
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSuffix(sc.Text(), "\r")
		if line == 1 {
			text = strings.TrimPrefix(text, "\ufeff")
			if text != traceHeader {
				return Series{}, TraceStats{}, fmt.Errorf("greensched: trace line 1: header %q, want %q", clip(text), traceHeader)
			}
			continue
		}
		p, err := parseTraceLine(text, loc)
		if err != nil {
			return Series{}, TraceStats{}, fmt.Errorf("greensched: trace line %d: %w", line, err)
		}
		if n := len(s.Points); n > 0 && !p.Time.After(s.Points[n-1].Time) {
			what := "before"
			if p.Time.Equal(s.Points[n-1].Time) {
				what = "the same as"
			}
			return Series{}, TraceStats{}, fmt.Errorf("greensched: trace line %d: time %s is %s the previous line's (times must increase)", line, p.Time.Format(TraceTimeLayout), what)
		}
		s.Points = append(s.Points, p)
	}
	if err := sc.Err(); err != nil {
		if err == bufio.ErrTooLong {
			return Series{}, TraceStats{}, fmt.Errorf("greensched: trace line %d: longer than %d bytes", line+1, maxTraceLine)
		}
		return Series{}, TraceStats{}, fmt.Errorf("greensched: trace: %w", err)
	}
	if line == 0 {
		return Series{}, TraceStats{}, fmt.Errorf("greensched: trace: empty (want the header %q)", traceHeader)
	}
	if len(s.Points) == 0 {
		return Series{}, TraceStats{}, fmt.Errorf("greensched: trace: no samples after the header")
	}
	s.Step = usualStep(s.Points)
	st := TraceStats{Points: len(s.Points)}
	for i := 1; i < len(s.Points); i++ {
		if d := s.Points[i].Time.Sub(s.Points[i-1].Time); d > s.Step {
			st.Gaps++
			st.Missing += int((d - 1) / s.Step)
		}
	}
	return s, st, nil
}

func parseTraceLine(text string, loc *time.Location) (Point, error) {
	ts, val, ok := strings.Cut(text, ",")
	if !ok || strings.Contains(val, ",") {
		return Point{}, fmt.Errorf("want 2 fields \"time,intensity\", got %q", clip(text))
	}
	t, err := time.ParseInLocation(TraceTimeLayout, ts, loc)
	if err != nil {
		return Point{}, fmt.Errorf("time %q is not in the format YYYY-MM-DD HH:MM:SS", clip(ts))
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
	if err != nil {
		return Point{}, fmt.Errorf("intensity %q is not a number", clip(val))
	}
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return Point{}, fmt.Errorf("intensity %q is not finite", clip(val))
	}
	if v < 0 {
		return Point{}, fmt.Errorf("intensity %v is negative", v)
	}
	return Point{Time: t, Intensity: v}, nil
}

// usualStep is the most frequent spacing of neighbouring points (the
// smaller one on a tie; 0 for fewer than two points).
func usualStep(ps []Point) time.Duration {
	counts := map[time.Duration]int{}
	var best time.Duration
	for i := 1; i < len(ps); i++ {
		d := ps[i].Time.Sub(ps[i-1].Time)
		counts[d]++
		if c := counts[d]; best == 0 || c > counts[best] || (c == counts[best] && d < best) {
			best = d
		}
	}
	return best
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
