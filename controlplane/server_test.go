package controlplane

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudflare/circl/kem/xwing"
	"github.com/cloudflare/circl/sign/mldsa/mldsa65"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

func TestFirstStartCreatesCAAndAdminTokenThenReuses(t *testing.T) {
	e := newTestEnv(t, nil)
	for _, f := range []struct {
		name string
		mode os.FileMode
	}{{CAFile, 0o644}, {CAKeyFile, 0o600}, {ServerCertFile, 0o644}, {ServerKeyFile, 0o600}, {AdminTokenFile, 0o600}, {DatabaseFile, 0}} {
		st, err := os.Stat(filepath.Join(e.dir, f.name))
		if err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		if f.mode != 0 && st.Mode().Perm() != f.mode {
			t.Errorf("%s: mode %v, want %v", f.name, st.Mode().Perm(), f.mode)
		}
	}
	logs := e.logs.String()
	for _, want := range []string{filepath.Join(e.dir, CAFile), filepath.Join(e.dir, AdminTokenFile), "created admin API token", "created certificate authority"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
	if !strings.HasPrefix(e.adminToken, apiTokenPrefix) || len(e.adminToken) < 40 {
		t.Errorf("admin token %q does not look like a 256-bit token", e.adminToken)
	}
	caBefore, _ := os.ReadFile(filepath.Join(e.dir, CAFile))
	tokBefore := e.adminToken
	a := e.enroll("persist", map[string]string{"site": "berlin"})

	e.restart()
	caAfter, _ := os.ReadFile(filepath.Join(e.dir, CAFile))
	if !bytes.Equal(caBefore, caAfter) {
		t.Error("CA changed across restart")
	}
	if e.adminToken != tokBefore {
		t.Error("admin token changed across restart")
	}
	if strings.Count(e.logs.String(), "created admin API token") != 1 {
		t.Error("second start created another admin token")
	}
	got, err := e.admin.GetAgent(e.ctx(), a.id)
	if err != nil {
		t.Fatal(err)
	}
	if got.Labels["site"] != "berlin" {
		t.Errorf("labels after restart: %v", got.Labels)
	}
	// The agent's certificate from before the restart still works.
	c, err := cpapi.NewClient(cpapi.ClientConfig{URL: e.srv.URL(), CAPEM: []byte(a.resp.CABundle), Certificate: &a.cert})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Heartbeat(e.ctx(), cpapi.Heartbeat{}); err != nil {
		t.Fatalf("heartbeat after restart: %v", err)
	}
}

func TestServerCertificateCoversConfiguredNames(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.Hostnames = []string{"cp.example.org", "10.1.2.3"} })
	cert, _, err := loadCert(filepath.Join(e.dir, ServerCertFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"localhost", "cp.example.org"} {
		if err := cert.VerifyHostname(n); err != nil {
			t.Errorf("VerifyHostname(%s): %v", n, err)
		}
	}
	for _, ip := range []string{"127.0.0.1", "::1", "10.1.2.3"} {
		if err := cert.VerifyHostname(ip); err != nil {
			t.Errorf("VerifyHostname(%s): %v", ip, err)
		}
	}
	// A new name on the next start reissues the certificate with the same CA.
	e.srv.Close()
	e.cfg.Hostnames = append(e.cfg.Hostnames, "other.example.org")
	e.start()
	cert2, _, err := loadCert(filepath.Join(e.dir, ServerCertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := cert2.VerifyHostname("other.example.org"); err != nil {
		t.Error(err)
	}
	if cert2.SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Error("certificate not reissued")
	}
}

func TestTLS13OnlyWithHybridPostQuantumKeyExchange(t *testing.T) {
	e := newTestEnv(t, nil)
	addr := e.srv.Addr().String()
	pool, err := cpapi.CertPoolFromPEM(e.srv.CAPEM())
	if err != nil {
		t.Fatal(err)
	}
	old := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MaxVersion: tls.VersionTLS12}
	if c, err := tls.Dial("tcp", addr, old); err == nil {
		c.Close()
		t.Fatal("TLS 1.2 handshake succeeded")
	}
	conf, err := cpapi.ClientTLSConfig(e.srv.CAPEM(), nil)
	if err != nil {
		t.Fatal(err)
	}
	conf.ServerName = "127.0.0.1"
	c, err := tls.Dial("tcp", addr, conf)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st := c.ConnectionState()
	if st.Version != tls.VersionTLS13 {
		t.Errorf("version %x, want TLS 1.3", st.Version)
	}
	if st.CurveID != tls.X25519MLKEM768 {
		t.Errorf("key exchange %v, want X25519MLKEM768", st.CurveID)
	}
}

