package cpapi

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
)

// AgentURIPrefix starts the URI SAN of an agent's client certificate;
// the agent id follows it.
const AgentURIPrefix = "urn:edgefleet:agent:"

// AgentURI returns the URI SAN carried by an agent's client certificate.
func AgentURI(agentID string) string { return AgentURIPrefix + agentID }

// GenerateAgentKey creates an ECDSA P-256 key pair for an agent and a PEM
// certificate signing request for it, ready for EnrollRequest.CSR.
func GenerateAgentKey(name string) (*ecdsa.PrivateKey, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", fmt.Errorf("controlplane: generate agent key: %w", err)
	}
	csrPEM, err := CreateCSR(key, name)
	if err != nil {
		return nil, "", err
	}
	return key, csrPEM, nil
}

// CreateCSR returns a PEM certificate signing request for key. The subject
// is informative only; the control plane names the certificate itself.
func CreateCSR(key crypto.Signer, name string) (string, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return "", fmt.Errorf("controlplane: create CSR: %w", err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// AgentCertificate combines an enrollment answer's certificate with the
// agent's private key into a tls.Certificate for Client.
func AgentCertificate(certPEM string, key crypto.PrivateKey) (tls.Certificate, error) {
	blk, _ := pem.Decode([]byte(certPEM))
	if blk == nil || blk.Type != "CERTIFICATE" {
		return tls.Certificate{}, errors.New("controlplane: agent certificate: no CERTIFICATE PEM block")
	}
	der := blk.Bytes
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("controlplane: parse agent certificate: %w", err)
	}
	if pk, ok := key.(interface{ Public() crypto.PublicKey }); !ok || !publicKeysEqual(pk.Public(), leaf.PublicKey) {
		return tls.Certificate{}, errors.New("controlplane: agent certificate does not match the private key")
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// CertPoolFromPEM parses one or more PEM certificates into a pool.
func CertPoolFromPEM(pemBytes []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		return nil, errors.New("controlplane: CA bundle holds no PEM certificate")
	}
	return pool, nil
}
