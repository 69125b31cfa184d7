package controlplane

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// loseAnswers performs requests and then loses the first n answers: the
// server did the work, the client sees a network error (a client-side
// timeout after the control plane consumed the token).
type loseAnswers struct {
	next http.RoundTripper
	n    atomic.Int64
}

func (l *loseAnswers) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.next.RoundTrip(r)
	if err == nil && l.n.Add(-1) >= 0 {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return nil, errors.New("test: answer lost after the server processed the request")
	}
	return resp, err
}

func TestEnrollRetryAfterALostAnswerGetsTheSameEnrollment(t *testing.T) {
	const window = 10 * time.Minute
	e := newTestEnv(t, func(c *Config) { c.EnrollRetryWindow = window })
	toks, err := e.admin.CreateEnrollmentTokens(e.ctx(), time.Hour, map[string]string{"site": "x"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, csr, err := cpapi.GenerateAgentKey("pump-1")
	if err != nil {
		t.Fatal(err)
	}
	xw, md := genPQKeys(t)
	req := cpapi.EnrollRequest{Token: toks[0].Token, CSR: csr, Name: "pump-1", XWingPublic: xw, MLDSAPublic: md}

	tr, err := cpapi.ClientTLSConfig(e.srv.CAPEM(), nil)
	if err != nil {
		t.Fatal(err)
	}
	lose := &loseAnswers{next: &http.Transport{TLSClientConfig: tr}}
	lose.n.Store(1)
	c, err := cpapi.NewClient(cpapi.ClientConfig{URL: e.srv.URL(), CAPEM: e.srv.CAPEM(), Timeout: 20 * time.Second, Transport: lose})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Enroll(e.ctx(), req); err == nil {
		t.Fatal("first enrollment: the answer should have been lost")
	}
	e.clock.Advance(time.Minute)
	// The retry: same token, same keys (a fresh CSR over the same key
	// would do as well; the agent sends the same one).
	resp, err := c.Enroll(e.ctx(), req)
	if err != nil {
		t.Fatalf("retry after a lost answer: %v", err)
	}
	agents, err := e.admin.ListAgents(e.ctx(), cpapi.AgentFilter{})
	if err != nil || len(agents) != 1 {
		t.Fatalf("agents %v (%v), want the one enrolled", agents, err)
	}
	if resp.AgentID != agents[0].ID || resp.Certificate == "" || resp.CABundle == "" || resp.Labels["site"] != "x" {
		t.Fatalf("retry answer %+v, want agent %s", resp, agents[0].ID)
	}
	if got := certSerialOf(t, resp.Certificate); got != agents[0].CertSerial {
		t.Errorf("retry certificate serial %s, want the one issued first %s", got, agents[0].CertSerial)
	}
	// Again: still the same answer.
	resp2, err := c.Enroll(e.ctx(), req)
	if err != nil || resp2.AgentID != resp.AgentID || resp2.Certificate != resp.Certificate {
		t.Fatalf("second retry: %v, %s", err, resp2.AgentID)
	}

	// Another identity key, X-Wing key or ML-DSA key with the used token
	// is refused.
	_, otherCSR, _ := cpapi.GenerateAgentKey("thief")
	otherXW, otherMD := genPQKeys(t)
	for name, r := range map[string]cpapi.EnrollRequest{
		"identity key": {Token: toks[0].Token, CSR: otherCSR, XWingPublic: xw, MLDSAPublic: md},
		"x-wing key":   {Token: toks[0].Token, CSR: csr, XWingPublic: otherXW, MLDSAPublic: md},
		"ml-dsa key":   {Token: toks[0].Token, CSR: csr, XWingPublic: xw, MLDSAPublic: otherMD},
		"no pq keys":   {Token: toks[0].Token, CSR: csr},
	} {
		_, err := e.client("").Enroll(e.ctx(), r)
		ae := wantStatus(t, err, 409)
		if !strings.Contains(ae.Message, "already used") {
			t.Errorf("%s: message %q", name, ae.Message)
		}
	}
	// Past the retry window the same keys are refused too.
	e.clock.Advance(window)
	_, err = c.Enroll(e.ctx(), req)
	wantStatus(t, err, 409)

	recs, err := e.admin.ListAudit(e.ctx(), 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var ok, retried, refused int
	for _, r := range recs.Records {
		switch {
		case r.Action != "agent.enroll":
		case r.Result == "ok":
			ok++
		case strings.HasPrefix(r.Result, "ok (retry"):
			retried++
			if r.Target != resp.AgentID {
				t.Errorf("retry audited with target %q", r.Target)
			}
		case strings.HasPrefix(r.Result, "error 409"):
			refused++
		}
	}
	if ok != 1 || retried != 2 || refused != 5 {
		t.Errorf("audit: %d enrollments, %d retries, %d refusals; want 1, 2, 5", ok, retried, refused)
	}
}

// A retry racing the first request (the client gave up and sent again
// while the server was still working) gets the same answer too.
func TestEnrollConcurrentRetriesGetOneEnrollment(t *testing.T) {
	e := newTestEnv(t, nil)
	toks, err := e.admin.CreateEnrollmentTokens(e.ctx(), time.Hour, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, csr, _ := cpapi.GenerateAgentKey("pump-2")
	const n = 6
	ids := make(chan string, n)
	for range n {
		go func() {
			resp, err := e.client("").Enroll(context.Background(), cpapi.EnrollRequest{Token: toks[0].Token, CSR: csr})
			if err != nil {
				t.Errorf("concurrent enrollment: %v", err)
			}
			ids <- resp.AgentID
		}()
	}
	first := <-ids
	for range n - 1 {
		if id := <-ids; id != first {
			t.Errorf("agent ids %q and %q for one agent", first, id)
		}
	}
	if agents, _ := e.admin.ListAgents(e.ctx(), cpapi.AgentFilter{}); len(agents) != 1 {
		t.Errorf("%d agents, want 1", len(agents))
	}
}

func certSerialOf(t *testing.T, certPEM string) string {
	t.Helper()
	der, err := decodePEM([]byte(certPEM), "CERTIFICATE", "answer")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return serialString(cert.SerialNumber)
}