func TestNoCredentialsIs401(t *testing.T) {
	e := newTestEnv(t, nil)
	for _, rt := range e.srv.routes {
		if rt.access != accessBearer && rt.access != accessAgent {
			continue
		}
		path := strings.ReplaceAll(rt.path, "{id}", "ag_0000000000000000")
		for _, tok := range []string{"", "efp_unknown"} {
			status, body := e.rawRequest(rt.method, path, tok, []byte("{}"), map[string]string{"Content-Type": "application/json"}, nil)
			if status != 401 {
				t.Errorf("%s %s token %q: status %d, want 401: %s", rt.method, path, tok, status, body)
			}
			if !strings.Contains(body, `"error"`) {
				t.Errorf("%s %s: body lacks error message: %s", rt.method, path, body)
			}
		}
	}
	// Malformed Authorization header.
	status, body := e.rawRequest("GET", "/v1/agents", "", nil, map[string]string{"Authorization": "Basic abc"}, nil)
	if status != 401 || !strings.Contains(body, "Bearer") {
		t.Errorf("Basic auth: %d %s", status, body)
	}
	// A bearer token on an agent route is not a client certificate.
	status, _ = e.rawRequest("POST", "/v1/agents/self/heartbeat", e.adminToken, []byte("{}"), nil, nil)
	if status != 401 {
		t.Errorf("heartbeat with bearer token: %d, want 401", status)
	}
	// Unauthenticated attempts are not audited (no actor to attribute).
	recs, err := e.admin.ListAudit(e.ctx(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	// First start writes three: the bootstrap admin token, and the key
	// service's root key initialized and sealed.
	if len(recs.Records) != 3 {
		t.Errorf("audit has %d records, want only the 3 of the first start: %+v", len(recs.Records), recs.Records)
	}
}

func TestViewerAttemptingChangeIs403AndAudited(t *testing.T) {
	e := newTestEnv(t, nil)
	a := e.enroll("a1", nil)
	viewer := e.tokenFor(cpapi.RoleViewer)
	var mutating int
	for _, rt := range e.srv.routes {
		if rt.access != accessBearer || rt.role == cpapi.RoleViewer {
			continue
		}
		mutating += btoi(rt.action != "")
		path := strings.ReplaceAll(rt.path, "{id}", a.id)
		status, body := e.rawRequest(rt.method, path, viewer, []byte("{}"), map[string]string{"Content-Type": "application/json"}, nil)
		if status != 403 {
			t.Errorf("viewer %s %s: status %d, want 403: %s", rt.method, path, status, body)
		}
		if !strings.Contains(body, "role viewer") {
			t.Errorf("viewer %s %s: message does not name the role: %s", rt.method, path, body)
		}
	}
	if mutating < 5 {
		t.Fatalf("only %d mutating routes checked", mutating)
	}
	// Reads work.
	vc := e.client(viewer)
	if _, err := vc.ListAgents(e.ctx(), cpapi.AgentFilter{}); err != nil {
		t.Errorf("viewer list agents: %v", err)
	}
	if _, err := vc.VerifyAudit(e.ctx()); err != nil {
		t.Errorf("viewer verify audit: %v", err)
	}
	// Each refused change is in the audit log as denied.
	recs, err := e.admin.ListAudit(e.ctx(), 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	denied := 0
	for _, r := range recs.Records {
		if strings.HasPrefix(r.Result, "denied:") && strings.HasPrefix(r.Actor, "token:") {
			denied++
		}
	}
	if denied != mutating {
		t.Errorf("%d denied audit records, want %d", denied, mutating)
	}
	// The agent is untouched.
	got, _ := e.admin.GetAgent(e.ctx(), a.id)
	if got.DecommissionedAt != nil {
		t.Error("viewer decommissioned the agent")
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestOperatorRole(t *testing.T) {
	e := newTestEnv(t, nil)
	op := e.client(e.tokenFor(cpapi.RoleOperator))
	if _, err := op.CreateEnrollmentTokens(e.ctx(), time.Minute, nil, 2); err != nil {
		t.Errorf("operator creating enrollment tokens: %v", err)
	}
	_, err := op.CreateAPIToken(e.ctx(), "x", cpapi.RoleAdmin, 0)
	wantStatus(t, err, 403)
	_, err = op.ListAPITokens(e.ctx())
	wantStatus(t, err, 403)
}

func TestAPITokensCreateListRevoke(t *testing.T) {
	e := newTestEnv(t, nil)
	tok, err := e.admin.CreateAPIToken(e.ctx(), "ci", cpapi.RoleViewer, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if tok.Token == "" || tok.ExpiresAt == nil {
		t.Fatalf("token answer %+v", tok)
	}
	list, err := e.admin.ListAPITokens(e.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("%d tokens, want 2", len(list))
	}
	// The secret is stored only as its SHA-256 digest.
	st := e.srv.Store()
	stored, err := st.LookupAPIToken(e.ctx(), hashToken(tok.Token))
	if err != nil || stored.ID != tok.ID {
		t.Fatalf("lookup by digest: %v", err)
	}
	e.srv.Close()
	db, _ := os.ReadFile(filepath.Join(e.dir, DatabaseFile))
	wal, _ := os.ReadFile(filepath.Join(e.dir, DatabaseFile+"-wal"))
	if bytes.Contains(append(db, wal...), []byte(tok.Token)) {
		t.Fatal("token secret found in the database")
	}
	e.start()

	vc := e.client(tok.Token)
	if _, err := vc.ListAgents(e.ctx(), cpapi.AgentFilter{}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.RevokeAPIToken(e.ctx(), tok.ID); err != nil {
		t.Fatal(err)
	}
	_, err = vc.ListAgents(e.ctx(), cpapi.AgentFilter{})
	ae := wantStatus(t, err, 401)
	if !strings.Contains(ae.Message, "revoked") {
		t.Errorf("message %q does not say revoked", ae.Message)
	}
	_, err = e.admin.RevokeAPIToken(e.ctx(), tok.ID)
	wantStatus(t, err, 409)
	_, err = e.admin.RevokeAPIToken(e.ctx(), "tok_nope")
	wantStatus(t, err, 404)

	// Expiry.
	tok2, err := e.admin.CreateAPIToken(e.ctx(), "short", cpapi.RoleViewer, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(2 * time.Minute)
	_, err = e.client(tok2.Token).ListAgents(e.ctx(), cpapi.AgentFilter{})
	ae = wantStatus(t, err, 401)
	if !strings.Contains(ae.Message, "expired") {
		t.Errorf("message %q does not say expired", ae.Message)
	}
}

func genPQKeys(t *testing.T) (xw, md []byte) {
	t.Helper()
	_, xpk, err := xwing.GenerateKeyPair(nil)
	if err != nil {
		t.Fatal(err)
	}
	xw, err = xpk.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	mpk, _, err := mldsa65.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	md, err = mpk.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return xw, md
}

func TestEnrollHappyPathAndMutualTLS(t *testing.T) {
	e := newTestEnv(t, nil)
	toks, err := e.admin.CreateEnrollmentTokens(e.ctx(), time.Hour, map[string]string{"site": "berlin", "tier": "edge"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(toks[0].Token, enrollmentTokenPrefix) || toks[0].State != "unused" {
		t.Fatalf("token %+v", toks[0])
	}
	key, csr, err := cpapi.GenerateAgentKey("pump-7")
	if err != nil {
		t.Fatal(err)
	}
	xw, md := genPQKeys(t)
	resp, err := e.client("").Enroll(e.ctx(), cpapi.EnrollRequest{Token: toks[0].Token, CSR: csr, Name: "pump-7", Version: "0.3.1", OS: "linux", Arch: "arm64", XWingPublic: xw, MLDSAPublic: md})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Labels["site"] != "berlin" || resp.HeartbeatIntervalSeconds != 10 {
		t.Errorf("enroll answer %+v", resp)
	}
	// The certificate chains to the CA, names the agent and is for client auth.
	blk, _ := pem.Decode([]byte(resp.Certificate))
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := cpapi.CertPoolFromPEM([]byte(resp.CABundle))
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("certificate does not verify: %v", err)
	}
	if leaf.Subject.CommonName != resp.AgentID || len(leaf.URIs) != 1 || leaf.URIs[0].String() != cpapi.AgentURI(resp.AgentID) {
		t.Errorf("certificate names %q %v, want %s", leaf.Subject.CommonName, leaf.URIs, resp.AgentID)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Error("certificate is not for the agent's key")
	}

	cert, err := cpapi.AgentCertificate(resp.Certificate, key)
	if err != nil {
		t.Fatal(err)
	}
	ac, err := cpapi.NewClient(cpapi.ClientConfig{URL: e.srv.URL(), CAPEM: []byte(resp.CABundle), Certificate: &cert})
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(5 * time.Second)
	incident := cpapi.DBIncident{DB: "state", File: "/var/lib/edgefleet/state.db", QuarantinedAs: "/var/lib/edgefleet/state.db.corrupt-20261207T030000Z",
		At: e.clock.Now().UTC(), Reason: "database disk image is malformed", Status: "rebuilding"}
	badIncident := incident
	badIncident.Reason = "*** in database main ***\nPage 12: btreeInitPage() returns error code 11"
	if _, err := ac.Heartbeat(e.ctx(), cpapi.Heartbeat{Health: &cpapi.Health{Status: "degraded", Incidents: []cpapi.DBIncident{badIncident}}}); err == nil {
		t.Error("heartbeat with a control character in an incident accepted")
	}
	hr, err := ac.Heartbeat(e.ctx(), cpapi.Heartbeat{Version: "0.3.2", Health: &cpapi.Health{Status: "degraded", Checks: map[string]string{"mqtt": "reconnecting"},
		Incidents: []cpapi.DBIncident{incident}},
		Resources: &cpapi.Resources{CPUPercent: 42, MemUsedBytes: 100, MemTotalBytes: 200}})
	if err != nil {
		t.Fatal(err)
	}
	if hr.AgentID != resp.AgentID || hr.Labels["tier"] != "edge" || !hr.ServerTime.Equal(e.clock.Now()) {
		t.Errorf("heartbeat answer %+v", hr)
	}
	self, err := ac.Self(e.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if self.ID != resp.AgentID || self.Version != "0.3.2" || self.Health.Checks["mqtt"] != "reconnecting" || self.Resources.CPUPercent != 42 || self.State != cpapi.StateOnline {
		t.Errorf("self %+v", self)
	}
	got, err := e.admin.GetAgent(e.ctx(), resp.AgentID)
	if err != nil {
		t.Fatal(err)
	}
	if inc := got.Health.Incidents; len(inc) != 1 || inc[0] != incident {
		t.Errorf("incidents stored %+v, want %+v", inc, incident)
	}
	if !bytes.Equal(got.XWingPublic, xw) || !bytes.Equal(got.MLDSAPublic, md) {
		t.Error("post-quantum public keys not stored")
	}
	if got.Name != "pump-7" || got.OS != "linux" || got.Arch != "arm64" || !got.LastSeen.Equal(e.clock.Now()) || got.FirstSeen.After(got.LastSeen) {
		t.Errorf("agent %+v", got)
	}
	list, err := e.admin.ListEnrollmentTokens(e.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if list[0].State != "used" || list[0].UsedBy != resp.AgentID {
		t.Errorf("token after use: %+v", list[0])
	}
	// A certificate from another CA is refused at the TLS layer or with 401.
	otherKey, _, _ := cpapi.GenerateAgentKey("x")
	selfSigned := selfSignedClientCert(t, otherKey, resp.AgentID)
	bad, _ := cpapi.NewClient(cpapi.ClientConfig{URL: e.srv.URL(), CAPEM: e.srv.CAPEM(), Certificate: &selfSigned})
	if _, err := bad.Heartbeat(e.ctx(), cpapi.Heartbeat{}); err == nil {
		t.Error("heartbeat with a certificate from another CA succeeded")
	}
}

func TestEnrollmentTokenReuseAndExpiry(t *testing.T) {
	e := newTestEnv(t, nil)
	toks, err := e.admin.CreateEnrollmentTokens(e.ctx(), 10*time.Minute, nil, 2)
	if err != nil {
		t.Fatal(err)
	}
	e.enrollWith(toks[0].Token, "first")
	_, csr, _ := cpapi.GenerateAgentKey("second")
	_, err = e.client("").Enroll(e.ctx(), cpapi.EnrollRequest{Token: toks[0].Token, CSR: csr})
	ae := wantStatus(t, err, 409)
	if !strings.Contains(ae.Message, "already used") {
		t.Errorf("reuse message %q", ae.Message)
	}
	e.clock.Advance(10 * time.Minute)
	_, err = e.client("").Enroll(e.ctx(), cpapi.EnrollRequest{Token: toks[1].Token, CSR: csr})
	ae = wantStatus(t, err, 401)
	if !strings.Contains(ae.Message, "expired") {
		t.Errorf("expiry message %q", ae.Message)
	}
	_, err = e.client("").Enroll(e.ctx(), cpapi.EnrollRequest{Token: "efe_forged", CSR: csr})
	wantStatus(t, err, 401)
	agents, _ := e.admin.ListAgents(e.ctx(), cpapi.AgentFilter{})
	if len(agents) != 1 {
		t.Errorf("%d agents, want 1", len(agents))
	}
	list, _ := e.admin.ListEnrollmentTokens(e.ctx())
	states := map[string]string{}
	for _, tk := range list {
		states[tk.ID] = tk.State
	}
	if states[toks[0].ID] != "used" || states[toks[1].ID] != "expired" {
		t.Errorf("token states %v", states)
	}
	// Refusals by a recognised token are audited.
	recs, _ := e.admin.ListAudit(e.ctx(), 0, 100)
	var refused int
	for _, r := range recs.Records {
		if r.Action == "agent.enroll" && strings.HasPrefix(r.Result, "error") {
			refused++
		}
	}
	if refused != 2 {
		t.Errorf("%d refused enrollments audited, want 2", refused)
	}
}

func TestEnrollmentTokenRaceSingleUse(t *testing.T) {
	e := newTestEnv(t, nil)
	toks, err := e.admin.CreateEnrollmentTokens(e.ctx(), time.Hour, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, csr, _ := cpapi.GenerateAgentKey("racer")
			_, err := e.client("").Enroll(e.ctx(), cpapi.EnrollRequest{Token: toks[0].Token, CSR: csr, Name: string(rune('a' + i))})
			errs <- err
		}()
	}
	ok := 0
	for range n {
		if err := <-errs; err == nil {
			ok++
		} else if !errors.Is(err, cpapi.ErrConflict) {
			t.Errorf("unexpected error %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d enrollments succeeded with one token", ok)
	}
}

func TestEnrollRejectsBadCSRAndKeys(t *testing.T) {
	e := newTestEnv(t, nil)
	toks, _ := e.admin.CreateEnrollmentTokens(e.ctx(), time.Hour, nil, 1)
	_, csr, _ := cpapi.GenerateAgentKey("x")
	xw, md := genPQKeys(t)
	tampered := []byte(csr)
	tampered[len(tampered)/2] ^= 1
	cases := []struct {
		name string
		req  cpapi.EnrollRequest
		want string
	}{
		{"no csr", cpapi.EnrollRequest{Token: toks[0].Token}, "csr"},
		{"garbage csr", cpapi.EnrollRequest{Token: toks[0].Token, CSR: "hello"}, "csr: no PEM block"},
		{"tampered csr", cpapi.EnrollRequest{Token: toks[0].Token, CSR: string(tampered)}, "csr"},
		{"short xwing", cpapi.EnrollRequest{Token: toks[0].Token, CSR: csr, XWingPublic: xw[:100]}, "xwing_public"},
		{"bad mldsa", cpapi.EnrollRequest{Token: toks[0].Token, CSR: csr, MLDSAPublic: md[:999]}, "mldsa_public"},
		{"control chars", cpapi.EnrollRequest{Token: toks[0].Token, CSR: csr, Name: "a\x00b"}, "name"},
	}
	for _, c := range cases {
		_, err := e.client("").Enroll(e.ctx(), c.req)
		ae := wantStatus(t, err, 400)
		if !strings.Contains(ae.Message, c.want) {
			t.Errorf("%s: message %q lacks %q", c.name, ae.Message, c.want)
		}
	}
	// None of them consumed the token.
	e.enrollWith(toks[0].Token, "ok")
}

func TestAgentStatesFromHeartbeats(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.HeartbeatInterval = 10 * time.Second })
	a := e.enroll("s1", nil)
	state := func() cpapi.AgentState {
		t.Helper()
		got, err := e.admin.GetAgent(e.ctx(), a.id)
		if err != nil {
			t.Fatal(err)
		}
		return got.State
	}
	if s := state(); s != cpapi.StateOnline {
		t.Fatalf("after enrollment: %s", s)
	}
	e.clock.Advance(29 * time.Second)
	if s := state(); s != cpapi.StateOnline {
		t.Errorf("29s: %s, want online", s)
	}
	e.clock.Advance(1 * time.Second)
	if s := state(); s != cpapi.StateStale {
		t.Errorf("30s: %s, want stale", s)
	}
	e.clock.Advance(70 * time.Second)
	if s := state(); s != cpapi.StateOffline {
		t.Errorf("100s: %s, want offline", s)
	}
	offline, _ := e.admin.ListAgents(e.ctx(), cpapi.AgentFilter{State: cpapi.StateOffline})
	if len(offline) != 1 {
		t.Errorf("offline filter: %d agents", len(offline))
	}
	if _, err := a.client.Heartbeat(e.ctx(), cpapi.Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	if s := state(); s != cpapi.StateOnline {
		t.Errorf("after heartbeat: %s", s)
	}
	st, err := e.admin.ServerStatus(e.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if st.Agents[cpapi.StateOnline] != 1 || st.TotalAgents != 1 || st.RSSBytes <= 0 {
		t.Errorf("status %+v", st)
	}
}

func TestLabels(t *testing.T) {
	e := newTestEnv(t, nil)
	a := e.enroll("l1", map[string]string{"site": "berlin", "old": "x"})
	e.enroll("l2", map[string]string{"site": "paris"})
	got, err := e.admin.UpdateLabels(e.ctx(), a.id, cpapi.LabelsPatch{Set: map[string]string{"rack": "r7", "site": "hamburg"}, Remove: []string{"old"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Labels) != 2 || got.Labels["site"] != "hamburg" || got.Labels["rack"] != "r7" {
		t.Errorf("labels %v", got.Labels)
	}
	sel, err := e.admin.ListAgents(e.ctx(), cpapi.AgentFilter{Labels: []string{"site=hamburg", "rack"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(sel) != 1 || sel[0].ID != a.id {
		t.Errorf("selector matched %v", sel)
	}
	hr, _ := a.client.Heartbeat(e.ctx(), cpapi.Heartbeat{})
	if hr.Labels["rack"] != "r7" {
		t.Errorf("agent sees labels %v", hr.Labels)
	}
	for _, p := range []cpapi.LabelsPatch{{}, {Set: map[string]string{"bad key": "v"}}, {Remove: []string{"-x"}}, {Set: map[string]string{"k": strings.Repeat("v", 300)}}} {
		_, err := e.admin.UpdateLabels(e.ctx(), a.id, p)
		wantStatus(t, err, 400)
	}
	_, err = e.admin.UpdateLabels(e.ctx(), "ag_missing", cpapi.LabelsPatch{Set: map[string]string{"a": "b"}})
	wantStatus(t, err, 404)
}

func TestDecommissionRefusesAgent(t *testing.T) {
	e := newTestEnv(t, nil)
	a := e.enroll("doomed", nil)
	other := e.enroll("fine", nil)
	if _, err := a.client.Heartbeat(e.ctx(), cpapi.Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	op := e.client(e.tokenFor(cpapi.RoleOperator))
	got, err := op.Decommission(e.ctx(), a.id)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != cpapi.StateDecommissioned || got.DecommissionedAt == nil {
		t.Errorf("after decommission %+v", got)
	}
	check := func() {
		t.Helper()
		_, err := a.client.Heartbeat(e.ctx(), cpapi.Heartbeat{})
		ae := wantStatus(t, err, 403)
		if !strings.Contains(ae.Message, "decommissioned") {
			t.Errorf("message %q", ae.Message)
		}
		_, err = a.client.UploadTelemetry(e.ctx(), cpapi.TelemetryBatch{BatchSeq: 1, Epoch: testEpoch, Readings: []cpapi.Reading{{Device: "d", Metric: "m", TS: e.clock.Now(), Value: 1}}})
		wantStatus(t, err, 403)
		_, err = a.client.Self(e.ctx())
		wantStatus(t, err, 403)
		if _, err := other.client.Heartbeat(e.ctx(), cpapi.Heartbeat{}); err != nil {
			t.Errorf("other agent refused: %v", err)
		}
	}
	check()
	// The revocation survives a restart (loaded from the store).
	e.restart()
	a.client, _ = cpapi.NewClient(cpapi.ClientConfig{URL: e.srv.URL(), CAPEM: []byte(a.resp.CABundle), Certificate: &a.cert})
	other.client, _ = cpapi.NewClient(cpapi.ClientConfig{URL: e.srv.URL(), CAPEM: []byte(other.resp.CABundle), Certificate: &other.cert})
	check()
	_, err = e.admin.Decommission(e.ctx(), a.id)
	wantStatus(t, err, 409)
	_, err = e.admin.UpdateLabels(e.ctx(), a.id, cpapi.LabelsPatch{Set: map[string]string{"a": "b"}})
	wantStatus(t, err, 409)
	_, err = e.admin.Decommission(e.ctx(), "ag_missing")
	wantStatus(t, err, 404)
	dec, _ := e.admin.ListAgents(e.ctx(), cpapi.AgentFilter{State: cpapi.StateDecommissioned})
	if len(dec) != 1 || dec[0].ID != a.id {
		t.Errorf("decommissioned listing %v", dec)
	}
}

func TestNotFoundAndMethodNotAllowedAreJSON(t *testing.T) {
	e := newTestEnv(t, nil)
	status, body := e.rawRequest("GET", "/v1/nope", e.adminToken, nil, nil, nil)
	if status != 404 || !strings.Contains(body, `"error"`) {
		t.Errorf("unknown path: %d %s", status, body)
	}
	status, body = e.rawRequest("PUT", "/v1/agents", e.adminToken, nil, nil, nil)
	if status != 405 || !strings.Contains(body, "not allowed") {
		t.Errorf("wrong method: %d %s", status, body)
	}
	if err := e.client("").Health(e.ctx()); err != nil {
		t.Error(err)
	}
	for _, id := range []string{"ag_missing", "ag_Zz-9"} {
		_, err := e.admin.GetAgent(e.ctx(), id)
		if !errors.Is(err, cpapi.ErrNotFound) {
			t.Errorf("GetAgent(%q): %v, want ErrNotFound", id, err)
		}
	}
}

func TestMetricsEndpoint(t *testing.T) {
	e := newTestEnv(t, nil)
	a := e.enroll("m", nil)
	a.client.Heartbeat(e.ctx(), cpapi.Heartbeat{})
	_, err := e.client("").Metrics(e.ctx())
	wantStatus(t, err, 401)
	m, err := e.client(e.tokenFor(cpapi.RoleViewer)).Metrics(e.ctx())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"controlplane_heartbeats_total 1", `controlplane_enrollments_total{result="ok"} 1`, "controlplane_http_request_duration_seconds_bucket"} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestConfigValidation(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []Config{
		{},
		{DataDir: dir, Listen: "nope"},
		{DataDir: dir, StaleAfter: time.Minute, OfflineAfter: time.Second},
		{DataDir: dir, MaxBodyBytes: 10},
		{DataDir: dir, HeartbeatInterval: time.Minute, IdleTimeout: time.Second},
		{DataDir: dir, SQLite: SQLiteOptions{Synchronous: "OFF"}},
	} {
		c.Logger = discardLogger()
		if _, err := New(c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("New(%+v) = %v, want ErrInvalidConfig", c, err)
		}
	}
}

func TestServeStopsOnContextCancel(t *testing.T) {
	dir := t.TempDir()
	srv, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0", Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithCancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for srv.Addr() == nil && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	addr := srv.Addr()
	if addr == nil {
		t.Fatal("server did not start")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", addr.String(), time.Second); err == nil {
		c.Close()
		t.Error("still listening after Serve returned")
	}
}
