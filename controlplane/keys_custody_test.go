package controlplane

import (
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
)

// auditOutcomes sorts the audit records of one action by outcome ("ok",
// "denied", "error 400", "error 503", ...), checking that every successful
// one names an operator's token and one of the targets.
func auditOutcomes(t *testing.T, recs []cpapi.AuditRecord, action string, targets ...string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, r := range recs {
		if r.Action != action {
			continue
		}
		outcome, _, _ := strings.Cut(r.Result, ":")
		out[outcome]++
		if r.Result == "ok" && (!strings.HasPrefix(r.Actor, "token:") || !slices.Contains(targets, r.Target)) {
			t.Errorf("%s record: %+v", action, r)
		}
	}
	return out
}

func TestKeysRotateKEKThroughAPI(t *testing.T) {
	e := newKeyEnv(t, nil)
	ctx := e.ctx()

	// Sealed: refused like every key operation, before any work.
	_, err := e.admin.RotateKEK(ctx)
	if ae := wantStatus(t, err, 503); !errors.Is(ae, cpapi.ErrSealed) || !strings.Contains(ae.Message, "key service sealed") {
		t.Fatalf("rotate-kek while sealed: %v", ae)
	}
	e.unseal()
	before, _ := e.admin.KeyStatus(ctx)
	if before.KEKVersion != 1 {
		t.Fatalf("KEK version after first unseal: %+v", before)
	}
	e.createKey("billing", nil)
	svc := e.srv.KeyService()
	env, err := svc.Encrypt(ctx, "billing", []byte("21.5 C"), nil)
	if err != nil {
		t.Fatal(err)
	}

	// Only admins rotate the KEK.
	for _, role := range []cpapi.Role{cpapi.RoleViewer, cpapi.RoleOperator} {
		_, err := e.client(e.tokenFor(role)).RotateKEK(ctx)
		if ae := wantStatus(t, err, 403); !strings.Contains(ae.Message, "role "+string(role)) {
			t.Fatalf("%s rotate-kek: %s", role, ae.Message)
		}
	}
	if st, _ := e.admin.KeyStatus(ctx); st.KEKVersion != 1 {
		t.Fatalf("refused rotations changed the KEK: %+v", st)
	}
	if status, body := e.rawRequest("POST", "/v1/keys/rotate-kek?now=1", e.adminToken, nil, nil, nil); status != 400 || !strings.Contains(body, "takes no query parameters") {
		t.Fatalf("rotate-kek with a query: %d %s", status, body)
	}

	resp, err := e.admin.RotateKEK(ctx)
	if err != nil || resp.KEKVersion != 2 {
		t.Fatalf("rotate-kek: %+v %v", resp, err)
	}
	if st, _ := e.admin.KeyStatus(ctx); st.KEKVersion != 2 {
		t.Fatalf("status after rotate-kek: %+v", st)
	}
	if resp, err = e.admin.RotateKEK(ctx); err != nil || resp.KEKVersion != 3 {
		t.Fatalf("second rotate-kek: %+v %v", resp, err)
	}
	// Every key version was rewrapped: data opens now, and after the KEKs
	// are loaded again from the store (seal, restart, unseal).
	if pt, err := svc.Decrypt(ctx, "billing", env, nil); err != nil || string(pt) != "21.5 C" {
		t.Fatalf("decrypt after rotate-kek: %q %v", pt, err)
	}
	e.restart()
	e.unseal(4, 0, 2)
	if st, _ := e.admin.KeyStatus(ctx); st.KEKVersion != 3 {
		t.Fatalf("KEK version after restart: %+v", st)
	}
	if pt, err := e.srv.KeyService().Decrypt(ctx, "billing", env, nil); err != nil || string(pt) != "21.5 C" {
		t.Fatalf("decrypt after restart: %q %v", pt, err)
	}
	if _, err := e.admin.RotateKey(ctx, "billing"); err != nil {
		t.Fatalf("rotate a key under the new KEK: %v", err)
	}

	// Audited once per call: actor, result, target.
	got := auditOutcomes(t, auditActions(t, e), "key.rotate-kek", dkms.KEKName+" v2", dkms.KEKName+" v3")
	if want := map[string]int{"ok": 2, "denied": 2, "error 503": 1, "error 400": 1}; !maps.Equal(got, want) {
		t.Fatalf("rotate-kek audit records: %v, want %v", got, want)
	}
	if v, err := e.admin.VerifyAudit(ctx); err != nil || !v.OK {
		t.Fatalf("audit verify: %+v %v", v, err)
	}
}

