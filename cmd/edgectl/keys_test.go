package main

import (
	"context"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/testutil"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

func TestKeysCommands(t *testing.T) {
	e := newTestEnv(t)
	shares := e.srv.TakeRootShares()
	if len(shares) != 5 {
		t.Fatalf("%d shares", len(shares))
	}
	e.login()

	if out := e.must("keys", "status"); !strings.Contains(out, "SEALED (0 of 3 shares given)") {
		t.Fatalf("status while sealed:\n%s", out)
	}
	r := e.run("keys", "create", "billing", "--all-agents")
	if r.code != 1 || !strings.Contains(r.stderr, "503") || !strings.Contains(r.stderr, "key service sealed") {
		t.Fatalf("create while sealed: %+v", r)
	}
	// Unseal: a bad share is named, a duplicate refused, stdin works.
	r = e.run("keys", "unseal", "--share", "dkms-share:nonsense")
	if r.code != 1 || !strings.Contains(r.stderr, "400") || !strings.Contains(r.stderr, "characters after the prefix") {
		t.Fatalf("bad share: %+v", r)
	}
	r = e.runWith(context.Background(), strings.NewReader(shares[0]+"\n"), "keys", "unseal")
	if r.code != 0 || !strings.Contains(r.stdout, "1 of 3 given") || !strings.Contains(r.stdout, "2 more share(s) needed") {
		t.Fatalf("first share from stdin: %+v", r)
	}
	r = e.run("keys", "unseal", "--share", shares[0])
	if r.code != 1 || !strings.Contains(r.stderr, "409") || !strings.Contains(r.stderr, "duplicate root key share") {
		t.Fatalf("duplicate share: %+v", r)
	}
	r = e.runWith(context.Background(), strings.NewReader("# custodians 2-4\n\n"+shares[1]+"\n"+shares[2]+"\n"+shares[3]+"\n"), "keys", "unseal", "--json")
	if r.code != 0 || !strings.Contains(r.stderr, "1 more share(s) not needed") {
		t.Fatalf("shares from stdin: %+v", r)
	}
	if st := decodeJSON[cpapi.KeyServiceStatus](t, r.stdout); st.Sealed || st.KEKVersion == 0 {
		t.Fatalf("status after unseal: %+v", st)
	}
	if r = e.runWith(context.Background(), strings.NewReader("\n# nothing\n"), "keys", "unseal"); r.code != 2 {
		t.Fatalf("empty stdin: %+v", r)
	}

	// Create, list, show.
	if out := e.must("keys", "create", "billing", "--all-agents", "--rotation-period", "7d"); !strings.Contains(out, "Key billing created (data, v1 primary, rotation 7d, recipients: all agents)") {
		t.Fatalf("create: %s", out)
	}
	e.must("keys", "create", "mesh", "--purpose", "gossip", "--labels", "site=berlin", "--rotation-period", "off")
	for _, bad := range [][]string{
		{"keys", "create", "x", "--purpose", "signing"},
		{"keys", "create", "x", "--rotation-period", "soon"},
		{"keys", "create", "a/b"},
		{"keys", "retire", "billing", "x"},
		{"keys", "policy", "billing", "--labels", "novalue"},
	} {
		if r := e.run(bad...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2: %s", bad, r.code, r.stderr)
		}
	}
	keys := decodeJSON[[]cpapi.Key](t, e.must("keys", "list", "--json"))
	// billing, gossip (built in), mesh, telemetry (built in)
	if len(keys) != 4 || keys[0].Name != "billing" || keys[0].Policy.RotationPeriod != "168h0m0s" || !keys[0].Policy.AllAgents ||
		keys[2].Name != "mesh" || keys[2].Policy.RotationPeriod != "0s" || keys[2].Policy.AllowedLabels["site"] != "berlin" {
		t.Fatalf("list: %+v", keys)
	}
	out := e.must("keys", "list")
	for _, want := range []string{"NAME", "billing", "7d", "all agents", "mesh", "on demand", "labels site=berlin"} {
		if !strings.Contains(out, want) {
			t.Errorf("list table lacks %q:\n%s", want, out)
		}
	}
	if r := e.run("keys", "show", "nope"); r.code != 1 || !strings.Contains(r.stderr, `no key named "nope"`) {
		t.Fatalf("show unknown: %+v", r)
	}

	// Rotate and rewrap an envelope sealed under v1.
	ctx := context.Background()
	aad := []byte("device-9")
	env1, err := e.srv.KeyService().Encrypt(ctx, "billing", []byte("21.5 C"), aad)
	if err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(e.dir, "r.env")
	if err := os.WriteFile(in, env1, 0o600); err != nil {
		t.Fatal(err)
	}
	if out := e.must("keys", "rotate", "billing"); !strings.Contains(out, "v2 is primary; older versions: 1 decrypt-only") {
		t.Fatalf("rotate: %s", out)
	}
	outPath := filepath.Join(e.dir, "r2.env")
	r = e.run("keys", "rewrap", "billing", "--in", in, "--out", outPath, "--aad", string(aad))
	if r.code != 0 || !strings.Contains(r.stderr, "rewrapped under billing v2 (was v1)") {
		t.Fatalf("rewrap: %+v", r)
	}
	env2, err := os.ReadFile(outPath)
	if err != nil {
		t.Fatal(err)
	}
	if h, _, err := pqcrypto.ParseHeader(env2); err != nil || h.KeyVersion != 2 {
		t.Fatalf("rewrapped header: %+v %v", h, err)
	}
	if pt, err := e.srv.KeyService().Decrypt(ctx, "billing", env2, aad); err != nil || string(pt) != "21.5 C" {
		t.Fatalf("rewrapped envelope opens to %q, %v", pt, err)
	}
	if st, _ := os.Stat(outPath); st.Mode().Perm() != 0o600 {
		t.Fatalf("rewrap output mode %v", st.Mode())
	}
	rw := decodeJSON[cpapi.RewrapResponse](t, e.mustIn(env1, "keys", "rewrap", "billing", "--aad", string(aad), "--json"))
	if rw.FromVersion != 1 || rw.Version != 2 || len(rw.Envelope) == 0 {
		t.Fatalf("rewrap --json: %+v", rw)
	}
	r = e.runWith(ctx, strings.NewReader(string(env1)), "keys", "rewrap", "billing")
	if r.code != 1 || !strings.Contains(r.stderr, "authentication failed") {
		t.Fatalf("rewrap without the aad: %+v", r)
	}

	// Policy: only the given fields change.
	if out := e.must("keys", "policy", "billing", "--min-version", "2"); !strings.Contains(out, "Min decrypt version:  2") || !strings.Contains(out, "Rotation:             7d") {
		t.Fatalf("policy: %s", out)
	}
	p := decodeJSON[cpapi.KeyPolicy](t, e.must("keys", "policy", "billing", "--json"))
	if p.MinDecryptVersion != 2 || p.RotationPeriod != "168h0m0s" || !p.AllAgents {
		t.Fatalf("policy after change: %+v", p)
	}
	e.must("keys", "policy", "billing", "--all-agents=false", "--agents", "ag_1,ag_2")
	p = decodeJSON[cpapi.KeyPolicy](t, e.must("keys", "policy", "billing", "--json"))
	if p.AllAgents || len(p.AllowedAgents) != 2 || p.MinDecryptVersion != 2 {
		t.Fatalf("policy after recipients change: %+v", p)
	}

	// Retire, destroy.
	if out := e.must("keys", "retire", "billing", "1"); !strings.Contains(out, "Key billing v1 retired.") {
		t.Fatalf("retire: %s", out)
	}
	if r := e.run("keys", "retire", "billing", "v2"); r.code != 1 || !strings.Contains(r.stderr, "409") || !strings.Contains(r.stderr, "rotate first") {
		t.Fatalf("retire primary: %+v", r)
	}
	e.must("keys", "destroy", "billing", "v1", "--yes")
	if out := e.must("keys", "show", "billing"); !strings.Contains(out, "v1       destroyed") || !strings.Contains(out, "v2       primary") {
		t.Fatalf("show:\n%s", out)
	}

	// A viewer lists but does not rotate.
	tok, err := e.admin.CreateAPIToken(ctx, "v", cpapi.RoleViewer, 0)
	if err != nil {
		t.Fatal(err)
	}
	e.must("keys", "list", "--token", tok.Token)
	if r := e.run("keys", "rotate", "billing", "--token", tok.Token); r.code != 1 || !strings.Contains(r.stderr, "403") || !strings.Contains(r.stderr, "lacks the role") {
		t.Fatalf("viewer rotate: %+v", r)
	}

	// Seal again: key operations stop, the listing says so.
	if out := e.must("keys", "seal", "--yes"); !strings.Contains(out, "sealed; 3 share(s) unseal it") {
		t.Fatalf("seal: %s", out)
	}
	if r := e.run("keys", "rotate", "billing"); r.code != 1 || !strings.Contains(r.stderr, "key service sealed") {
		t.Fatalf("rotate after seal: %+v", r)
	}
	if r := e.run("keys", "list"); r.code != 0 || !strings.Contains(r.stderr, "sealed") {
		t.Fatalf("list while sealed: %+v", r)
	}
	if r := e.run("audit", "verify"); r.code != 0 {
		t.Fatalf("audit verify: %+v", r)
	}
	recs := decodeJSON[[]cpapi.AuditRecord](t, e.must("audit", "list", "-n", "1000", "--json"))
	actions := map[string]bool{}
	for _, rec := range recs {
		actions[rec.Action] = true
	}
	for _, a := range []string{"key.initialize", "key.unseal", "key.create-key", "key.rotate", "key.rewrap", "key.set-policy", "key.retire", "key.destroy", "key.seal"} {
		if !actions[a] {
			t.Errorf("audit log lacks %s", a)
		}
	}
}

// mustIn runs edgectl with stdin and fails unless it exits 0.
func (e *testEnv) mustIn(stdin []byte, args ...string) string {
	e.t.Helper()
	r := e.runWith(context.Background(), strings.NewReader(string(stdin)), args...)
	if r.code != 0 {
		e.t.Fatalf("edgectl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// startControlplane runs 'edgectl controlplane' in-process until the
// returned stop is called; it returns the ready information and the
// command's stdout and stderr.
func startControlplane(t *testing.T, e *testEnv, args ...string) (readyInfo, *testutil.SyncBuffer, *testutil.SyncBuffer, func()) {
	t.Helper()
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })
	ready := filepath.Join(t.TempDir(), "ready.json")
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb testutil.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- cli.Run(ctx, newRootFor(e.app()), append([]string{"controlplane", "--listen", "127.0.0.1:0", "--ready-file", ready,
			"--memory-limit", "off", "--log-level", "warn"}, args...), &out, &errb)
	}()
	deadline := time.After(30 * time.Second)
	for {
		if data, err := os.ReadFile(ready); err == nil {
			info := decodeJSON[readyInfo](t, string(data))
			stop := func() {
				cancel()
				select {
				case code := <-done:
					if code != 0 {
						t.Errorf("controlplane exited %d: %s", code, errb.String())
					}
				case <-time.After(30 * time.Second):
					t.Error("controlplane did not stop")
				}
			}
			t.Cleanup(cancel)
			return info, &out, &errb, stop
		}
		select {
		case code := <-done:
			cancel()
			t.Fatalf("controlplane exited %d: %s", code, errb.String())
		case <-deadline:
			cancel()
			t.Fatal("controlplane did not become ready")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func TestControlplaneHandsOutSharesOnce(t *testing.T) {
	e := bareEnv(t)
	data := filepath.Join(t.TempDir(), "data")
	sharesFile := filepath.Join(t.TempDir(), "shares.txt")
	info, out, _, stop := startControlplane(t, e, "--data", data, "--init-shares-file", sharesFile, "--key-shares", "4", "--key-threshold", "2")
	if !strings.Contains(out.String(), "key service:    sealed") {
		t.Errorf("output does not say the key service is sealed:\n%s", out.String())
	}
	st, err := os.Stat(sharesFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("shares file: %v %v", st, err)
	}
	text, _ := os.ReadFile(sharesFile)
	if n := strings.Count(string(text), "\ndkms-share:"); n != 4 || !strings.Contains(string(text), "Any 2 of these 4 shares") {
		t.Fatalf("shares file holds %d shares:\n%s", n, text)
	}
	e.must("login", "--server", info.URL, "--ca", info.CAFile, "--token-file", info.AdminTokenFile)
	// The whole file on stdin unseals (two shares are enough).
	r := e.runWith(context.Background(), strings.NewReader(string(text)), "keys", "unseal")
	if r.code != 0 || !strings.Contains(r.stdout, "Key service unsealed") {
		t.Fatalf("unseal from the shares file: %+v", r)
	}
	e.must("keys", "create", "k")
	stop()

	// A second start never replaces the file and prints no shares.
	if r := e.run("controlplane", "--data", data, "--init-shares-file", sharesFile); r.code != 2 || !strings.Contains(r.stderr, "exists") {
		t.Fatalf("second start with the same shares file: %+v", r)
	}
	_, _, errb, stop := startControlplane(t, e, "--data", data)
	stop()
	if strings.Contains(errb.String(), "dkms-share:") {
		t.Fatalf("second start printed shares:\n%s", errb.String())
	}
}

func TestControlplanePrintsSharesWithoutFileAndDevUnseal(t *testing.T) {
	e := bareEnv(t)
	_, _, errb, stop := startControlplane(t, e, "--data", filepath.Join(t.TempDir(), "data"))
	stop()
	if n := strings.Count(errb.String(), "\ndkms-share:"); n != 5 || !strings.Contains(errb.String(), "ROOT KEY SHARES (shown once)") {
		t.Fatalf("stderr holds %d shares:\n%s", n, errb.String())
	}

	dev := filepath.Join(t.TempDir(), "dev")
	info, out, errb, stop := startControlplane(t, e, "--data", dev, "--dev-unseal")
	if !strings.Contains(out.String(), "DEV MODE") || !strings.Contains(errb.String(), controlplane.DevUnsealWarning) || strings.Contains(errb.String(), "dkms-share:") {
		t.Fatalf("dev unseal:\nstdout %s\nstderr %s", out.String(), errb.String())
	}
	e.must("login", "--server", info.URL, "--ca", info.CAFile, "--token-file", info.AdminTokenFile)
	e.must("keys", "create", "k")
	stop()
	if r := e.run("controlplane", "--data", dev, "--key-rotation-period", "soon"); r.code != 2 {
		t.Fatalf("bad --key-rotation-period: %+v", r)
	}
}

func TestKeysRotateKEKAndRekeyRoot(t *testing.T) {
	e := newTestEnv(t)
	first := e.srv.TakeRootShares()
	e.login()
	ctx := context.Background()

	// Sealed: both refused like every key operation.
	for _, args := range [][]string{{"keys", "rotate-kek"}, {"keys", "rekey-root", "--shares", "3", "--threshold", "2", "--yes"}} {
		if r := e.run(args...); r.code != 1 || !strings.Contains(r.stderr, "503") || !strings.Contains(r.stderr, "key service sealed") {
			t.Fatalf("%v while sealed: %+v", args, r)
		}
	}
	e.mustIn([]byte(strings.Join(first[:3], "\n")), "keys", "unseal")

	// Bad flags are usage errors, and change nothing.
	existing := filepath.Join(e.dir, "existing.txt")
	if err := os.WriteFile(existing, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]string{
		{"keys", "rekey-root", "--shares", "3", "--yes"},
		{"keys", "rekey-root", "--threshold", "2", "--yes"},
		{"keys", "rekey-root", "--shares", "3", "--threshold", "4", "--yes"},
		{"keys", "rekey-root", "--shares", "256", "--threshold", "2", "--yes"},
		{"keys", "rekey-root", "--shares", "3", "--threshold", "0", "--yes"},
		{"keys", "rekey-root", "--shares", "3", "--threshold", "2", "--yes", "--shares-file", existing},
	} {
		if r := e.run(bad...); r.code != 2 {
			t.Errorf("%v: exit %d, want 2: %s", bad, r.code, r.stderr)
		}
	}
	if r := e.runWith(ctx, strings.NewReader("n\n"), "keys", "rekey-root", "--shares", "3", "--threshold", "2"); r.code != 1 || !strings.Contains(r.stderr, "cancelled") {
		t.Fatalf("declined rekey: %+v", r)
	}
	if b, _ := os.ReadFile(existing); string(b) != "keep me" {
		t.Fatalf("existing shares file replaced: %q", b)
	}
	// Only admins.
	for _, role := range []cpapi.Role{cpapi.RoleViewer, cpapi.RoleOperator} {
		tok, err := e.admin.CreateAPIToken(ctx, "t-"+string(role), role, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{{"keys", "rotate-kek"}, {"keys", "rekey-root", "--shares", "3", "--threshold", "2", "--yes"}} {
			if r := e.run(append(args, "--token", tok.Token)...); r.code != 1 || !strings.Contains(r.stderr, "403") {
				t.Fatalf("%s %v: %+v", role, args, r)
			}
		}
	}
	st := decodeJSON[cpapi.KeyServiceStatus](t, e.must("keys", "status", "--json"))
	if st.RootVersion != 1 || st.KEKVersion != 1 || st.SharesTotal != 5 {
		t.Fatalf("refused commands changed the key service: %+v", st)
	}

	// rotate-kek, table and JSON.
	e.must("keys", "create", "billing")
	env, err := e.srv.KeyService().Encrypt(ctx, "billing", []byte("21.5 C"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if out := e.must("keys", "rotate-kek"); !strings.Contains(out, "Key-encryption key rotated: v2 is primary") {
		t.Fatalf("rotate-kek: %s", out)
	}
	if k := decodeJSON[cpapi.RotateKEKResponse](t, e.must("keys", "rotate-kek", "--json")); k.KEKVersion != 3 {
		t.Fatalf("rotate-kek --json: %+v", k)
	}

	// rekey-root into a file: 0600, shares only there.
	file := filepath.Join(e.dir, "v2-shares.txt")
	r := e.run("keys", "rekey-root", "--shares", "3", "--threshold", "2", "--yes", "--shares-file", file)
	if r.code != 0 || strings.Contains(r.stdout+r.stderr, "dkms-share:") || !strings.Contains(r.stderr, "the old shares no longer do") {
		t.Fatalf("rekey-root --shares-file: %+v", r)
	}
	fst, err := os.Stat(file)
	if err != nil || fst.Mode().Perm() != 0o600 {
		t.Fatalf("shares file: %v %v", fst, err)
	}
	v2, _ := os.ReadFile(file)
	if n := strings.Count(string(v2), "\ndkms-share:"); n != 3 || !strings.Contains(string(v2), "Any 2 of these 3 shares") {
		t.Fatalf("shares file holds %d shares:\n%s", n, v2)
	}
	// --json: the answer with its shares.
	v3 := decodeJSON[cpapi.RekeyRootResponse](t, e.must("keys", "rekey-root", "--shares", "2", "--threshold", "2", "--yes", "--json"))
	if v3.RootVersion != 3 || len(v3.Shares) != 2 || v3.SharesNeeded != 2 {
		t.Fatalf("rekey-root --json: %+v", v3)
	}
	// On stdout, in the form unseal reads, with a warning on stderr.
	r = e.runWith(ctx, strings.NewReader("y\n"), "keys", "rekey-root", "--shares", "4", "--threshold", "3")
	if r.code != 0 || strings.Count(r.stdout, "\ndkms-share:") != 4 || !strings.Contains(r.stderr, "shown once") || !strings.Contains(r.stderr, "v4") {
		t.Fatalf("rekey-root to stdout: %+v", r)
	}
	v4 := r.stdout

	// Sealed again, only the newest shares unseal; the data still opens.
	e.must("keys", "seal", "--yes")
	for name, old := range map[string]string{"first start": strings.Join(first, "\n"), "v2": string(v2), "v3": strings.Join(v3.Shares, "\n")} {
		r := e.runWith(ctx, strings.NewReader(old), "keys", "unseal")
		if r.code != 1 || !strings.Contains(r.stderr, "400") || !strings.Contains(r.stderr, "this service's root is v4") {
			t.Fatalf("unseal with the %s shares: %+v", name, r)
		}
	}
	if r := e.runWith(ctx, strings.NewReader(v4), "keys", "unseal"); r.code != 0 || !strings.Contains(r.stdout, "Key service unsealed (root key v4") {
		t.Fatalf("unseal with the new shares: %+v", r)
	}
	if pt, err := e.srv.KeyService().Decrypt(ctx, "billing", env, nil); err != nil || string(pt) != "21.5 C" {
		t.Fatalf("decrypt after rekeys: %q %v", pt, err)
	}

	// Audited, without the shares.
	out := e.must("audit", "list", "-n", "1000", "--json")
	for _, sh := range append(append(first, v3.Shares...), strings.Fields(v4)...) {
		if strings.HasPrefix(sh, "dkms-share:") && strings.Contains(out, sh[len("dkms-share:"):]) {
			t.Fatal("a share is in the audit log")
		}
	}
	count := map[string]int{}
	for _, rec := range decodeJSON[[]cpapi.AuditRecord](t, out) {
		if rec.Result == "ok" {
			count[rec.Action]++
		}
	}
	if count["key.rotate-kek"] != 2 || count["key.rekey-root"] != 3 {
		t.Fatalf("audit ok records: %v", count)
	}
}
