package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/clientconfig"
)

// fakeAgentAPI serves the device endpoints of the agent's local API
// (GET /v1/devices, GET /v1/devices/{id}, POST /v1/devices/{id}/commands,
// GET and DELETE /v1/dead-letters) from memory, with the JSON shapes the
// agent uses, and records what it was asked.
type fakeAgentAPI struct {
	mu          sync.Mutex
	devices     []agentapi.DeviceRecord
	deadLetters []ingest.DeadLetter
	// pageCap caps a dead-letter page below the requested limit, so
	// paging is exercised.
	pageCap int
	// commandsDown answers commands with 503, as an agent without ingestion.
	commandsDown bool
	commands     []sentCommand
	purges       []url.Values
	requests     []string
	srv          *httptest.Server
}

type sentCommand struct {
	device  string
	payload []byte
}

func newFakeAgentAPI(t *testing.T) *fakeAgentAPI {
	f := &fakeAgentAPI{pageCap: 1000}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/devices", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		devs := slices.Clone(f.devices)
		if devs == nil {
			devs = []agentapi.DeviceRecord{}
		}
		fakeJSON(w, http.StatusOK, map[string]any{"devices": devs})
	})
	mux.HandleFunc("GET /v1/devices/{id}", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, d := range f.devices {
			if d.ID == r.PathValue("id") {
				fakeJSON(w, http.StatusOK, d)
				return
			}
		}
		fakeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("agent: device %q not found", r.PathValue("id"))})
	})
	mux.HandleFunc("POST /v1/devices/{id}/commands", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.commandsDown {
			fakeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "agent: ingestion is disabled"})
			return
		}
		body, _ := io.ReadAll(io.LimitReader(r.Body, maxCommandBytes+1))
		if len(body) == 0 || len(body) > maxCommandBytes {
			fakeJSON(w, http.StatusBadRequest, map[string]string{"error": "agent: command payload must be 1 to 65536 bytes"})
			return
		}
		id := r.PathValue("id")
		f.commands = append(f.commands, sentCommand{device: id, payload: body})
		fakeJSON(w, http.StatusAccepted, map[string]any{"device": id, "topic": "devices/" + id + "/commands", "bytes": len(body)})
	})
	mux.HandleFunc("GET /v1/dead-letters", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.requests = append(f.requests, r.URL.RawQuery)
		q := r.URL.Query()
		after, _ := strconv.ParseInt(q.Get("after"), 10, 64)
		limit, _ := strconv.Atoi(q.Get("limit"))
		if limit <= 0 {
			limit = 100
		}
		limit = min(limit, f.pageCap)
		page := ingest.DeadLetterPage{Items: []ingest.DeadLetter{}}
		for _, dl := range f.deadLetters {
			if dl.ID <= after || (q.Get("reason") != "" && string(dl.Reason) != q.Get("reason")) {
				continue
			}
			if len(page.Items) == limit {
				page.Next = page.Items[len(page.Items)-1].ID
				break
			}
			page.Items = append(page.Items, dl)
		}
		fakeJSON(w, http.StatusOK, page)
	})
	mux.HandleFunc("DELETE /v1/dead-letters", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		q := r.URL.Query()
		f.purges = append(f.purges, q)
		if len(q) == 0 {
			fakeJSON(w, http.StatusBadRequest, map[string]string{"error": "agent: a purge needs a selector"})
			return
		}
		fakeJSON(w, http.StatusOK, map[string]int{"purged": 3})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fakeJSON(w, http.StatusNotFound, map[string]string{"error": "no route for " + r.Method + " " + r.URL.Path})
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func fakeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// devicesEnv is edgectl without a control plane, with a fixed clock.
type devicesEnv struct {
	*testEnv
	now time.Time
}

func newDevicesEnv(t *testing.T) *devicesEnv {
	return &devicesEnv{testEnv: bareEnv(t), now: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (e *devicesEnv) runIn(stdin io.Reader, args ...string) result {
	e.t.Helper()
	a := e.app()
	a.now = func() time.Time { return e.now }
	root := newRootFor(a)
	if stdin != nil {
		root.SetIn(stdin)
	}
	var out, errb bytes.Buffer
	code := cli.Run(context.Background(), root, args, &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func (e *devicesEnv) run(args ...string) result { e.t.Helper(); return e.runIn(nil, args...) }

func (e *devicesEnv) must(args ...string) string {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("edgectl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func testDevices(now time.Time) []agentapi.DeviceRecord {
	return []agentapi.DeviceRecord{
		{ID: "room-1", Agent: "gw-a", FirstSeen: now.Add(-2 * time.Hour), LastSeen: now.Add(-5 * time.Second), Messages: 7200, Readings: 21600, Rate: 1,
			LastValues: map[string]float64{"temperature": 21.5, "co2": 412, "humidity": 31.25}, Updated: now.Add(-5 * time.Second)},
		{ID: "room-2", Agent: "gw-b", FirstSeen: now.Add(-time.Hour), LastSeen: now.Add(-3 * time.Minute), Messages: 1, Readings: 1,
			LastValues: map[string]float64{}, Updated: now.Add(-3 * time.Minute)},
	}
}

func TestDevicesListAndShow(t *testing.T) {
	e := newDevicesEnv(t)
	f := newFakeAgentAPI(t)
	agent := "--agent=" + f.srv.URL

	if out := e.must("devices", "list", agent); out != "No devices.\n" {
		t.Fatalf("empty table: %q", out)
	}
	if out := e.must("devices", "list", agent, "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("empty json: %q", out)
	}

	f.devices = testDevices(e.now)
	// The agent sorts by id; edgectl keeps that order whatever it gets.
	f.devices[0], f.devices[1] = f.devices[1], f.devices[0]
	out := e.must("devices", "list", agent)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(lines[0], "LAST VALUES") {
		t.Fatalf("table:\n%s", out)
	}
	for _, want := range []string{"room-1", "gw-a", "5s", "7200", "21600", "1/s", "co2=412 humidity=31.25 temperature=21.5"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("row 1 lacks %q:\n%s", want, out)
		}
	}
	if !strings.HasPrefix(lines[2], "room-2") || !strings.Contains(lines[2], "3m") {
		t.Errorf("row 2:\n%s", out)
	}

	got := decodeJSON[[]agentapi.DeviceRecord](t, e.must("devices", "list", agent, "--json"))
	if len(got) != 2 || got[0].ID != "room-1" || got[0].LastValues["co2"] != 412 || !got[0].LastSeen.Equal(e.now.Add(-5*time.Second)) ||
		got[1].LastValues == nil {
		t.Fatalf("json: %+v", got)
	}
	var raw []map[string]any
	json.Unmarshal([]byte(e.must("devices", "list", agent, "-o", "json")), &raw)
	for _, k := range []string{"id", "agent", "first_seen", "last_seen", "messages", "readings", "rate", "last_values", "updated"} {
		if _, ok := raw[0][k]; !ok {
			t.Errorf("json lacks %q: %v", k, raw[0])
		}
	}
	y := e.must("devices", "list", agent, "-o", "yaml")
	if !strings.HasPrefix(y, "- id: room-1\n") || !strings.Contains(y, "  last_values:\n    co2: 412\n") {
		t.Fatalf("yaml:\n%s", y)
	}

	out = e.must("devices", "show", "room-1", agent)
	for _, want := range []string{"ID:", "room-1", "Agent:", "gw-a", "Messages:", "7200", "Last values:", "  co2", "412", "temperature", "21.5"} {
		if !strings.Contains(out, want) {
			t.Errorf("show lacks %q:\n%s", want, out)
		}
	}
	one := decodeJSON[agentapi.DeviceRecord](t, e.must("devices", "show", "room-2", agent, "--json"))
	if one.ID != "room-2" || one.Agent != "gw-b" {
		t.Fatalf("show json: %+v", one)
	}
	if y := e.must("devices", "show", "room-2", agent, "-o", "yaml"); !strings.Contains(y, "id: room-2\n") || !strings.Contains(y, "last_values: {}\n") {
		t.Fatalf("show yaml:\n%s", y)
	}

	r := e.run("devices", "show", "nope", agent)
	if r.code != 1 || !strings.Contains(r.stderr, "404") || !strings.Contains(r.stderr, `agent: device "nope" not found`) {
		t.Fatalf("unknown device: %+v", r)
	}
	r = e.run("devices", "show", "a/../b", agent)
	if r.code != 2 || !strings.Contains(r.stderr, "device id") {
		t.Fatalf("bad device id: %+v", r)
	}
	if r := e.run("devices", "show", agent); r.code != 2 {
		t.Fatalf("show without id: %+v", r)
	}
	if r := e.run("devices", "list", agent, "-o", "xml"); r.code != 2 {
		t.Fatalf("bad format: %+v", r)
	}
}

func TestDevicesSend(t *testing.T) {
	e := newDevicesEnv(t)
	f := newFakeAgentAPI(t)
	agent := "--agent=" + f.srv.URL

	out := e.must("devices", "send", "room-1", `{"fan":"on"}`, agent)
	if out != "Sent 12 bytes to devices/room-1/commands (QoS 1).\n" {
		t.Fatalf("send: %q", out)
	}
	stdin := bytes.Repeat([]byte{0, 1, 2, 0xff}, 100)
	r := e.runIn(bytes.NewReader(stdin), "devices", "send", "room-2", "-", agent, "--json")
	if r.code != 0 {
		t.Fatalf("send from stdin: %+v", r)
	}
	sent := decodeJSON[agentapi.CommandSent](t, r.stdout)
	if sent.Device != "room-2" || sent.Topic != "devices/room-2/commands" || sent.Bytes != 400 {
		t.Fatalf("send json: %+v", sent)
	}
	if len(f.commands) != 2 || string(f.commands[0].payload) != `{"fan":"on"}` || !bytes.Equal(f.commands[1].payload, stdin) {
		t.Fatalf("commands received: %+v", f.commands)
	}

	for name, tc := range map[string]struct {
		stdin []byte
		args  []string
		msg   string
	}{
		"empty argument":  {nil, []string{"room-1", ""}, "empty"},
		"empty stdin":     {[]byte{}, []string{"room-1", "-"}, "empty"},
		"oversize stdin":  {bytes.Repeat([]byte("x"), maxCommandBytes+1), []string{"room-1", "-"}, "larger than 65536"},
		"bad id":          {nil, []string{"room 1", "x"}, "device id"},
		"missing payload": {nil, []string{"room-1"}, "accepts 2 arg"},
	} {
		r := e.runIn(bytes.NewReader(tc.stdin), append(append([]string{"devices", "send"}, tc.args...), agent)...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.msg) {
			t.Errorf("%s: %+v", name, r)
		}
	}
	if len(f.commands) != 2 {
		t.Fatalf("refused sends reached the agent: %d", len(f.commands))
	}
	// Exactly 64 KiB is accepted.
	if r := e.runIn(bytes.NewReader(bytes.Repeat([]byte("x"), maxCommandBytes)), "devices", "send", "room-1", "-", agent); r.code != 0 {
		t.Fatalf("64 KiB: %+v", r)
	}

	f.commandsDown = true
	r = e.run("devices", "send", "room-1", "x", agent)
	if r.code != 1 || !strings.Contains(r.stderr, "503") || !strings.Contains(r.stderr, "agent: ingestion is disabled") {
		t.Fatalf("ingestion disabled: %+v", r)
	}
}

func testDeadLetters(n int, at time.Time) []ingest.DeadLetter {
	var out []ingest.DeadLetter
	for i := 1; i <= n; i++ {
		dl := ingest.DeadLetter{ID: int64(i), At: at.Add(time.Duration(i) * time.Second), Topic: fmt.Sprintf("devices/dev-%d/telemetry", i%3),
			Reason: ingest.ReasonSyntax, Error: "ingest: syntax: unexpected end of JSON input", Payload: []byte(`{"t":21.5,`)}
		if i%2 == 0 {
			dl.Reason, dl.Error, dl.Payload = ingest.ReasonTime, "ingest: bad_time: time 2100-01-01T00:00:00Z is after the receive time", []byte(`{"t":1,"ts":4102444800}`)
		}
		dl.PayloadSize = len(dl.Payload)
		out = append(out, dl)
	}
	return out
}

func TestDevicesDeadLetters(t *testing.T) {
	e := newDevicesEnv(t)
	f := newFakeAgentAPI(t)
	agent := "--agent=" + f.srv.URL

	if out := e.must("devices", "dead-letters", agent); out != "No dead letters.\n" {
		t.Fatalf("none: %q", out)
	}
	if out := e.must("devices", "dead-letters", "list", agent, "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("none json: %q", out)
	}

	f.deadLetters = testDeadLetters(250, e.now.Add(-time.Hour))
	f.pageCap = 40
	// Default: the first 100, fetched in pages, with a note that more follow.
	r := e.run("devices", "dead-letters", agent)
	if r.code != 0 {
		t.Fatalf("list: %+v", r)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 101 || !strings.HasPrefix(lines[0], "ID") {
		t.Fatalf("table has %d lines:\n%s", len(lines), r.stdout)
	}
	for _, col := range []string{"TIME", "TOPIC", "REASON", "SIZE", "ERROR"} {
		if !strings.Contains(lines[0], col) {
			t.Errorf("header lacks %s: %s", col, lines[0])
		}
	}
	for _, want := range []string{"1 ", "devices/dev-1/telemetry", "syntax", "10 B", "unexpected end of JSON input"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("row lacks %q: %s", want, lines[1])
		}
	}
	if !strings.HasPrefix(lines[100], "100 ") || !strings.Contains(r.stderr, "--after 100") {
		t.Fatalf("last row %q, stderr %q", lines[100], r.stderr)
	}

	// --limit 0 lists all; --after continues.
	all := decodeJSON[[]ingest.DeadLetter](t, e.must("devices", "dead-letters", "list", agent, "--limit", "0", "--json"))
	if len(all) != 250 || all[249].ID != 250 || string(all[0].Payload) != `{"t":21.5,` || all[0].PayloadSize != 10 {
		t.Fatalf("all: %d items, last %+v", len(all), all[len(all)-1])
	}
	rest := decodeJSON[[]ingest.DeadLetter](t, e.must("devices", "dead-letters", agent, "--after", "240", "-o", "json"))
	if len(rest) != 10 || rest[0].ID != 241 {
		t.Fatalf("after 240: %+v", rest)
	}
	// --reason is passed on.
	f.requests = nil
	odd := decodeJSON[[]ingest.DeadLetter](t, e.must("devices", "dead-letters", agent, "--reason", "bad_time", "--limit", "5", "--json"))
	if len(odd) != 5 || odd[0].Reason != ingest.ReasonTime || !strings.Contains(f.requests[0], "reason=bad_time") || !strings.Contains(f.requests[0], "limit=5") {
		t.Fatalf("reason: %+v, requests %v", odd, f.requests)
	}
	if y := e.must("devices", "dead-letters", agent, "--limit", "1", "-o", "yaml"); !strings.HasPrefix(y, "- id: 1\n") || !strings.Contains(y, "reason: syntax") {
		t.Fatalf("yaml:\n%s", y)
	}
	if r := e.run("devices", "dead-letters", agent, "--reason", "nope"); r.code != 2 || !strings.Contains(r.stderr, "bad_time") {
		t.Fatalf("unknown reason: %+v", r)
	}
	if r := e.run("devices", "dead-letters", agent, "--limit", "-1"); r.code != 2 {
		t.Fatalf("negative limit: %+v", r)
	}

	// Text from outside is escaped in the table; --show-payload prints
	// text payloads as text and others as a hex dump.
	f.deadLetters = []ingest.DeadLetter{
		{ID: 7, At: e.now, Topic: "devices/x\x1b[2J/telemetry", Reason: ingest.ReasonTopic, Error: "ingest: bad_topic: device id \"x\\x1b\"", Payload: []byte("line one\nline two"), PayloadSize: 17},
		{ID: 8, At: e.now, Topic: "devices/y/telemetry", Reason: ingest.ReasonSyntax, Error: "ingest: syntax: bad", Payload: []byte{0x8b, 0x1f, 0, 0xff}, PayloadSize: 9000, Truncated: true},
	}
	out := e.must("devices", "dead-letters", agent)
	if strings.Contains(out, "\x1b") || !strings.Contains(out, `devices/x\x1b[2J/telemetry`) {
		t.Fatalf("control characters reached the terminal:\n%q", out)
	}
	out = e.must("devices", "dead-letters", agent, "--show-payload")
	for _, want := range []string{"Dead letter:", "7", "Reason:", "bad_topic", "Payload:\n  line one\n  line two\n",
		"8.8 KiB (the first 4 bytes are kept)", "Payload (binary, hex):\n  00000000  8b 1f 00 ff"} {
		if !strings.Contains(out, want) {
			t.Errorf("--show-payload lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "\x1b") {
		t.Fatalf("control characters reached the terminal:\n%q", out)
	}
}

func TestDevicesDeadLettersPurge(t *testing.T) {
	e := newDevicesEnv(t)
	f := newFakeAgentAPI(t)
	agent := "--agent=" + f.srv.URL

	cases := []struct {
		args []string
		want url.Values
	}{
		{[]string{"--all"}, url.Values{"all": {"true"}}},
		{[]string{"--before", "-1h"}, url.Values{"before": {"2025-03-01T11:00:00Z"}}},
		{[]string{"--before", "2025-02-01T10:00:00+01:00"}, url.Values{"before": {"2025-02-01T09:00:00Z"}}},
		{[]string{"--reason", "syntax"}, url.Values{"reason": {"syntax"}}},
		{[]string{"--id", "12", "--id", "13,14"}, url.Values{"id": {"12", "13", "14"}}},
	}
	for _, c := range cases {
		f.purges = nil
		out := e.must(append([]string{"devices", "dead-letters", "purge", agent}, c.args...)...)
		if out != "Purged 3 dead letters.\n" {
			t.Errorf("%v: %q", c.args, out)
		}
		if len(f.purges) != 1 || fmt.Sprint(f.purges[0]) != fmt.Sprint(c.want) {
			t.Errorf("%v: query %v, want %v", c.args, f.purges, c.want)
		}
	}
	if got := decodeJSON[agentapi.PurgeResult](t, e.must("devices", "dead-letters", "purge", "--all", agent, "--json")); got.Purged != 3 {
		t.Fatalf("json: %+v", got)
	}

	f.purges = nil
	for _, args := range [][]string{
		{},
		{"--all", "--reason", "syntax"},
		{"--before", "-1h", "--id", "3"},
		{"--before", "yesterday"},
		{"--reason", "nope"},
		{"--id", "0"},
		{"--id", "x"},
	} {
		r := e.run(append([]string{"devices", "dead-letters", "purge", agent}, args...)...)
		if r.code != 2 {
			t.Errorf("%v: exit %d, stderr %s", args, r.code, r.stderr)
		}
	}
	if r := e.run("devices", "dead-letters", "purge", agent); !strings.Contains(r.stderr, "exactly one of --all, --before, --reason or --id") {
		t.Errorf("no selector: %s", r.stderr)
	}
	if len(f.purges) != 0 {
		t.Fatalf("refused purges reached the agent: %v", f.purges)
	}
}

func TestDevicesAgentResolutionAndErrors(t *testing.T) {
	e := newDevicesEnv(t)
	f := newFakeAgentAPI(t)
	f.devices = testDevices(e.now)[:1]

	// Nothing listening: a clear error naming the address, exit 1.
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	r := e.run("devices", "list", "--agent", deadURL)
	want := "edgectl: cannot reach agent API at " + deadURL + ": "
	if r.code != 1 || !strings.HasPrefix(r.stderr, want) || !strings.HasSuffix(r.stderr, "connection refused (is edge-agent running? set --agent or EDGEFLEET_AGENT)\n") {
		t.Fatalf("unreachable: %+v", r)
	}
	// An address from a context or the environment is named as such.
	e.vars[clientconfig.EnvAgent] = deadURL
	if r := e.run("devices", "list"); r.code != 1 || !strings.HasSuffix(r.stderr, "(is edge-agent running? set --agent or EDGEFLEET_AGENT) (address from EDGEFLEET_AGENT)\n") {
		t.Fatalf("unreachable from env: %+v", r)
	}

	// EDGEFLEET_AGENT, then a context's agent; the flag beats both.
	e.vars[clientconfig.EnvAgent] = f.srv.URL
	if out := e.must("devices", "list"); !strings.Contains(out, "room-1") {
		t.Fatalf("env: %s", out)
	}
	if r := e.run("devices", "list", "--agent", deadURL); r.code != 1 {
		t.Fatalf("flag over env: %+v", r)
	}
	delete(e.vars, clientconfig.EnvAgent)
	if err := clientconfig.WriteAndSelect(e.configPath, clientconfig.Context{Name: "gw", Agent: f.srv.URL}); err != nil {
		t.Fatal(err)
	}
	if out := e.must("devices", "list"); !strings.Contains(out, "room-1") {
		t.Fatalf("context: %s", out)
	}
	if r := e.run("devices", "list", "--context", "nope"); r.code != 2 || !strings.Contains(r.stderr, "no such context") {
		t.Fatalf("unknown context: %+v", r)
	}
	if r := e.run("devices", "list", "--agent", "ftp://x"); r.code != 2 || !strings.Contains(r.stderr, "--agent") {
		t.Fatalf("bad --agent: %+v", r)
	}

	// Something that is not an agent API.
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, "<html>nothing here</html>")
	}))
	defer other.Close()
	r = e.run("devices", "list", "--agent", other.URL)
	if r.code != 1 || !strings.Contains(r.stderr, "404 Not Found") || !strings.Contains(r.stderr, "an edge-agent's API?") || !strings.Contains(r.stderr, "nothing here") {
		t.Fatalf("not an agent: %+v", r)
	}
	garbled := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"devices": 7}`)
	}))
	defer garbled.Close()
	if r := e.run("devices", "list", "--agent", garbled.URL); r.code != 1 || !strings.Contains(r.stderr, "unexpected answer") {
		t.Fatalf("garbled: %+v", r)
	}

	// An agent that does not answer in time.
	block := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(block)
	if r := e.run("devices", "list", "--agent", slow.URL, "--timeout", "200ms"); r.code != 1 || !strings.Contains(r.stderr, "did not answer within 200ms") {
		t.Fatalf("slow: %+v", r)
	}
}

// TestDevicesAsChildProcess checks the exit codes the shell sees.
func TestDevicesAsChildProcess(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeAgentAPI(t)
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"devices", "list"}, 0},
		{[]string{"devices", "show", "missing"}, 1},
		{[]string{"devices", "dead-letters", "purge"}, 2},
	} {
		cmd := exec.Command(exe, c.args...)
		cmd.Env = append(os.Environ(), envMain+"=1", clientconfig.EnvAgent+"="+f.srv.URL, clientconfig.EnvConfig+"="+filepath.Join(dir, "config.yaml"))
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != c.code {
			t.Errorf("%v: exit %d, want %d", c.args, code, c.code)
		}
	}
}

// FuzzDevicesOutput decodes arbitrary agent answers the way the commands
// do and renders them: nothing panics, and no control character from the
// answer reaches the terminal.
func FuzzDevicesOutput(f *testing.F) {
	f.Add([]byte(`{"devices":[{"id":"room-1","agent":"gw","first_seen":"2025-03-01T10:00:00Z","last_seen":"2025-03-01T11:59:55Z","messages":3,"readings":9,"rate":0.5,"last_values":{"t":21.5},"updated":"2025-03-01T11:59:55Z"}]}`),
		[]byte(`{"items":[{"id":1,"at":"2025-03-01T10:00:00Z","topic":"devices/x/telemetry","reason":"syntax","error":"ingest: syntax","payload":"eyJ0Ijo=","payload_size":4,"truncated":false}],"next":0}`))
	f.Add([]byte(`{"devices":[{"id":"a\u001b[2J\tb","agent":"\u202egw","last_values":{"\u0007":1e308}}]}`),
		[]byte(`{"items":[{"id":-1,"topic":"\u001b]0;x\u0007","error":"\r\n","payload":"G1sySgo=","payload_size":-5,"truncated":true}],"next":-3}`))
	f.Add([]byte(`null`), []byte(`{"items":null}`))
	f.Add([]byte(`{"devices":7}`), []byte(`[`))
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	check := func(t *testing.T, what, out string) {
		for _, r := range out {
			if (r < 0x20 && r != '\n' && r != '\t') || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == '\u202e' {
				t.Fatalf("%s prints control character %U:\n%q", what, r, out)
			}
		}
	}
	f.Fuzz(func(t *testing.T, devicesJSON, pageJSON []byte) {
		var body struct {
			Devices []agentapi.DeviceRecord `json:"devices"`
		}
		if json.Unmarshal(devicesJSON, &body) == nil {
			rows := make([]deviceRow, len(body.Devices))
			for i := range body.Devices {
				normalizeDevice(&body.Devices[i])
				rows[i] = deviceRow{DeviceRecord: body.Devices[i], State: "active"}
			}
			var b strings.Builder
			if err := printDeviceTable(&b, rows, now); err != nil {
				t.Fatal(err)
			}
			check(t, "device table", b.String())
			for _, d := range body.Devices {
				b.Reset()
				if err := printDevice(&b, d, now); err != nil {
					t.Fatal(err)
				}
				check(t, "device", b.String())
			}
		}
		var page agentapi.DeadLetterPage
		if json.Unmarshal(pageJSON, &page) == nil {
			var b strings.Builder
			if err := printDeadLetterTable(&b, page.Items); err != nil {
				t.Fatal(err)
			}
			check(t, "dead-letter table", b.String())
			b.Reset()
			if err := printDeadLettersFull(&b, page.Items); err != nil {
				t.Fatal(err)
			}
			check(t, "dead letters in full", b.String())
		}
		// A payload as raw bytes, too.
		check(t, "payload", formatPayload(devicesJSON))
	})
}