func TestKeysRekeyRootThroughAPI(t *testing.T) {
	e := newKeyEnv(t, nil)
	ctx := e.ctx()
	old := e.shares

	// Sealed: refused.
	_, err := e.admin.RekeyRoot(ctx, 4, 2)
	if ae := wantStatus(t, err, 503); !errors.Is(ae, cpapi.ErrSealed) {
		t.Fatalf("rekey while sealed: %v", ae)
	}
	e.unseal()
	st0, _ := e.admin.KeyStatus(ctx)
	e.createKey("billing", nil)
	env, err := e.srv.KeyService().Encrypt(ctx, "billing", []byte("secret reading"), nil)
	if err != nil {
		t.Fatal(err)
	}

	// Bad input: 400 naming the problem, nothing changed.
	for _, c := range []struct{ body, want string }{
		{`{"shares":0,"threshold":0}`, "shares: 0 out of range 1..255"},
		{`{"threshold":2}`, "shares: 0 out of range 1..255"},
		{`{"shares":256,"threshold":2}`, "shares: 256 out of range 1..255"},
		{`{"shares":-3,"threshold":2}`, "shares: -3 out of range"},
		{`{"shares":3,"threshold":4}`, "threshold: 4 out of range 1..shares (3)"},
		{`{"shares":3,"threshold":0}`, "threshold: 0 out of range 1..shares (3)"},
		{`{"shares":3}`, "threshold: 0 out of range"},
		{`{"shares":3,"threshold":2`, "body:"},
		{`{"shares":"3","threshold":2}`, "body:"},
		{`{"shares":3,"threshold":2,"share":"x"}`, "body:"},
		{`{"shares":3,"threshold":2} {}`, "unexpected data after the JSON object"},
		{``, "body:"},
	} {
		status, body := e.rawRequest("POST", "/v1/keys/rekey-root", e.adminToken, []byte(c.body), nil, nil)
		if status != 400 || !strings.Contains(body, c.want) {
			t.Errorf("rekey %s: %d %s, want 400 with %q", c.body, status, body, c.want)
		}
	}
	// Only admins rekey.
	for _, role := range []cpapi.Role{cpapi.RoleViewer, cpapi.RoleOperator} {
		_, err := e.client(e.tokenFor(role)).RekeyRoot(ctx, 4, 2)
		wantStatus(t, err, 403)
	}
	if st, _ := e.admin.KeyStatus(ctx); st.RootVersion != st0.RootVersion || st.RootKCV != st0.RootKCV || st.SharesTotal != 5 || st.SharesNeeded != 3 {
		t.Fatalf("refused rekeys changed the root: %+v, was %+v", st, st0)
	}

	resp, err := e.admin.RekeyRoot(ctx, 4, 2)
	if err != nil {
		t.Fatal(err)
	}
	if resp.RootVersion != 2 || resp.SharesNeeded != 2 || resp.SharesTotal != 4 || len(resp.Shares) != 4 || resp.RootKCV == st0.RootKCV {
		t.Fatalf("rekey answer: %+v", resp)
	}
	st, _ := e.admin.KeyStatus(ctx)
	if st.Sealed || st.RootVersion != 2 || st.RootKCV != resp.RootKCV || st.SharesNeeded != 2 || st.SharesTotal != 4 {
		t.Fatalf("status after rekey: %+v", st)
	}
	for _, sh := range resp.Shares {
		if !strings.HasPrefix(sh, dkms.ShareTextPrefix) || strings.Contains(strings.Join(old, " "), sh) {
			t.Fatalf("new share %q", sh)
		}
	}

	// Sealed again, the old shares no longer unseal; two new ones do.
	if _, err := e.admin.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	_, err = e.admin.Unseal(ctx, old[0])
	if ae := wantStatus(t, err, 400); !strings.Contains(ae.Message, "bad root key share") || !strings.Contains(ae.Message, "this service's root is v2") {
		t.Fatalf("old share after rekey: %s", ae.Message)
	}
	if st, _ := e.admin.Unseal(ctx, resp.Shares[3]); !st.Sealed || st.SharesProvided != 1 || st.SharesNeeded != 2 {
		t.Fatalf("first new share: %+v", st)
	}
	if st, err := e.admin.Unseal(ctx, resp.Shares[0]); err != nil || st.Sealed {
		t.Fatalf("second new share: %+v %v", st, err)
	}
	if pt, err := e.srv.KeyService().Decrypt(ctx, "billing", env, nil); err != nil || string(pt) != "secret reading" {
		t.Fatalf("decrypt after rekey and unseal: %q %v", pt, err)
	}

	// After a restart too.
	e.restart()
	for _, sh := range old {
		_, err := e.admin.Unseal(ctx, sh)
		wantStatus(t, err, 400)
	}
	e.shares = resp.Shares
	e.unseal(1, 2)
	if pt, err := e.srv.KeyService().Decrypt(ctx, "billing", env, nil); err != nil || string(pt) != "secret reading" {
		t.Fatalf("decrypt after restart: %q %v", pt, err)
	}

	// Audited with the new root version, never with a share, and no share
	// reached the log.
	recs := auditActions(t, e)
	for _, r := range recs {
		for _, sh := range append(old, resp.Shares...) {
			if strings.Contains(r.Target+r.Result, sh[len(dkms.ShareTextPrefix):]) {
				t.Fatalf("share in audit record %+v", r)
			}
		}
	}
	got := auditOutcomes(t, recs, "key.rekey-root", "root v2")
	if want := map[string]int{"ok": 1, "denied": 2, "error 400": 12, "error 503": 1}; !maps.Equal(got, want) {
		t.Fatalf("rekey-root audit records: %v, want %v", got, want)
	}
	for _, sh := range resp.Shares {
		if strings.Contains(e.logs.String(), sh[len(dkms.ShareTextPrefix):]) {
			t.Fatal("a new share was logged")
		}
	}
	if v, err := e.admin.VerifyAudit(ctx); err != nil || !v.OK {
		t.Fatalf("audit verify: %+v %v", v, err)
	}
}

