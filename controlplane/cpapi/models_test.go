package cpapi

import (
	"errors"
	"testing"
)

func TestSelectors(t *testing.T) {
	for _, tc := range []struct {
		in, canonical string
		labels        map[string]string
		match         bool
	}{
		{"site=a", "site=a", map[string]string{"site": "a", "floor": "2"}, true},
		{"site=a", "site=a", map[string]string{"site": "b"}, false},
		{"site=a", "site=a", map[string]string{}, false},
		{" floor=2 , site=a", "floor=2,site=a", map[string]string{"site": "a", "floor": "2"}, true},
		{"floor=2,site=a", "floor=2,site=a", map[string]string{"site": "a", "floor": "3"}, false},
		{"site=", "site=", map[string]string{"site": ""}, true},
		{"site=", "site=", map[string]string{}, false},
	} {
		sel, err := ParseSelector(tc.in)
		if err != nil {
			t.Fatalf("%q: %v", tc.in, err)
		}
		if got := FormatSelector(sel); got != tc.canonical {
			t.Errorf("%q: canonical %q, want %q", tc.in, got, tc.canonical)
		}
		if got := SelectorMatches(sel, tc.labels); got != tc.match {
			t.Errorf("%q on %v: match %v, want %v", tc.in, tc.labels, got, tc.match)
		}
	}
	for _, bad := range []string{"", " ", "site", "=a", "site=a,", "site=a,site=b"} {
		if _, err := ParseSelector(bad); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%q accepted: %v", bad, err)
		}
	}
}

// FuzzParseSelector: a parsed selector prints canonically and parses back
// to the same selector.
func FuzzParseSelector(f *testing.F) {
	for _, s := range []string{"site=a", "b=2,a=1", "k=v=w", "a=,b="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		sel, err := ParseSelector(s)
		if err != nil {
			return
		}
		again, err := ParseSelector(FormatSelector(sel))
		if err != nil {
			t.Fatalf("canonical form %q of %q does not parse: %v", FormatSelector(sel), s, err)
		}
		if FormatSelector(again) != FormatSelector(sel) || !SelectorMatches(sel, again) || !SelectorMatches(again, sel) {
			t.Fatalf("%q: round trip changed the selector", s)
		}
	})
}
