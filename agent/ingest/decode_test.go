package ingest

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/clock"
)

// testNow is the fixed receive time of decoder tests.
var testNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newTestDecoder(t testing.TB, lim Limits) *Decoder {
	t.Helper()
	d, err := NewDecoder(lim, clock.NewManual(testNow))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func at(sec float64) time.Time {
	return time.UnixMicro(int64(math.Round(sec * 1e6))).UTC()
}

var nowS = float64(testNow.Unix())

func TestDecodeSenML(t *testing.T) {
	d := newTestDecoder(t, Limits{})
	bt := "1772366400" // testNow
	cases := []struct {
		name string
		in   string
		want []Reading
		recv bool
	}{
		{"rfc single", `[{"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1,"t":` + bt + `}]`,
			[]Reading{{Metric: "urn:dev:ow:10e2073a01080063", Unit: "Cel", Time: at(nowS), Kind: KindNumber, Value: 23.1}}, false},
		{"base fields and relative time", `[{"bn":"urn:dev:ow:10e2073a0108006:","bt":` + bt + `,"bu":"A","bver":5,"n":"voltage","u":"V","v":120.1},{"n":"current","t":-5,"v":1.2},{"n":"current","t":-4,"v":1.3}]`,
			[]Reading{
				{Metric: "urn:dev:ow:10e2073a0108006:voltage", Unit: "V", Time: at(nowS), Value: 120.1},
				{Metric: "urn:dev:ow:10e2073a0108006:current", Unit: "A", Time: at(nowS - 5), Value: 1.2},
				{Metric: "urn:dev:ow:10e2073a0108006:current", Unit: "A", Time: at(nowS - 4), Value: 1.3},
			}, false},
		{"relative to now", `[{"n":"temp","v":20},{"n":"temp","t":-60,"v":19}]`,
			[]Reading{{Metric: "temp", Time: at(nowS), Value: 20}, {Metric: "temp", Time: at(nowS - 60), Value: 19}}, true},
		{"base value and base sum", `[{"bn":"m","bv":10,"bs":100,"v":1,"s":5,"t":` + bt + `}]`,
			[]Reading{{Metric: "m", Time: at(nowS), Value: 11}, {Metric: "m:sum", Time: at(nowS), Value: 105}}, false},
		{"sum only", `[{"n":"energy","u":"J","s":42,"t":` + bt + `}]`,
			[]Reading{{Metric: "energy:sum", Unit: "J", Time: at(nowS), Value: 42}}, false},
		{"bool string data", `[{"bt":` + bt + `,"n":"door","vb":true},{"n":"closed","vb":false},{"n":"state","vs":"ok \u00e9"},{"n":"blob","vd":"aGVsbG8"}]`,
			[]Reading{
				{Metric: "door", Time: at(nowS), Kind: KindBool, Value: 1},
				{Metric: "closed", Time: at(nowS), Kind: KindBool, Value: 0},
				{Metric: "state", Time: at(nowS), Kind: KindString, Text: "ok é"},
				{Metric: "blob", Time: at(nowS), Kind: KindData, Text: "hello"},
			}, false},
		{"base-only record and unknown field", `[{"bn":"x:","bt":` + bt + `},{"n":"a","v":1,"ut":60,"extra":{"deep":[1,2,{"q":null}]}}]`,
			[]Reading{{Metric: "x:a", Time: at(nowS), Value: 1}}, false},
		{"fractional time and escapes", "\n [ {\"n\":\"t\\u0065mp\", \"t\": " + bt + ".25, \"v\": -1.5e2} ] \t",
			[]Reading{{Metric: "temp", Time: at(nowS + 0.25), Value: -150}}, false},
		{"base time changes", `[{"bt":` + bt + `,"n":"a","v":1},{"bt":1772366300,"n":"a","v":2}]`,
			[]Reading{{Metric: "a", Time: at(nowS), Value: 1}, {Metric: "a", Time: at(nowS - 100), Value: 2}}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, recv, err := d.appendSenML(nil, "dev1", []byte(c.in), testNow)
			if err != nil {
				t.Fatalf("error: %v", err)
			}
			if recv != c.recv {
				t.Errorf("received = %v, want %v", recv, c.recv)
			}
			checkReadings(t, got, c.want)
		})
	}
}

func checkReadings(t *testing.T, got, want []Reading) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d readings %+v, want %d %+v", len(got), got, len(want), want)
	}
	for i := range got {
		w := want[i]
		w.Device = "dev1"
		if got[i] != w {
			t.Errorf("reading %d:\n got %+v\nwant %+v", i, got[i], w)
		}
	}
}

