package controlplane

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func contextWithCancel() (context.Context, context.CancelFunc) {
	return context.WithCancel(context.Background())
}

// selfSignedClientCert makes a client certificate that claims agentID but
// is not issued by the control plane CA.
func selfSignedClientCert(t *testing.T, key *ecdsa.PrivateKey, agentID string) tls.Certificate {
	t.Helper()
	u, _ := url.Parse(cpapi.AgentURI(agentID))
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: agentID},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{u},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestAgentIDFromCertRequiresMatchingNames(t *testing.T) {
	u, _ := url.Parse(cpapi.AgentURI("ag_1"))
	if id, err := agentIDFromCert(&x509.Certificate{Subject: pkix.Name{CommonName: "ag_1"}, URIs: []*url.URL{u}}); err != nil || id != "ag_1" {
		t.Errorf("matching: %q %v", id, err)
	}
	if _, err := agentIDFromCert(&x509.Certificate{Subject: pkix.Name{CommonName: "ag_2"}, URIs: []*url.URL{u}}); err == nil {
		t.Error("mismatched CommonName accepted")
	}
	if _, err := agentIDFromCert(&x509.Certificate{Subject: pkix.Name{CommonName: "ag_1"}}); err == nil {
		t.Error("certificate without URI accepted")
	}
}

func TestAgentCertificateRejectsWrongKey(t *testing.T) {
	e := newTestEnv(t, nil)
	a := e.enroll("k", nil)
	other, _, _ := cpapi.GenerateAgentKey("other")
	if _, err := cpapi.AgentCertificate(a.resp.Certificate, other); err == nil {
		t.Error("certificate paired with a foreign key")
	}
}
