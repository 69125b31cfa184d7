package uplink

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// fuzzIdentity makes a CA, an agent key and a certificate for agent "ag_1"
// issued by the CA, as PEM.
func fuzzIdentity(f *testing.F) (keyPEM, certPEM, caPEM []byte) {
	f.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		f.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	u, _ := url.Parse(cpapi.AgentURI("ag_1"))
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "ag_1"}, NotBefore: now.Add(-time.Hour),
		NotAfter: now.Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{u}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		f.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		f.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

// FuzzLoadIdentity feeds arbitrary identity.json and certificate files to
// loadIdentity: it must refuse what is wrong with an error, never panic,
// and accept only an identity naming the certificate's agent.
func FuzzLoadIdentity(f *testing.F) {
	keyPEM, certPEM, caPEM := fuzzIdentity(f)
	good := []byte(`{"agent_id":"ag_1","server":"https://cp:8443","enrolled_at":"2025-01-01T00:00:00Z"}`)
	f.Add(good, certPEM, caPEM)
	f.Add([]byte(`{"agent_id":"ag_2"}`), certPEM, caPEM)
	f.Add([]byte(`{"agent_id":""}`), certPEM, caPEM)
	f.Add([]byte(`{"agent_id":`), certPEM, caPEM)
	f.Add([]byte(`[]`), certPEM, caPEM)
	f.Add(good, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), caPEM)
	f.Add(good, certPEM, []byte("not a pem"))
	f.Add([]byte{}, []byte{}, []byte{})
	sk, err := pqcrypto.GenerateSigningKey(nil)
	if err != nil {
		f.Fatal(err)
	}
	pinned, _ := json.Marshal(identityRecord{AgentID: "ag_1", KeysVerifyingKey: sk.Public().Bytes()})
	f.Add(pinned, certPEM, caPEM)
	f.Add([]byte(`{"agent_id":"ag_1","keys_verifying_key":"AAAA"}`), certPEM, caPEM)
	f.Add([]byte(`{"agent_id":"ag_1","keys_verifying_key":"not base64!"}`), certPEM, caPEM)
	f.Fuzz(func(t *testing.T, rec, cert, ca []byte) {
		dir := t.TempDir()
		for name, data := range map[string][]byte{KeyFile: keyPEM, CertFile: cert, CAFile: ca, IdentityFile: rec} {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		id, err := loadIdentity(dir)
		if err != nil {
			if id != nil {
				t.Fatal("identity returned with an error")
			}
			return
		}
		if id == nil || id.AgentID != "ag_1" || agentIDOf(id.cert.Leaf) != id.AgentID {
			t.Fatalf("accepted identity %+v", id)
		}
		if _, err := id.verifyingKey(); err != nil {
			t.Fatalf("accepted an unusable pinned key: %v", err)
		}
	})
}
