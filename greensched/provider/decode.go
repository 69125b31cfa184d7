package provider

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/edgefleet/edgefleet/greensched"
)

// badJSON and badData wrap decoder errors.
func badJSON(format string, args ...any) error {
	return &FetchError{Reason: ReasonBadJSON, Err: fmt.Errorf(format, args...)}
}

func badData(format string, args ...any) error {
	return &FetchError{Reason: ReasonBadData, Err: fmt.Errorf(format, args...)}
}

func errEmpty(what string) error {
	return &FetchError{Reason: ReasonEmpty, Err: errors.New(what)}
}

// parseTime parses an RFC 3339 time of a provider's answer; field names
// the value in the error.
func parseTime(field, s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, badData("%s: time %q is not RFC 3339", field, s)
	}
	return t.UTC(), nil
}

// checkValue refuses an intensity that is not finite and non-negative.
func checkValue(field string, v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return badData("%s: intensity %v is not a finite non-negative number", field, v)
	}
	return nil
}

// toPoints converts n elements of a provider's list into ordered points.
// at returns element i's time (RFC 3339) and value (nil: missing); a
// missing value is skipped when skipNull, else refused. Values are
// multiplied by scale (a unit conversion).
func toPoints(list, timeField, valueField string, n int, at func(i int) (string, *float64), skipNull bool, scale float64) ([]greensched.Point, error) {
	pts := make([]greensched.Point, 0, n)
	for i := range n {
		field := fmt.Sprintf("%s[%d]", list, i)
		ts, v := at(i)
		t, err := parseTime(field+"."+timeField, ts)
		if err != nil {
			return nil, err
		}
		if v == nil {
			if skipNull {
				continue
			}
			return nil, badData("%s.%s missing", field, valueField)
		}
		if err := checkValue(field+"."+valueField, *v); err != nil {
			return nil, err
		}
		pts = append(pts, greensched.Point{Time: t, Intensity: *v * scale})
	}
	return ordered(pts)
}

// ordered sorts pts by time and refuses two points at one time.
func ordered(pts []greensched.Point) ([]greensched.Point, error) {
	sort.SliceStable(pts, func(i, j int) bool { return pts[i].Time.Before(pts[j].Time) })
	for i := 1; i < len(pts); i++ {
		if pts[i].Time.Equal(pts[i-1].Time) {
			return nil, badData("two points at %s", pts[i].Time.Format(time.RFC3339))
		}
	}
	return pts, nil
}

// latestAtOrBefore returns the last point of pts (ordered) at or before t.
func latestAtOrBefore(pts []greensched.Point, t time.Time) (greensched.Point, bool) {
	for i := len(pts) - 1; i >= 0; i-- {
		if !pts[i].Time.After(t) {
			return pts[i], true
		}
	}
	return greensched.Point{}, false
}

// latestOf returns the last point of pts (ordered) at or before now.
func latestOf(pts []greensched.Point, now time.Time) (greensched.Point, error) {
	p, ok := latestAtOrBefore(pts, now)
	if !ok {
		return p, errEmpty("no point at or before " + rfc3339(now))
	}
	return p, nil
}

// inForce returns the point of s in force at t: the last at or before t,
// provided t is before the end of the series (its last point plus Step).
func inForce(s greensched.Series, t time.Time) (greensched.Point, bool) {
	p, ok := latestAtOrBefore(s.Points, t)
	if !ok {
		return p, false
	}
	if last := s.Points[len(s.Points)-1]; p == last && !t.Before(last.Time.Add(s.Step)) {
		return greensched.Point{}, false
	}
	return p, true
}
