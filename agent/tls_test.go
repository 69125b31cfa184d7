package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/ingest"
)

// selfSigned returns a certificate for 127.0.0.1 that is its own CA, and
// its PEM.
func selfSigned(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test broker"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestSSLBrokerWithCAFile: the agent subscribes to an ssl:// broker
// verified with ingest.mqtt.ca_file; a CA file that holds no certificate
// fails Start naming the field.
func TestSSLBrokerWithCAFile(t *testing.T) {
	t.Parallel()
	cert, caPEM := selfSigned(t)
	b, err := ingest.StartBroker(ingest.BrokerConfig{Addr: "127.0.0.1:0", TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	if !strings.HasPrefix(b.URL(), "ssl://") {
		t.Fatalf("broker URL %q", b.URL())
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t)
	a := c.start("tls", nil, func(cfg *Config) {
		withIngest(cfg)
		cfg.Ingest.MQTT.Broker = b.URL()
		cfg.Ingest.MQTT.CAFile = caFile
	})
	waitFor(t, 10*time.Second, "subscribed over TLS", func() (bool, string) {
		return a.Ingest().Subscribed(), "not subscribed"
	})

	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, "badca")
	withIngest(&cfg)
	cfg.Ingest.MQTT.Broker = b.URL()
	cfg.Ingest.MQTT.CAFile = junk
	bad, err := New(cfg, Deps{Logger: testLogger(t), Rand: seededRand("badca")})
	if err != nil {
		t.Fatal(err)
	}
	if err := bad.Start(t.Context()); err == nil || !strings.Contains(err.Error(), "ingest.mqtt.ca_file") {
		bad.Kill()
		t.Fatalf("junk CA file: %v", err)
	}
}