func TestDecodeSenMLErrors(t *testing.T) {
	d := newTestDecoder(t, Limits{MaxRecords: 5, MaxTextLen: 8})
	bt := `"bt":1772366400`
	cases := []struct {
		in     string
		reason Reason
		msg    string
	}{
		{`{"n":"a","v":1}`, ReasonSyntax, "JSON array"},
		{`[]`, ReasonEmpty, "no records"},
		{`[{"bn":"a"}]`, ReasonEmpty, "only base fields"},
		{`[1]`, ReasonSchema, "record is a number"},
		{`[{}]`, ReasonSchema, "empty record"},
		{`[{"n":1,"v":1}]`, ReasonSchema, `field "n": is a number`},
		{`[{"n":"a","v":"1"}]`, ReasonSchema, "want a number"},
		{`[{"n":"a","vb":1}]`, ReasonSchema, "want a boolean"},
		{`[{"n":"a","vb":null}]`, ReasonSchema, "want a boolean"},
		{`[{"n":"a","v":1,"vs":"x"}]`, ReasonSchema, "more than one value"},
		{`[{"n":"a"}]`, ReasonSchema, "neither a value"},
		{`[{"n":"a","v":1,"n":"b"}]`, ReasonSchema, "duplicate field"},
		{`[{"n":"a b","v":1}]`, ReasonName, "holds ' '"},
		{`[{"n":"-a","v":1}]`, ReasonName, "must start"},
		{`[{"v":1}]`, ReasonName, "empty name"},
		{`[{"n":"` + strings.Repeat("a", 300) + `","v":1}]`, ReasonName, "exceeds the limit"},
		{`[{"n":"a","u":"d e","v":1}]`, ReasonName, "unit"},
		{`[{"n":"a","v":1,"x_":2}]`, ReasonUnsupported, "must-understand"},
		{`[{"bver":11,"n":"a","v":1}]`, ReasonUnsupported, "newer than 10"},
		{`[{"bver":1.5,"n":"a","v":1}]`, ReasonSchema, "positive integer"},
		{`[{"n":"a","v":1e400}]`, ReasonNotFinite, "float64"},
		{`[{"n":"a","bv":1.7e308,"v":1.7e308}]`, ReasonNotFinite, "overflows"},
		{`[{"n":"a","v":1,` + bt + `,"t":1e308}]`, ReasonTime, "outside the accepted window"},
		{`[{"n":"a","v":1,"t":1772366400000}]`, ReasonTime, "milliseconds"},
		{`[{"n":"a","v":1,"t":1e9}]`, ReasonTime, "outside"},
		{`[{"n":"a","v":1,"t":-100000000}]`, ReasonTime, "outside"},
		{`[{"n":"a","vs":"123456789"}]`, ReasonValue, "exceeds the limit"},
		{`[{"n":"a","vd":"!!!"}]`, ReasonValue, "base64"},
		{`[{"n":"a","v":1},{"n":"a","v":1},{"n":"a","v":1},{"n":"a","v":1},{"n":"a","v":1},{"n":"a","v":1}]`, ReasonTooMany, "more than 5"},
		{`[{"n":"a","v":1}] x`, ReasonSyntax, "trailing"},
		{`[{"n":"a","v":1}`, ReasonSyntax, "end of input"},
		{`[{"n":"a","v":01}]`, ReasonSyntax, ""},
		{`[{"n":"a","v":NaN}]`, ReasonSchema, "want a number"},
		{"[{\"n\":\"a\x01\",\"v\":1}]", ReasonSyntax, "control character"},
		{"[{\"n\":\"a\xff\",\"v\":1}]", ReasonSyntax, "UTF-8"},
		{`[{"n":"a","v":1,"q":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}]`, ReasonSyntax, "nesting"},
	}
	for _, c := range cases {
		_, _, err := d.appendSenML(nil, "dev1", []byte(c.in), testNow)
		var de *DecodeError
		if !errors.As(err, &de) || !errors.Is(err, ErrInvalidPayload) {
			t.Errorf("%.60s: error %v, want a *DecodeError", c.in, err)
			continue
		}
		if de.Reason != c.reason || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%.60s: got %q (%s), want reason %s containing %q", c.in, err, de.Reason, c.reason, c.msg)
		}
		if !strings.HasPrefix(err.Error(), "ingest: ") {
			t.Errorf("error %q lacks the package prefix", err)
		}
	}
}

