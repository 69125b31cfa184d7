package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/bench"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/clientconfig"
	"github.com/edgefleet/edgefleet/internal/testutil"
)

// envMain makes the test binary behave as edgectl itself, so that tests can
// run it as a child process (exit codes through os.Exit, the bench's server
// process).
const envMain = "EDGECTL_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envMain) == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

// testEnv is a control plane in a temporary directory and a private
// environment for edgectl (contexts file, EDGEFLEET_* variables).
type testEnv struct {
	t          *testing.T
	dir        string
	srv        *controlplane.Server
	adminToken string
	admin      *cpapi.Client
	configPath string
	vars       map[string]string
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	dir := t.TempDir()
	srv, err := controlplane.New(controlplane.Config{
		DataDir: filepath.Join(dir, "cp"),
		Listen:  "127.0.0.1:0",
		Logger:  cli.Discard(),
		SQLite:  controlplane.SQLiteOptions{Synchronous: "NORMAL"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	tok, err := srv.AdminToken()
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{
		t: t, dir: dir, srv: srv, adminToken: tok,
		configPath: filepath.Join(dir, "home", ".config", "edgefleet", "config.yaml"),
	}
	e.vars = map[string]string{"HOME": filepath.Join(dir, "home"), clientconfig.EnvConfig: e.configPath}
	e.admin = e.client(e.adminToken)
	return e
}

// bareEnv is an edgectl environment without a server, its contexts file in
// a temporary directory.
func bareEnv(t *testing.T) *testEnv {
	dir := t.TempDir()
	e := &testEnv{t: t, dir: dir, configPath: filepath.Join(dir, "config.yaml")}
	e.vars = map[string]string{"HOME": dir, clientconfig.EnvConfig: e.configPath}
	return e
}

func (e *testEnv) client(token string) *cpapi.Client {
	e.t.Helper()
	c, err := cpapi.NewClient(cpapi.ClientConfig{URL: e.srv.URL(), Token: token, CAPEM: e.srv.CAPEM(), Timeout: 20 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.CloseIdleConnections)
	return c
}

func (e *testEnv) app() *app {
	a := newApp()
	a.getenv = func(k string) string { return e.vars[k] }
	return a
}

type result struct {
	code           int
	stdout, stderr string
}

// run executes edgectl in-process.
func (e *testEnv) run(args ...string) result {
	e.t.Helper()
	return e.runWith(context.Background(), nil, args...)
}

func (e *testEnv) runWith(ctx context.Context, stdin io.Reader, args ...string) result {
	e.t.Helper()
	var out, errb bytes.Buffer
	root := newRootFor(e.app())
	if stdin != nil {
		root.SetIn(stdin)
	}
	code := cli.Run(ctx, root, args, &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// must runs edgectl and fails the test unless it exits 0.
func (e *testEnv) must(args ...string) string {
	e.t.Helper()
	r := e.run(args...)
	if r.code != 0 {
		e.t.Fatalf("edgectl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

func (e *testEnv) login() {
	e.t.Helper()
	e.must("login", "--server", e.srv.URL(), "--ca", e.srv.CAPath(), "--token-file", e.srv.AdminTokenPath(), "--name", "test")
}

// enrolled is an agent enrolled through the controlplane client.
type enrolled struct {
	id     string
	client *cpapi.Client
}

func (e *testEnv) enroll(name, enrollmentToken string) enrolled {
	e.t.Helper()
	ctx := context.Background()
	key, csr, err := cpapi.GenerateAgentKey(name)
	if err != nil {
		e.t.Fatal(err)
	}
	resp, err := e.client("").Enroll(ctx, cpapi.EnrollRequest{Token: enrollmentToken, CSR: csr, Name: name, Version: "1.2.3", OS: "linux", Arch: "arm64"})
	if err != nil {
		e.t.Fatalf("enroll: %v", err)
	}
	cert, err := cpapi.AgentCertificate(resp.Certificate, key)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := cpapi.NewClient(cpapi.ClientConfig{URL: e.srv.URL(), CAPEM: []byte(resp.CABundle), Certificate: &cert, Timeout: 20 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(c.CloseIdleConnections)
	if _, err := c.Heartbeat(ctx, cpapi.Heartbeat{Health: &cpapi.Health{Status: "ok"}}); err != nil {
		e.t.Fatalf("heartbeat: %v", err)
	}
	return enrolled{id: resp.AgentID, client: c}
}

func decodeJSON[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
	return v
}

func TestLoginWritesContextAndLaterCommandsNeedNoFlags(t *testing.T) {
	e := newTestEnv(t)

	// Before login there is nothing to connect to.
	r := e.run("agents", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "no control plane server") || !strings.Contains(r.stderr, "edgectl login") {
		t.Fatalf("before login: %+v", r)
	}

	// A wrong token is refused and nothing is written.
	r = e.run("login", "--server", e.srv.URL(), "--ca", e.srv.CAPath(), "--token", "efp_wrong")
	if r.code != 1 || !strings.Contains(r.stderr, "401") || !strings.Contains(r.stderr, "was refused") {
		t.Fatalf("login with a wrong token: %+v", r)
	}
	if _, err := os.Stat(e.configPath); !os.IsNotExist(err) {
		t.Fatalf("failed login wrote %s", e.configPath)
	}
	// Without the CA the server's certificate does not verify.
	r = e.run("login", "--server", e.srv.URL(), "--token-file", e.srv.AdminTokenPath())
	if r.code != 1 || !strings.Contains(r.stderr, "--ca") {
		t.Fatalf("login without CA: %+v", r)
	}
	// Missing server or token is a usage error.
	if r = e.run("login", "--token", "x"); r.code != 2 {
		t.Fatalf("login without server: %+v", r)
	}

	out := e.must("login", "--server", e.srv.URL(), "--ca", e.srv.CAPath(), "--token-file", e.srv.AdminTokenPath(), "--name", "test")
	if !strings.Contains(out, `context "test"`) {
		t.Fatalf("login output: %s", out)
	}
	st, err := os.Stat(e.configPath)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("contexts file mode %04o, want 0600", st.Mode().Perm())
	}
	f, err := clientconfig.Load(e.configPath)
	if err != nil {
		t.Fatal(err)
	}
	c, ok := f.Get("test")
	if !ok || f.CurrentContext != "test" || c.Server != e.srv.URL() || c.Token != e.adminToken || !clientconfig.IsPEM(c.CA) {
		t.Fatalf("contexts file: %+v", f)
	}

	// No flags needed now.
	if out := e.must("agents", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("agents list --json with no agents: %q", out)
	}
	// get-contexts never prints the token.
	out = e.must("config", "get-contexts", "--json")
	if strings.Contains(out, e.adminToken) {
		t.Fatal("get-contexts printed the token")
	}
	views := decodeJSON[[]contextView](t, out)
	if len(views) != 1 || !views[0].Current || views[0].CA != "inline" || !views[0].HasToken {
		t.Fatalf("get-contexts: %+v", views)
	}
	if out := e.must("config", "get-contexts", "-o", "yaml"); !strings.Contains(out, "name: test") {
		t.Fatalf("get-contexts yaml: %s", out)
	}
	if out := e.must("config", "current-context"); strings.TrimSpace(out) != "test" {
		t.Fatalf("current-context: %q", out)
	}

	// A second context, selected by use-context and by --context.
	e.vars[clientconfig.EnvServer] = ""
	if err := clientconfig.WriteAndSelect(e.configPath, clientconfig.Context{Name: "other", Server: "https://127.0.0.1:1", Token: "efp_other"}); err != nil {
		t.Fatal(err)
	}
	if r := e.run("agents", "list"); r.code != 1 || !strings.Contains(r.stderr, "is the control plane running at https://127.0.0.1:1") {
		t.Fatalf("with context other: %+v", r)
	}
	e.must("--context", "test", "agents", "list")
	if r := e.run("--context", "nope", "agents", "list"); r.code != 2 || !strings.Contains(r.stderr, "no such context") {
		t.Fatalf("--context nope: %+v", r)
	}
	if out := e.must("config", "use-context", "test"); !strings.Contains(out, `"test"`) {
		t.Fatalf("use-context: %s", out)
	}
	e.must("agents", "list")
	if r := e.run("config", "use-context", "nope"); r.code != 1 || !strings.Contains(r.stderr, "known: test, other") {
		t.Fatalf("use-context nope: %+v", r)
	}
	e.must("config", "delete-context", "other")

	// Environment beats the context: a token in EDGEFLEET_TOKEN is used
	// (and refused here), and the context's token is not sent to a server
	// named only in the environment.
	e.vars[clientconfig.EnvToken] = "efp_from_env"
	if r := e.run("agents", "list"); r.code != 1 || !strings.Contains(r.stderr, "401") || !strings.Contains(r.stderr, clientconfig.EnvToken) {
		t.Fatalf("env token: %+v", r)
	}
	delete(e.vars, clientconfig.EnvToken)
	e.vars[clientconfig.EnvServer] = "https://localhost:" + strings.Split(e.srv.URL(), ":")[2]
	if r := e.run("agents", "list"); r.code != 1 || !strings.Contains(r.stderr, "no API token") || !strings.Contains(r.stderr, `context "test" is for`) {
		t.Fatalf("env server: %+v", r)
	}
	// Flags beat everything.
	e.must("--server", e.srv.URL(), "agents", "list")
}

func TestUnauthenticatedAndForbidden(t *testing.T) {
	e := newTestEnv(t)
	ca := e.srv.CAPath()
	// No token at all: refused before any request, with what to do.
	r := e.run("--server", e.srv.URL(), "--ca", ca, "agents", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "no API token") || !strings.Contains(r.stderr, "--token") {
		t.Fatalf("no token: %+v", r)
	}
	// Unknown token: the server's 401 with its message and a hint.
	r = e.run("--server", e.srv.URL(), "--ca", ca, "--token", "efp_nope", "agents", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "401 Unauthorized") || !strings.Contains(r.stderr, "unknown API token") {
		t.Fatalf("bad token: %+v", r)
	}
	// Viewer attempting a change: 403.
	viewer, err := e.admin.CreateAPIToken(context.Background(), "v", cpapi.RoleViewer, 0)
	if err != nil {
		t.Fatal(err)
	}
	r = e.run("--server", e.srv.URL(), "--ca", ca, "--token", viewer.Token, "tokens", "create", "--ttl", "1h")
	if r.code != 1 || !strings.Contains(r.stderr, "403") || !strings.Contains(r.stderr, "lacks the role") {
		t.Fatalf("viewer change: %+v", r)
	}
}

func TestTokens(t *testing.T) {
	e := newTestEnv(t)
	e.login()

	// API tokens.
	tok := decodeJSON[cpapi.NewAPIToken](t, e.must("tokens", "create", "--role", "viewer", "--name", "grafana", "--json"))
	if tok.Role != cpapi.RoleViewer || tok.Name != "grafana" || !strings.HasPrefix(tok.Token, "efp_") || tok.ID == "" {
		t.Fatalf("created %+v", tok)
	}
	expiring := decodeJSON[cpapi.NewAPIToken](t, e.must("tokens", "create", "--role", "operator", "--name", "ci", "--ttl", "2d", "-o", "json"))
	if expiring.ExpiresAt == nil || time.Until(*expiring.ExpiresAt) < 47*time.Hour {
		t.Fatalf("--ttl 2d: %+v", expiring)
	}
	out := e.must("tokens", "create", "--role", "admin", "--name", "ops")
	if !strings.Contains(out, "efp_") || !strings.Contains(out, "not shown again") {
		t.Fatalf("human output: %s", out)
	}
	list := decodeJSON[[]cpapi.APIToken](t, e.must("tokens", "list", "--json"))
	if len(list) != 4 { // bootstrap admin + 3
		t.Fatalf("tokens list: %+v", list)
	}
	if out := e.must("tokens", "list"); !strings.Contains(out, "grafana") || !strings.Contains(out, "viewer") || strings.Contains(out, tok.Token) {
		t.Fatalf("tokens list table: %s", out)
	}
	if out := e.must("tokens", "list", "-o", "yaml"); !strings.Contains(out, "role: viewer") {
		t.Fatalf("tokens list yaml: %s", out)
	}
	// The viewer token works until revoked.
	e.must("--token", tok.Token, "agents", "list")
	if out := e.must("tokens", "revoke", tok.ID); !strings.Contains(out, "revoked") {
		t.Fatalf("revoke: %s", out)
	}
	if r := e.run("--token", tok.Token, "agents", "list"); r.code != 1 || !strings.Contains(r.stderr, "401") {
		t.Fatalf("revoked token used: %+v", r)
	}
	list = decodeJSON[[]cpapi.APIToken](t, e.must("tokens", "list", "--json"))
	for _, x := range list {
		if x.ID == tok.ID {
			t.Fatal("revoked token listed without --revoked")
		}
	}
	if out := e.must("tokens", "list", "--revoked"); !strings.Contains(out, "revoked") {
		t.Fatalf("list --revoked: %s", out)
	}
	if r := e.run("tokens", "revoke", tok.ID); r.code != 1 || !strings.Contains(r.stderr, "409") {
		t.Fatalf("second revoke: %+v", r)
	}
	if r := e.run("tokens", "revoke", "tok_missing"); r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Fatalf("revoke unknown: %+v", r)
	}

	// Enrollment tokens, as the README makes them.
	et := decodeJSON[cpapi.NewEnrollmentToken](t, e.must("tokens", "create", "--ttl", "1h", "--labels", "site=berlin", "--json"))
	if et.Labels["site"] != "berlin" || !strings.HasPrefix(et.Token, "efe_") || time.Until(et.ExpiresAt) > time.Hour+time.Minute {
		t.Fatalf("enrollment token: %+v", et)
	}
	several := decodeJSON[[]cpapi.NewEnrollmentToken](t, e.must("tokens", "create", "--count", "3", "--labels", "a=1", "--labels", "b=2", "--json"))
	if len(several) != 3 || several[0].Labels["b"] != "2" {
		t.Fatalf("tokens create --count 3: %+v", several)
	}
	etl := decodeJSON[[]cpapi.EnrollmentToken](t, e.must("tokens", "list", "--enrollment", "--json"))
	if len(etl) != 4 {
		t.Fatalf("tokens list --enrollment: %+v", etl)
	}
	if out := e.must("tokens", "list", "--enrollment"); !strings.Contains(out, "site=berlin") || strings.Contains(out, et.Token) {
		t.Fatalf("tokens list --enrollment table: %s", out)
	}
	// A used token leaves the default listing.
	e.enroll("a1", et.Token)
	etl = decodeJSON[[]cpapi.EnrollmentToken](t, e.must("tokens", "list", "--enrollment", "--json"))
	etAll := decodeJSON[[]cpapi.EnrollmentToken](t, e.must("tokens", "list", "--enrollment", "--all", "--json"))
	if len(etl) != 3 || len(etAll) != 4 {
		t.Fatalf("after enrollment: %d unused, %d all", len(etl), len(etAll))
	}

	// 'enrollment-tokens' is a hidden alias: same tokens, not in the help.
	one := decodeJSON[cpapi.NewEnrollmentToken](t, e.must("enrollment-tokens", "create", "--json"))
	if !strings.HasPrefix(one.Token, "efe_") || time.Until(one.ExpiresAt) > time.Hour+time.Minute {
		t.Fatalf("enrollment-tokens create: %+v", one)
	}
	aliasAll := decodeJSON[[]cpapi.EnrollmentToken](t, e.must("enrollment-tokens", "list", "--all", "--json"))
	etAll = decodeJSON[[]cpapi.EnrollmentToken](t, e.must("tokens", "list", "--enrollment", "--all", "--json"))
	if len(aliasAll) != 5 || !reflect.DeepEqual(aliasAll, etAll) {
		t.Fatalf("enrollment-tokens list --all: %+v, tokens list --enrollment --all: %+v", aliasAll, etAll)
	}
	if help := e.must("--help"); strings.Contains(help, "enrollment-tokens") || !strings.Contains(help, "tokens") {
		t.Fatalf("help lists the hidden alias, or not tokens:\n%s", help)
	}

	// Mixing the two kinds, or saying neither, is a usage error.
	for _, args := range [][]string{
		{"tokens", "create"},
		{"tokens", "create", "--role", "viewer", "--labels", "a=b"},
		{"tokens", "create", "--role", "viewer", "--count", "2"},
		{"tokens", "create", "--name", "x"},
		{"tokens", "create", "--role", "superuser", "--name", "x"},
		{"tokens", "create", "--role", "viewer"},
		{"tokens", "create", "--ttl", "soon"},
		{"tokens", "create", "--ttl", "1h", "--labels", "novalue"},
		{"tokens", "create", "--ttl", "1h", "--count", "0"},
		{"tokens", "list", "--enrollment", "--revoked"},
		{"tokens", "list", "--all"},
		{"enrollment-tokens", "create", "--ttl", "0"},
		{"tokens", "revoke"},
	} {
		if r := e.run(args...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, r.code, r.stderr)
		}
	}
	// Server-side validation reaches the user with its message.
	r := e.run("tokens", "create", "--ttl", "1h", "--labels", "-bad=x")
	if r.code != 1 || !strings.Contains(r.stderr, "400") || !strings.Contains(r.stderr, "label key") {
		t.Fatalf("bad label key: %+v", r)
	}
}

func TestAgents(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	et := decodeJSON[cpapi.NewEnrollmentToken](t, e.must("tokens", "create", "--ttl", "1h", "--labels", "site=berlin,rack=4", "--json"))
	ag := e.enroll("pump-7", et.Token)
	et2 := decodeJSON[cpapi.NewEnrollmentToken](t, e.must("tokens", "create", "--ttl", "1h", "--labels", "site=paris", "--json"))
	e.enroll("pump-8", et2.Token)

	// agents list --json: an array of objects with at least these keys.
	list := decodeJSON[[]map[string]any](t, e.must("agents", "list", "--json"))
	if len(list) != 2 {
		t.Fatalf("agents list: %v", list)
	}
	for _, a := range list {
		for _, k := range []string{"id", "name", "state", "labels", "last_seen"} {
			if _, ok := a[k]; !ok {
				t.Errorf("agent %v lacks %q", a["id"], k)
			}
		}
		if a["state"] != "online" {
			t.Errorf("agent %v state %v, want online", a["id"], a["state"])
		}
		if _, err := time.Parse(time.RFC3339Nano, a["last_seen"].(string)); err != nil {
			t.Errorf("last_seen: %v", err)
		}
	}
	sel := decodeJSON[[]cpapi.Agent](t, e.must("agents", "list", "--selector", "site=berlin", "--json"))
	if len(sel) != 1 || sel[0].ID != ag.id || sel[0].Labels["rack"] != "4" {
		t.Fatalf("--selector site=berlin: %+v", sel)
	}
	if got := decodeJSON[[]cpapi.Agent](t, e.must("agents", "list", "-l", "site=berlin,rack", "--state", "online", "--json")); len(got) != 1 {
		t.Fatalf("selector with presence and state: %+v", got)
	}
	if got := decodeJSON[[]cpapi.Agent](t, e.must("agents", "list", "--state", "offline", "--json")); len(got) != 0 {
		t.Fatalf("--state offline: %+v", got)
	}
	out := e.must("agents", "list")
	if !strings.Contains(out, "pump-7") || !strings.Contains(out, "online") || !strings.Contains(out, "rack=4,site=berlin") || !strings.Contains(out, "linux/arm64") {
		t.Fatalf("agents list table:\n%s", out)
	}
	if out := e.must("agents", "list", "-o", "yaml"); !strings.Contains(out, "- id: ") || !strings.Contains(out, "state: online") {
		t.Fatalf("agents list yaml:\n%s", out)
	}

	// show
	shown := decodeJSON[cpapi.Agent](t, e.must("agents", "show", ag.id, "--json"))
	if shown.ID != ag.id || shown.Name != "pump-7" || shown.Health == nil {
		t.Fatalf("show: %+v", shown)
	}
	if out := e.must("agents", "show", ag.id); !strings.Contains(out, "pump-7") || !strings.Contains(out, "Health:") {
		t.Fatalf("show table:\n%s", out)
	}
	// A database incident in the heartbeat is shown.
	if _, err := ag.client.Heartbeat(context.Background(), cpapi.Heartbeat{Health: &cpapi.Health{Status: "degraded",
		Incidents: []cpapi.DBIncident{{DB: "ingest", File: "/data/ingest.db", QuarantinedAs: "/data/ingest.db.corrupt-20261207T030000Z",
			At: time.Now(), Reason: "database disk image is malformed", Status: "salvaged", SalvagedReadings: 11861, LostReadings: 139}}}}); err != nil {
		t.Fatal(err)
	}
	if out := e.must("agents", "show", ag.id); !strings.Contains(out, "ingest database quarantined as /data/ingest.db.corrupt-20261207T030000Z") ||
		!strings.Contains(out, "11861 readings salvaged, 139 lost") {
		t.Fatalf("show table with an incident:\n%s", out)
	}
	if r := e.run("agents", "show", "agt_missing"); r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Fatalf("show missing: %+v", r)
	}

	// label: set and remove in one call
	labeled := decodeJSON[cpapi.Agent](t, e.must("agents", "label", ag.id, "tier=gold", "rack-", "--json"))
	if labeled.Labels["tier"] != "gold" || labeled.Labels["site"] != "berlin" {
		t.Fatalf("label: %+v", labeled.Labels)
	}
	if _, ok := labeled.Labels["rack"]; ok {
		t.Fatal("rack- did not remove the label")
	}
	if out := e.must("agents", "label", ag.id, "tier-"); !strings.Contains(out, "site=berlin") || strings.Contains(out, "tier") {
		t.Fatalf("label output: %s", out)
	}
	for _, args := range [][]string{{"agents", "label", ag.id}, {"agents", "label", ag.id, "x"}, {"agents", "label", ag.id, "a=1", "a-"}} {
		if r := e.run(args...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2", args, r.code)
		}
	}

	// decommission: refused without --yes when stdin is not a terminal,
	// cancelled by "n", done with --yes.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	pw.Close()
	defer pr.Close()
	if r := e.runWith(context.Background(), pr, "agents", "decommission", ag.id); r.code != 2 || !strings.Contains(r.stderr, "--yes") {
		t.Fatalf("decommission from a pipe: %+v", r)
	}
	if r := e.runWith(context.Background(), strings.NewReader("n\n"), "agents", "decommission", ag.id); r.code != 1 || !strings.Contains(r.stderr, "cancelled") {
		t.Fatalf("decommission answered n: %+v", r)
	}
	if out := e.must("agents", "decommission", ag.id, "--yes"); !strings.Contains(out, "decommissioned") {
		t.Fatalf("decommission: %s", out)
	}
	if _, err := ag.client.Heartbeat(context.Background(), cpapi.Heartbeat{}); !errors.Is(err, cpapi.ErrForbidden) {
		t.Fatalf("heartbeat after decommission: %v, want 403", err)
	}
	got := decodeJSON[cpapi.Agent](t, e.must("agents", "show", ag.id, "-o", "json"))
	if got.State != cpapi.StateDecommissioned || got.DecommissionedAt == nil {
		t.Fatalf("after decommission: %+v", got)
	}
	if r := e.run("agents", "decommission", ag.id, "--yes"); r.code != 1 {
		t.Fatalf("second decommission: %+v", r)
	}
	if r := e.run("agents", "list", "--state", "gone"); r.code != 2 {
		t.Fatalf("--state gone: %+v", r)
	}
}

func TestAgentsListWatch(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb testutil.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- cli.Run(ctx, newRootFor(e.app()), []string{"agents", "list", "--watch", "--interval", "20ms"}, &out, &errb)
	}()
	deadline := time.After(20 * time.Second)
	for strings.Count(out.String(), "Every 20ms") < 2 {
		select {
		case <-deadline:
			t.Fatalf("watch drew %q", out.String())
		case code := <-done:
			t.Fatalf("watch ended early with %d: %s", code, errb.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	// An agent appearing shows up in a later frame.
	et, err := e.admin.CreateEnrollmentTokens(ctx, time.Hour, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	e.enroll("late", et[0].Token)
	for !strings.Contains(out.String(), "late") {
		select {
		case <-deadline:
			t.Fatalf("new agent never drawn: %q", out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("interrupted watch exited %d: %s", code, errb.String())
	}
	if r := e.run("agents", "list", "--watch", "--interval", "0s"); r.code != 2 {
		t.Fatalf("--interval 0: %+v", r)
	}
}

func TestTelemetryQuery(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	et := decodeJSON[cpapi.NewEnrollmentToken](t, e.must("tokens", "create", "--ttl", "1h", "--json"))
	ag := e.enroll("sensor", et.Token)
	base := time.Now().UTC().Add(-10 * time.Minute).Truncate(time.Minute)
	batch := cpapi.TelemetryBatch{BatchSeq: 1, Epoch: "e1"}
	for i := range 6 {
		batch.Readings = append(batch.Readings, cpapi.Reading{Device: "room-1", Metric: "temperature", TS: base.Add(time.Duration(i) * 10 * time.Second), Value: 20 + float64(i)})
	}
	if _, err := ag.client.UploadTelemetry(context.Background(), batch); err != nil {
		t.Fatal(err)
	}

	raw := decodeJSON[cpapi.TelemetryResult](t, e.must("telemetry", "query", "--agent", ag.id, "--metric", "temperature", "--from", "-1h", "--json"))
	if len(raw.Series) != 1 || len(raw.Series[0].Points) != 6 {
		t.Fatalf("raw query: %+v", raw)
	}
	b := decodeJSON[cpapi.TelemetryResult](t, e.must("telemetry", "query", "--device", "room-1", "--from", base.Format(time.RFC3339), "--to", "now", "--bucket", "1m", "--json"))
	if len(b.Series) != 1 || len(b.Series[0].Buckets) != 1 || b.Series[0].Buckets[0].Count != 6 || b.Series[0].Buckets[0].Max != 25 || b.Series[0].Buckets[0].Avg != 22.5 {
		t.Fatalf("bucketed query: %+v", b)
	}
	out := e.must("telemetry", "query", "--device", "room-1", "--bucket", "1m")
	if !strings.Contains(out, "BUCKET START") || !strings.Contains(out, "22.5") {
		t.Fatalf("bucketed table:\n%s", out)
	}
	if out := e.must("telemetry", "query", "--metric", "humidity"); !strings.Contains(out, "No readings") {
		t.Fatalf("empty query: %s", out)
	}
	for _, args := range [][]string{
		{"telemetry", "query", "--from", "yesterday"},
		{"telemetry", "query", "--from", "-1h", "--to", "-2h"},
		{"telemetry", "query", "--bucket", "0s"},
		{"telemetry", "query", "--bucket", "fast"},
	} {
		if r := e.run(args...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2 (%s)", args, r.code, r.stderr)
		}
	}
	// Out of the server's range: its 400 message reaches the user.
	if r := e.run("telemetry", "query", "--from", "2199-01-01", "--to", "2300-01-01"); r.code != 1 || !strings.Contains(r.stderr, "400") || !strings.Contains(r.stderr, "out of range") {
		t.Fatalf("out-of-range query: %+v", r)
	}
}

func TestAuditListAndVerify(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	for range 3 {
		e.must("tokens", "create", "--role", "viewer", "--name", "v")
	}
	// The first start wrote 3: the bootstrap admin token, and the key
	// service's root key initialized and sealed.
	recs := decodeJSON[[]cpapi.AuditRecord](t, e.must("audit", "list", "--json"))
	if len(recs) != 6 || recs[0].Seq != 1 || recs[5].Action != "token.create" {
		t.Fatalf("audit list: %+v", recs)
	}
	if recs := decodeJSON[[]cpapi.AuditRecord](t, e.must("audit", "list", "--limit", "2", "--json")); len(recs) != 2 || recs[0].Seq != 5 {
		t.Fatalf("audit list --limit 2 (newest): %+v", recs)
	}
	if recs := decodeJSON[[]cpapi.AuditRecord](t, e.must("audit", "list", "--after", "1", "--limit", "2", "--json")); len(recs) != 2 || recs[0].Seq != 2 {
		t.Fatalf("audit list --after 1: %+v", recs)
	}
	if out := e.must("audit", "list"); !strings.Contains(out, "token.create") {
		t.Fatalf("audit table: %s", out)
	}
	if out := e.must("audit", "verify"); !strings.Contains(out, "Audit log OK: 6 records") {
		t.Fatalf("verify: %s", out)
	}
	if r := e.run("audit", "list", "--limit", "0"); r.code != 2 {
		t.Fatalf("--limit 0: %+v", r)
	}

	// Edit a record behind the server's back.
	db, err := sql.Open("sqlite", "file:"+filepath.Join(e.dir, "cp", controlplane.DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE audit_log SET actor = 'token:someone-else' WHERE seq = 2`); err != nil {
		t.Fatal(err)
	}
	r := e.run("audit", "verify")
	if r.code != 1 || !strings.Contains(r.stderr, "does NOT verify") || !strings.Contains(r.stderr, "record 2") {
		t.Fatalf("verify after tampering: %+v", r)
	}
	r = e.run("audit", "verify", "--json")
	v := decodeJSON[cpapi.AuditVerification](t, r.stdout)
	if r.code != 1 || v.OK || v.BadSeq != 2 {
		t.Fatalf("verify --json after tampering: %+v %+v", r, v)
	}
}

func TestUsageErrorsExitTwo(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	for _, args := range [][]string{
		{"nope"},
		{"agents", "nope"},
		{"agents", "list", "--bogus"},
		{"agents", "list", "extra"},
		{"agents", "list", "-o", "xml"},
		{"agents", "list", "--json", "-o", "yaml"},
		{"agents", "show"},
		{"agents", "show", "../tokens"}, // would reach GET /v1/tokens through the server's path cleaning
		{"agents", "label", "a?b", "k=v"},
		{"agents", "decommission", "..", "--yes"},
		{"tokens", "revoke", "x/y"},
		{"config", "use-context"},
		{"controlplane"},
		{"controlplane", "--data", "x", "--memory-limit", "lots"},
		{"bench", "controlplane", "--agents", "0"},
		{"bench", "widgets"},
		{"bench", "fl", "--fl-clients", "0"},
		{"bench", "fl", "--fl-clock", "sundial"},
		{"bench", "secagg", "--secagg-sizes", "1x10"},
		{"bench", "secagg", "--secagg-sizes", "36by3206"},
		{"bench", "secagg", "--secagg-dropout", "1"},
		{"--timeout", "soon", "agents", "list"},
	} {
		if r := e.run(args...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2\nstderr: %s", args, r.code, r.stderr)
		}
	}
	// Help and completion work and exit 0.
	if out := e.must("agents", "--help"); !strings.Contains(out, "decommission") {
		t.Fatalf("help: %s", out)
	}
	if out := e.must("completion", "bash"); !strings.Contains(out, "bash completion") || !strings.Contains(out, "edgectl") {
		t.Fatalf("completion bash: %.200s", out)
	}
	e.must("completion", "zsh")
	if out := e.must("__complete", "config", "use-context", ""); !strings.Contains(out, "test") {
		t.Fatalf("context completion: %s", out)
	}
	et, err := e.admin.CreateEnrollmentTokens(context.Background(), time.Hour, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	ag := e.enroll("completed", et[0].Token)
	if out := e.must("__complete", "agents", "show", ""); !strings.Contains(out, ag.id) {
		t.Fatalf("agent completion: %s", out)
	}
	if out := e.must("__complete", "tokens", "create", "--role", ""); !strings.Contains(out, "operator") {
		t.Fatalf("role completion: %s", out)
	}
}

// TestProcessExitCodes runs edgectl as a real process to check the codes
// that reach the shell.
func TestProcessExitCodes(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"version"}, 0, ""},
		{[]string{"agents", "bogus"}, 2, `unknown command "bogus"`},
		{[]string{"agents", "list", "--nope"}, 2, "unknown flag"},
		{[]string{"--server", "https://127.0.0.1:1", "--token", "x", "agents", "list"}, 1, "is the control plane running"},
	} {
		cmd := exec.Command(exe, c.args...)
		cmd.Env = []string{envMain + "=1", "HOME=" + home, "XDG_CONFIG_HOME=" + home}
		var errb bytes.Buffer
		cmd.Stderr = &errb
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != c.code || !strings.Contains(errb.String(), c.msg) {
			t.Errorf("edgectl %v: exit %d (%s), want %d (%s)", c.args, code, errb.String(), c.code, c.msg)
		}
	}
}

func TestControlplaneCommand(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	e := bareEnv(t)
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready.json")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb testutil.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- cli.Run(ctx, newRootFor(e.app()), []string{"controlplane", "--data", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0",
			"--ready-file", ready, "--memory-limit", "300MiB", "--log-level", "warn"}, &out, &errb)
	}()
	var info readyInfo
	deadline := time.After(30 * time.Second)
	for {
		if data, err := os.ReadFile(ready); err == nil {
			info = decodeJSON[readyInfo](t, string(data))
			break
		}
		select {
		case code := <-done:
			t.Fatalf("controlplane exited %d: %s", code, errb.String())
		case <-deadline:
			t.Fatal("controlplane did not become ready")
		case <-time.After(20 * time.Millisecond):
		}
	}
	if got := debug.SetMemoryLimit(-1); got != 300<<20 {
		t.Errorf("memory limit %d, want 300MiB", got)
	}
	o := out.String()
	for _, want := range []string{info.URL, filepath.Join(dir, "data", "ca.pem"), filepath.Join(dir, "data", "admin.token"), "300MiB"} {
		if !strings.Contains(o, want) {
			t.Errorf("output lacks %q:\n%s", want, o)
		}
	}
	// It serves: log in with what it printed.
	e.must("login", "--server", info.URL, "--ca", info.CAFile, "--token-file", info.AdminTokenFile)
	e.must("agents", "list")
	if st, err := os.Stat(info.AdminTokenFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("admin token file: %v %v", st, err)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("controlplane exited %d after interrupt: %s", code, errb.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("controlplane did not stop")
	}
}

func TestMemoryLimit(t *testing.T) {
	for _, c := range []struct {
		value  string
		set    bool
		env    string
		limit  int64
		apply  bool
		hasErr bool
	}{
		{"450MiB", false, "", 450 << 20, true, false},
		{"450MiB", false, "1GiB", 0, false, false}, // GOMEMLIMIT kept
		{"600MiB", true, "1GiB", 600 << 20, true, false},
		{"0", true, "", math.MaxInt64, true, false},
		{"off", true, "", math.MaxInt64, true, false},
		{"1MiB", true, "", 0, false, true},
		{"lots", true, "", 0, false, true},
	} {
		limit, apply, desc, err := memoryLimit(c.value, c.set, c.env)
		if limit != c.limit || apply != c.apply || (err != nil) != c.hasErr || (err == nil && desc == "") {
			t.Errorf("memoryLimit(%q, %v, %q) = %d, %v, %q, %v", c.value, c.set, c.env, limit, apply, desc, err)
		}
	}
}

func checkBenchReport(t *testing.T, rep bench.Report) {
	t.Helper()
	if rep.Suite != "controlplane" {
		t.Fatalf("suite %q", rep.Suite)
	}
	byName := map[string]bench.Result{}
	for _, r := range rep.Results {
		byName[r.Name] = r
	}
	for _, n := range []string{"heartbeat_latency_p50", "heartbeat_latency_p90", "heartbeat_latency_p99"} {
		r, ok := byName[n]
		if !ok || r.Unit != "ms" || r.Baseline != nil || r.Value <= 0 {
			t.Errorf("%s: %+v", n, r)
		}
	}
	if r := byName["server_rss"]; r.Unit != "MB" || r.Value <= 0 {
		t.Errorf("server_rss: %+v", r)
	}
	if r := byName["heartbeat_errors"]; r.Value != 0 {
		t.Errorf("heartbeat errors: %+v", r)
	}
	ing := byName["telemetry_ingest"]
	if ing.Unit != "readings/s" || ing.Baseline == nil || ing.Baseline.Name != "sqlite_insert" || ing.Value <= 0 || ing.Baseline.Value <= 0 ||
		math.Abs(ing.Ratio-ing.Value/ing.Baseline.Value) > 1e-9 {
		t.Errorf("telemetry_ingest: %+v", ing)
	}
	if r := byName["heartbeat_rate"]; r.Baseline == nil || r.Baseline.Name != "target_rate" {
		t.Errorf("heartbeat_rate: %+v", r)
	}
}

func TestBenchControlplaneInProcess(t *testing.T) {
	e := bareEnv(t)
	args := []string{"bench", "controlplane", "--server-mode", "in-process", "--agents", "4", "--interval", "400ms", "--duration", "1200ms",
		"--ingest-batches", "3", "--batch-size", "200", "--dir", t.TempDir(), "--json"}
	rep := decodeJSON[bench.Report](t, e.must(args...))
	checkBenchReport(t, rep)
	if !strings.HasPrefix(rep.Machine["server"], "in-process") {
		t.Errorf("machine: %v", rep.Machine)
	}
}

func TestBenchFL(t *testing.T) {
	e := bareEnv(t)
	rep := decodeJSON[bench.Report](t, e.must("bench", "fl", "--fl-clients", "12", "--fl-params", "100", "--fl-rounds", "1", "--json"))
	if rep.Suite != "fl" || len(rep.Results) != 4 || rep.Machine["clock"] != "cpu" {
		t.Fatalf("report: %+v", rep)
	}
	for _, r := range rep.Results {
		if r.Baseline == nil || r.Value <= 0 || r.Baseline.Value <= 0 || math.Abs(r.Ratio-r.Value/r.Baseline.Value) > 1e-9 {
			t.Errorf("%s: %+v", r.Name, r)
		}
	}
	if out := e.must("bench", "fl", "--fl-clients", "12", "--fl-params", "100", "--fl-rounds", "1"); !strings.Contains(out, "krum") || !strings.Contains(out, "all_pairs_krum") {
		t.Errorf("table: %s", out)
	}
}

func TestBenchSecAgg(t *testing.T) {
	e := bareEnv(t)
	rep := decodeJSON[bench.Report](t, e.must("bench", "secagg", "--secagg-sizes", "10x200,6x50", "--secagg-rounds", "1", "--json"))
	if rep.Suite != "secagg" || len(rep.Results) != 14 || rep.Machine["clock"] != "cpu" {
		t.Fatalf("report: %+v", rep)
	}
	for _, r := range rep.Results {
		if r.Name == "10x200/survivors" && r.Value != 8 || r.Value <= 0 {
			t.Errorf("%s: %+v", r.Name, r)
		}
	}
	if out := e.must("bench", "secagg", "--secagg-sizes", "6x50", "--secagg-rounds", "1", "--secagg-dropout", "0"); !strings.Contains(out, "6x50/update_bytes") || !strings.Contains(out, "plain_float32_update") {
		t.Errorf("table: %s", out)
	}
}

func TestBenchControlplaneChildProcess(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	e := bareEnv(t)
	a := e.app()
	a.selfExec = func() (string, []string) { return exe, append(os.Environ(), envMain+"=1") }
	var out, errb bytes.Buffer
	code := cli.Run(context.Background(), newRootFor(a), []string{"bench", "controlplane", "--agents", "4", "--interval", "400ms", "--duration", "1200ms",
		"--ingest-batches", "2", "--batch-size", "200", "--dir", t.TempDir(), "--memory-limit", "200MiB", "-o", "json"}, &out, &errb)
	if code != 0 {
		t.Fatalf("bench exited %d: %s", code, errb.String())
	}
	rep := decodeJSON[bench.Report](t, out.String())
	checkBenchReport(t, rep)
	if !strings.HasPrefix(rep.Machine["server"], "child process") || rep.Machine["memory_limit"] != "200MiB (--memory-limit)" {
		t.Errorf("machine: %v", rep.Machine)
	}
}

func TestBenchAgainstServer(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	out := e.must("--context", "test", "bench", "controlplane", "--agents", "3", "--interval", "500ms", "--duration", "1s", "--ingest-batches", "0")
	if !strings.Contains(out, "heartbeat_latency_p99") || !strings.Contains(out, e.srv.URL()) {
		t.Fatalf("bench table:\n%s", out)
	}
	// The load agents stay enrolled on the server used.
	if got := decodeJSON[[]cpapi.Agent](t, e.must("agents", "list", "-l", "loadtest=true", "--json")); len(got) != 3 {
		t.Fatalf("load agents: %d", len(got))
	}
}
