package ingestbench

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"time"

	"github.com/edgefleet/edgefleet/agent/devcred"
	"github.com/edgefleet/edgefleet/agent/ingest"
)

// embeddedKind is one configuration of the embedded broker run.
type embeddedKind string

const (
	embeddedBare    embeddedKind = "bare"    // no ingestor: PUBACK at once, nothing stored
	embeddedDurable embeddedKind = "durable" // ingestor attached, clear-text TCP, no limits
	embeddedSecured embeddedKind = "tls"     // ingestor attached, TLS, credentials, ACLs and the broker's limits
)

// securedBroker holds what the secured run needs: the server's TLS
// configuration and the devices', trusting a CA made for the run, and
// each publisher's identity.
type securedBroker struct {
	server, client *tls.Config
	secrets        []string          // publisher i's secret
	ids            []ingest.Identity // publisher i logs in as ids[i]
}

// newSecuredBroker makes the run's CA and certificate and an identity
// (a $7$ secret hash, as the device registry stores them) for each of
// publishers. A publisher sends for many devices; its identity may
// publish to devices/+/telemetry, one filter, so the ACL check of each
// publish costs what a device's own single topic costs.
func newSecuredBroker(publishers int) (*securedBroker, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench fleet CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "bench agent"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("server certificate: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	s := &securedBroker{
		server: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12},
		client: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}
	for i := 0; i < publishers; i++ {
		secret, err := devcred.NewSecret(rand.Reader)
		if err != nil {
			return nil, err
		}
		hash, err := devcred.HashSecret(rand.Reader, secret)
		if err != nil {
			return nil, err
		}
		s.secrets = append(s.secrets, secret)
		s.ids = append(s.ids, ingest.Identity{Name: publisherID(i), Hash: hash,
			Publish: []string{"devices/+/telemetry"}, Subscribe: []string{"devices/" + publisherID(i) + "/commands"}})
	}
	return s, nil
}

// publisherID is publisher i's client id (and user name when secured).
func publisherID(i int) string { return fmt.Sprintf("embedded-pub-%d", i) }

// configure adds the TLS listener, authentication and ACLs (anonymous
// clients refused) and the agent's default limits.
func (s *securedBroker) configure(bc *ingest.BrokerConfig) {
	bc.TLSConfig, bc.TLSAddr = s.server, "127.0.0.1:0"
	bc.Auth = &ingest.AuthConfig{Identities: s.ids}
	bc.Limits = ingest.DefaultBrokerLimits()
	// Checked on every publish, never trips: the run measures the cost.
	bc.Limits.MessageRate, bc.Limits.MessageBurst = 1e9, 1<<30
}