func TestDecodeFlat(t *testing.T) {
	d := newTestDecoder(t, Limits{})
	cases := []struct {
		in   string
		want []Reading
		recv bool
	}{
		{`{"temp":21.5,"hum":40}`, []Reading{{Metric: "temp", Time: testNow, Value: 21.5}, {Metric: "hum", Time: testNow, Value: 40}}, true},
		{`{"temp":21.5,"ts":1772366390.5}`, []Reading{{Metric: "temp", Time: at(nowS - 9.5), Value: 21.5}}, false},
		{`{"ts":"2026-03-01T11:59:00.25Z","on":true,"off":false}`, []Reading{
			{Metric: "on", Time: at(nowS - 59.75), Kind: KindBool, Value: 1},
			{Metric: "off", Time: at(nowS - 59.75), Kind: KindBool, Value: 0}}, false},
		{`{"ts":"2026-03-01T13:59:00+02:00","x":-0}`, []Reading{{Metric: "x", Time: at(nowS - 60), Value: 0}}, false},
	}
	for _, c := range cases {
		got, recv, err := d.appendFlat(nil, "dev1", []byte(c.in), testNow)
		if err != nil {
			t.Fatalf("%s: %v", c.in, err)
		}
		if recv != c.recv {
			t.Errorf("%s: received = %v", c.in, recv)
		}
		checkReadings(t, got, c.want)
	}
}

func TestDecodeFlatErrors(t *testing.T) {
	d := newTestDecoder(t, Limits{MaxRecords: 3})
	cases := []struct {
		in     string
		reason Reason
		msg    string
	}{
		{`{}`, ReasonEmpty, "no fields"},
		{`{"ts":1772366400}`, ReasonEmpty, "only"},
		{`{"a":"x"}`, ReasonSchema, `field "a": is a string`},
		{`{"a":{"b":1}}`, ReasonSchema, "an object"},
		{`{"a":[1]}`, ReasonSchema, "an array"},
		{`{"a":null}`, ReasonSchema, "null"},
		{`{"a":1,"a":2}`, ReasonSchema, "duplicate"},
		{`{"ts":1,"ts":2,"a":1}`, ReasonTime, "outside"},
		{`{"a":1,"ts":1772366400,"ts":1772366400}`, ReasonSchema, "duplicate"},
		{`{"a":1,"ts":1772366400000}`, ReasonTime, "milliseconds"},
		{`{"a":1,"ts":"yesterday"}`, ReasonTime, "RFC 3339"},
		{`{"a":1,"ts":true}`, ReasonSchema, "Unix seconds"},
		{`{"a b":1}`, ReasonName, "holds"},
		{`{"a":1e999}`, ReasonNotFinite, "float64"},
		{`{"a":1,"b":2,"c":3,"d":4}`, ReasonTooMany, "more than 3"},
		{`{"a":1,}`, ReasonSyntax, "field name"},
		{`{"a":1`, ReasonSyntax, "end of input"},
		{`{"a":1}{}`, ReasonSyntax, "trailing"},
		{`{"a":tru}`, ReasonSyntax, ""},
	}
	for _, c := range cases {
		_, _, err := d.appendFlat(nil, "dev1", []byte(c.in), testNow)
		var de *DecodeError
		if !errors.As(err, &de) {
			t.Errorf("%s: error %v, want a *DecodeError", c.in, err)
			continue
		}
		if de.Reason != c.reason || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: got %q (%s), want reason %s containing %q", c.in, err, de.Reason, c.reason, c.msg)
		}
	}
}

func TestDecodeSniff(t *testing.T) {
	d := newTestDecoder(t, Limits{MaxPayloadBytes: 64})
	for _, c := range []struct {
		in     string
		reason Reason
	}{
		{"", ReasonEmpty},
		{"  \n", ReasonEmpty},
		{"hello", ReasonSyntax},
		{"\x00\x01\x02", ReasonSyntax},
		{`"x"`, ReasonSyntax},
		{strings.Repeat(" ", 65), ReasonTooLarge},
	} {
		_, err := d.Decode("dev1", []byte(c.in))
		if reasonOf(err) != c.reason {
			t.Errorf("%q: error %v, want reason %s", c.in, err, c.reason)
		}
	}
	rs, err := d.Decode("dev1", []byte(` {"a":1}`))
	if err != nil || len(rs) != 1 {
		t.Fatalf("flat: %v %v", rs, err)
	}
	rs, err = d.Decode("dev1", []byte("\t[{\"n\":\"a\",\"v\":1}]"))
	if err != nil || len(rs) != 1 {
		t.Fatalf("senml: %v %v", rs, err)
	}
	// A decode error leaves the destination slice as it was.
	dst := []Reading{{Metric: "keep"}}
	out, _, err := d.appendDecode(dst, "dev1", []byte(`{"a":1,"b":"x"}`), testNow)
	if err == nil || len(out) != 1 || out[0].Metric != "keep" {
		t.Fatalf("appendDecode on error: %v %+v", err, out)
	}
}