func TestKeysRekeyRootForgetsUntakenFirstShares(t *testing.T) {
	e := newTestEnv(t, nil)
	// An embedding program that never took the first start's shares.
	first := e.srv.keys.rootShares
	for _, sh := range first[:3] {
		if _, err := e.admin.Unseal(e.ctx(), sh); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.admin.RekeyRoot(e.ctx(), 3, 2); err != nil {
		t.Fatal(err)
	}
	if sh := e.srv.TakeRootShares(); sh != nil {
		t.Fatalf("TakeRootShares after a rekey hands out %d obsolete shares", len(sh))
	}
}

func TestKeysRekeyRootRefusedInDevMode(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	_, err := e.admin.RekeyRoot(e.ctx(), 3, 2)
	if ae := wantStatus(t, err, 409); !strings.Contains(ae.Message, "dev-mode root has no shares to rekey") {
		t.Fatalf("dev-mode rekey: %s", ae.Message)
	}
	if st, _ := e.admin.KeyStatus(e.ctx()); st.RootVersion != 1 || !st.DevMode || st.Sealed {
		t.Fatalf("status after refused dev rekey: %+v", st)
	}
	// The KEK rotates in dev mode like anywhere else.
	if resp, err := e.admin.RotateKEK(e.ctx()); err != nil || resp.KEKVersion != 2 {
		t.Fatalf("dev-mode rotate-kek: %+v %v", resp, err)
	}
}
