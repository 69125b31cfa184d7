package cli

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// ParseTime reads a point in time given on the command line: RFC 3339
// ("2025-03-01T12:00:00Z"), a date ("2025-03-01", midnight UTC), "now", or
// an offset from now: a sign followed by a Go duration, where d (days) and
// w (weeks) are also accepted ("-1h", "-90m", "-2d", "+30s").
func ParseTime(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return time.Time{}, errors.New("empty time")
	case strings.EqualFold(s, "now"):
		return now, nil
	case s[0] == '-' || s[0] == '+':
		d, err := ParseDuration(s[1:])
		if err != nil {
			return time.Time{}, fmt.Errorf("time %q: %v", s, err)
		}
		if s[0] == '-' {
			d = -d
		}
		return now.Add(d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("time %q: want RFC 3339 (2006-01-02T15:04:05Z), a date (2006-01-02), \"now\", or an offset such as -1h or -2d", s)
}

// ParseDuration is time.ParseDuration that also accepts the units d (24h)
// and w (7d), alone or combined with others ("1d12h"). Negative durations
// are refused.
func ParseDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, errors.New("empty duration")
	}
	if strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("duration %q is negative", s)
	}
	var total time.Duration
	rest := s
	for {
		i := strings.IndexAny(rest, "dw")
		if i < 0 {
			break
		}
		num := rest[:i]
		// The number is the digits (and dot) right before the unit.
		j := len(num)
		for j > 0 && (unicode.IsDigit(rune(num[j-1])) || num[j-1] == '.') {
			j--
		}
		if j != 0 || num == "" {
			return 0, fmt.Errorf("duration %q: units d and w must come first, as in 1d12h", s)
		}
		v, err := strconv.ParseFloat(num, 64)
		if err != nil {
			return 0, fmt.Errorf("duration %q: %v", s, err)
		}
		unit := 24 * time.Hour
		if rest[i] == 'w' {
			unit *= 7
		}
		f := v * float64(unit)
		if f > math.MaxInt64/2 {
			return 0, fmt.Errorf("duration %q is too long", s)
		}
		total += time.Duration(f)
		if total > math.MaxInt64/2 {
			return 0, fmt.Errorf("duration %q is too long", s)
		}
		rest = rest[i+1:]
	}
	if rest != "" {
		d, err := time.ParseDuration(rest)
		if err != nil {
			return 0, fmt.Errorf("duration %q: %v", s, strings.TrimPrefix(err.Error(), "time: "))
		}
		if d < 0 {
			return 0, fmt.Errorf("duration %q is negative", s)
		}
		if total > math.MaxInt64/2 || d > math.MaxInt64/2 {
			return 0, fmt.Errorf("duration %q is too long", s)
		}
		total += d
	}
	return total, nil
}

// sizeUnits are the suffixes ParseSize accepts, longest first.
var sizeUnits = []struct {
	suffix string
	mult   float64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
	{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

// ParseSize reads a byte count: a number with an optional unit (B, KiB,
// MiB, GiB, TiB in powers of 1024; KB, MB, GB, TB in powers of 1000; K, M,
// G, T as the binary units), e.g. "450MiB", "1.5GiB", "500000000".
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	mult := 1.0
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || t == "" || strings.ContainsAny(t, "eEinfINFxX") {
		return 0, fmt.Errorf("size %q: want a number with an optional unit such as 450MiB or 2GB", s)
	}
	b := v * mult
	if b < 0 || b >= math.MaxInt64 || math.IsNaN(b) {
		return 0, fmt.Errorf("size %q is out of range", s)
	}
	return int64(b), nil
}

// ParseLabels reads labels given as "k=v" items, each item possibly a
// comma-separated list ("site=berlin,rack=4"). Keys must be non-empty; a
// key given twice with different values is an error.
func ParseLabels(items []string) (map[string]string, error) {
	out := map[string]string{}
	for _, item := range items {
		for _, kv := range strings.Split(item, ",") {
			kv = strings.TrimSpace(kv)
			if kv == "" {
				continue
			}
			k, v, ok := strings.Cut(kv, "=")
			k = strings.TrimSpace(k)
			if !ok || k == "" {
				return nil, fmt.Errorf("label %q: want key=value", kv)
			}
			if old, dup := out[k]; dup && old != v {
				return nil, fmt.Errorf("label %q given twice (%q and %q)", k, old, v)
			}
			out[k] = v
		}
	}
	return out, nil
}

// ParseLabelEdits reads label changes in the kubectl style: "k=v" sets k,
// "k-" removes it. Setting and removing the same key, or setting it to two
// values, is an error; at least one change is required.
func ParseLabelEdits(args []string) (set map[string]string, remove []string, err error) {
	set = map[string]string{}
	removed := map[string]bool{}
	for _, a := range args {
		if k, v, ok := strings.Cut(a, "="); ok {
			if k == "" {
				return nil, nil, fmt.Errorf("label change %q: empty key", a)
			}
			if old, dup := set[k]; dup && old != v {
				return nil, nil, fmt.Errorf("label %q set twice (%q and %q)", k, old, v)
			}
			set[k] = v
			continue
		}
		k, ok := strings.CutSuffix(a, "-")
		if !ok || k == "" {
			return nil, nil, fmt.Errorf("label change %q: want key=value to set or key- to remove", a)
		}
		removed[k] = true
	}
	for k := range removed {
		if _, both := set[k]; both {
			return nil, nil, fmt.Errorf("label %q is both set and removed", k)
		}
		remove = append(remove, k)
	}
	if len(set) == 0 && len(remove) == 0 {
		return nil, nil, errors.New("no label changes given (key=value sets, key- removes)")
	}
	sort.Strings(remove)
	return set, remove, nil
}

// SplitList splits comma-separated items and drops empty ones.
func SplitList(items []string) []string {
	var out []string
	for _, item := range items {
		for _, s := range strings.Split(item, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// Age renders how long ago t was, coarsely ("42s", "5m", "3h", "2d"), or
// "never" for the zero time.
func Age(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	suffix := " ago"
	if d < 0 {
		d, suffix = -d, " ahead"
	}
	var s string
	switch {
	case d < time.Minute:
		s = fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		s = fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%dh", int(d.Hours()))
	default:
		s = fmt.Sprintf("%dd", int(d.Hours()/24))
	}
	return s + suffix
}

// FormatLabels renders labels as sorted "k=v,k2=v2" ("-" when empty).
func FormatLabels(l map[string]string) string {
	if len(l) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + l[k]
	}
	return strings.Join(parts, ",")
}
