package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

func TestExitCode(t *testing.T) {
	cases := []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{errors.New("controlplane: GET /v1/agents: 401 Unauthorized: no token"), ExitError},
		{Usagef("bad flag"), ExitUsage},
		{fmt.Errorf("wrapped: %w", Usagef("x")), ExitUsage},
		{errors.New(`unknown command "x" for "edgectl"`), ExitUsage},
		{errors.New(`required flag(s) "role" not set`), ExitUsage},
		{context.Canceled, ExitError},
	}
	for _, c := range cases {
		if got := ExitCode(c.err); got != c.want {
			t.Errorf("ExitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

func testRoot(run func(*cobra.Command, []string) error) *cobra.Command {
	root := &cobra.Command{Use: "tool"}
	group := &cobra.Command{Use: "group", RunE: GroupRunE}
	var n int
	sub := &cobra.Command{Use: "sub ARG", Args: cobra.ExactArgs(1), RunE: run}
	sub.Flags().IntVar(&n, "n", 0, "a number")
	group.AddCommand(sub)
	root.AddCommand(group)
	return root
}

func TestRunExitCodes(t *testing.T) {
	fail := errors.New("server said no")
	run := func(c *cobra.Command, args []string) error {
		if args[0] == "fail" {
			return fail
		}
		fmt.Fprintln(c.OutOrStdout(), "ran", args[0])
		return nil
	}
	cases := []struct {
		args []string
		code int
		out  string
		err  string
	}{
		{[]string{"group", "sub", "x"}, ExitOK, "ran x", ""},
		{[]string{"group", "sub", "fail"}, ExitError, "", "tool: server said no"},
		{[]string{"group", "sub"}, ExitUsage, "", "accepts 1 arg"},
		{[]string{"group", "sub", "x", "--n", "abc"}, ExitUsage, "", "invalid argument"},
		{[]string{"group", "sub", "x", "--bogus"}, ExitUsage, "", "unknown flag"},
		{[]string{"group", "nope"}, ExitUsage, "", `unknown command "nope"`},
		{[]string{"nope"}, ExitUsage, "", "unknown command"},
		{[]string{"group"}, ExitOK, "Usage:", ""},
	}
	for _, c := range cases {
		var out, errb bytes.Buffer
		code := Run(context.Background(), testRoot(run), c.args, &out, &errb)
		if code != c.code || !strings.Contains(out.String(), c.out) || !strings.Contains(errb.String(), c.err) {
			t.Errorf("%v: code %d stdout %q stderr %q; want %d, %q, %q", c.args, code, out.String(), errb.String(), c.code, c.out, c.err)
		}
	}
}

func TestOutputFormat(t *testing.T) {
	for _, c := range []struct {
		o    OutputFlags
		want string
		err  bool
	}{
		{OutputFlags{}, FormatTable, false},
		{OutputFlags{JSON: true}, FormatJSON, false},
		{OutputFlags{Output: "YAML"}, FormatYAML, false},
		{OutputFlags{JSON: true, Output: "json"}, FormatJSON, false},
		{OutputFlags{JSON: true, Output: "yaml"}, "", true},
		{OutputFlags{Output: "xml"}, "", true},
	} {
		got, err := c.o.Format()
		if got != c.want || (err != nil) != c.err {
			t.Errorf("%+v: %q, %v", c.o, got, err)
		}
		if err != nil && ExitCode(err) != ExitUsage {
			t.Errorf("%+v: not a usage error", c.o)
		}
	}
}

func TestPrintYAML(t *testing.T) {
	type rec struct {
		ID     string            `json:"id"`
		When   time.Time         `json:"last_seen"`
		Labels map[string]string `json:"labels"`
		N      int               `json:"n"`
		Text   string            `json:"text"`
	}
	var buf bytes.Buffer
	v := []rec{{ID: "a1", When: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC), Labels: map[string]string{"site": "berlin"}, N: 3, Text: "true"}}
	if err := PrintYAML(&buf, v); err != nil {
		t.Fatal(err)
	}
	want := `- id: a1
  last_seen: "2025-01-02T03:04:05Z"
  labels:
    site: berlin
  n: 3
  text: "true"
`
	if buf.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", buf.String(), want)
	}
}

func TestParseTime(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	good := map[string]time.Time{
		"now":                  now,
		"-1h":                  now.Add(-time.Hour),
		"-2d":                  now.Add(-48 * time.Hour),
		"+30m":                 now.Add(30 * time.Minute),
		"-1d12h":               now.Add(-36 * time.Hour),
		"2025-05-01T00:00:00Z": time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC),
		"2025-05-01":           time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC),
	}
	for in, want := range good {
		got, err := ParseTime(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("ParseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1h", "yesterday", "-", "--1h", "-12h1d", "2025-13-01", "-9999999999w"} {
		if _, err := ParseTime(in, now); err == nil {
			t.Errorf("ParseTime(%q) accepted", in)
		}
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{"450MiB": 450 << 20, "1.5GiB": 3 << 29, "500MB": 500e6, "123": 123, "2K": 2048, "0": 0, "10 B": 10}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1MiB", "1e9", "inf", "NaN", "12 parsecs", "99999999999TiB", "0x10"} {
		if v, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d accepted", in, v)
		}
	}
}