func TestLimitsValidation(t *testing.T) {
	for _, l := range []Limits{{MaxPayloadBytes: -1}, {MaxRecords: -5}, {MaxPast: -time.Second}, {MaxFuture: -1}, {MaxTextLen: 1 << 30}} {
		if _, err := NewDecoder(l, nil); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: error %v, want ErrInvalidConfig", l, err)
		}
	}
}

func TestTopicPattern(t *testing.T) {
	tp, err := ParseTopicPattern("")
	if err != nil {
		t.Fatal(err)
	}
	if tp.Filter() != "devices/+/telemetry" || tp.Topic("d1") != "devices/d1/telemetry" {
		t.Fatalf("filter %q topic %q", tp.Filter(), tp.Topic("d1"))
	}
	for topic, want := range map[string]string{
		"devices/d-1.a_b:c@x/telemetry":                      "d-1.a_b:c@x",
		"devices//telemetry":                                 "",
		"devices/a/b/telemetry":                              "",
		"devices/a/telemetry/x":                              "",
		"devices/a/other":                                    "",
		"other/a/telemetry":                                  "",
		"devices/a b/telemetry":                              "",
		"devices/" + strings.Repeat("x", 129) + "/telemetry": "",
		"devices/a":                                          "",
		"devices/a/":                                         "",
		"":                                                   "",
		"devices/+/telemetry":                                "",
	} {
		got, err := tp.Device(topic)
		if want == "" {
			if reasonOf(err) != ReasonTopic {
				t.Errorf("%q: got %q, %v; want a topic error", topic, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: got %q, %v; want %q", topic, got, err, want)
		}
	}
	custom, err := ParseTopicPattern("site/x/{device_id}")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := custom.Device("site/x/abc"); err != nil || got != "abc" || custom.Filter() != "site/x/+" {
		t.Fatalf("custom: %q %v %q", got, err, custom.Filter())
	}
	for _, bad := range []string{"devices/telemetry", "a/{device_id}/{device_id}", "a/#/{device_id}", "a/+/{device_id}", "{device_id}x/y"} {
		if _, err := ParseTopicPattern(bad); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("pattern %q: error %v", bad, err)
		}
	}
}

func TestCountElements(t *testing.T) {
	for _, c := range []struct {
		in       string
		limit, n int
	}{
		{`]`, 10, 0},
		{` ] `, 10, 0},
		{`1]`, 10, 1},
		{`1, 2 ,3]`, 10, 3},
		{`{"a":[1,2,{"b":3}]},{"c":"x,]\"[,"}]`, 10, 2},
		{`"\\",1]`, 10, 2},
		{`1,2,3,4,5]`, 2, 3}, // stops past the limit
		{`1,2`, 10, 2},       // no closing bracket
	} {
		if n := countElements([]byte(c.in), c.limit); n != c.n {
			t.Errorf("%q (limit %d): %d, want %d", c.in, c.limit, n, c.n)
		}
	}
	// A long pack within the limit decodes; one beyond it is refused
	// before decoding, whatever its records hold.
	d := newTestDecoder(t, Limits{MaxRecords: 3})
	long := `[{"n":"` + strings.Repeat("a", 50) + `","vs":"x,],\"[,"},{"n":"b","v":1},{"n":"c","v":2}]`
	if rs, _, err := d.appendSenML(nil, "dev1", []byte(long), testNow); err != nil || len(rs) != 3 {
		t.Fatalf("long pack within the limit: %d readings, %v", len(rs), err)
	}
	huge := `[` + strings.Repeat(`{"n":"b","v":1},`, 3) + `{"n":"bad name","v":1}]`
	if _, _, err := d.appendSenML(nil, "dev1", []byte(huge), testNow); reasonOf(err) != ReasonTooMany {
		t.Fatalf("pack beyond the limit: %v", err)
	}
}