func TestParseLabels(t *testing.T) {
	l, err := ParseLabels([]string{"site=berlin,rack=4", "role=", " zone = a "})
	if err != nil {
		t.Fatal(err)
	}
	if FormatLabels(l) != "rack=4,role=,site=berlin,zone= a" {
		t.Fatalf("labels %v", l)
	}
	for _, in := range [][]string{{"site"}, {"=x"}, {"a=1,a=2"}} {
		if _, err := ParseLabels(in); err == nil {
			t.Errorf("ParseLabels(%q) accepted", in)
		}
	}
}

func TestParseLabelEdits(t *testing.T) {
	set, rm, err := ParseLabelEdits([]string{"site=berlin", "old-", "tier=a=b", "x-y-"})
	if err != nil {
		t.Fatal(err)
	}
	if FormatLabels(set) != "site=berlin,tier=a=b" || strings.Join(rm, ",") != "old,x-y" {
		t.Fatalf("set %v remove %v", set, rm)
	}
	for _, in := range [][]string{nil, {"site"}, {"-"}, {"=v"}, {"a=1", "a-"}, {"a=1", "a=2"}} {
		if _, _, err := ParseLabelEdits(in); err == nil {
			t.Errorf("ParseLabelEdits(%q) accepted", in)
		}
	}
}

func TestAge(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for d, want := range map[time.Duration]string{5 * time.Second: "5s ago", 3 * time.Minute: "3m ago", 5 * time.Hour: "5h ago", 72 * time.Hour: "3d ago", -time.Minute: "1m ahead"} {
		if got := Age(now, now.Add(-d)); got != want {
			t.Errorf("Age(-%v) = %q, want %q", d, got, want)
		}
	}
	if Age(now, time.Time{}) != "never" {
		t.Error("zero time")
	}
}

func FuzzParseTime(f *testing.F) {
	for _, s := range []string{"now", "-1h", "+2d", "-1w2d3h", "2025-01-01T00:00:00Z", "2025-01-01", "-1.5d", "-99999999999999d", "-1d-1h"} {
		f.Add(s)
	}
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseTime(s, now)
		if err != nil {
			return
		}
		if strings.HasPrefix(strings.TrimSpace(s), "-") && got.After(now) {
			t.Fatalf("ParseTime(%q) = %v is after now", s, got)
		}
	})
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"450MiB", "1.5GiB", "500MB", "123", "0", "-1", "1e400", "9223372036854775807"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		if err == nil && (v < 0 || v == math.MaxInt64) {
			t.Fatalf("ParseSize(%q) = %d", s, v)
		}
	})
}

func FuzzParseLabelEdits(f *testing.F) {
	f.Add("site=berlin old- tier=a=b")
	f.Add("a=1 a-")
	f.Add("- = =x")
	f.Fuzz(func(t *testing.T, s string) {
		set, remove, err := ParseLabelEdits(strings.Fields(s))
		if err != nil {
			return
		}
		for _, k := range remove {
			if _, both := set[k]; both || k == "" {
				t.Fatalf("%q: key %q both set and removed, or empty", s, k)
			}
		}
		for k := range set {
			if k == "" {
				t.Fatalf("%q: empty key set", s)
			}
		}
	})
}
