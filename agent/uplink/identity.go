package uplink

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// Files of the agent's identity, in DataDir/controlplane/.
const (
	// IdentityDir is the folder under the agent's data dir.
	IdentityDir = "controlplane"
	// KeyFile is the agent's private key (PKCS #8 PEM, mode 0600). It is
	// generated on the agent and never leaves it.
	KeyFile = "agent-key.pem"
	// CertFile is the agent's client certificate (PEM), issued at
	// enrollment.
	CertFile = "agent.pem"
	// CAFile is the control plane CA bundle received at enrollment; it
	// verifies the server from then on.
	CAFile = "ca.pem"
	// IdentityFile records the enrollment (identity.json), written last.
	IdentityFile = "identity.json"
)

// identityRecord is identity.json.
type identityRecord struct {
	AgentID    string    `json:"agent_id"`
	Server     string    `json:"server"`
	EnrolledAt time.Time `json:"enrolled_at"`
	// KeysVerifyingKey is the control plane's ML-DSA-65 key that signs
	// key messages (base64 in JSON), pinned at enrollment or, for an
	// agent enrolled before it was sent, at its first key fetch.
	KeysVerifyingKey []byte `json:"keys_verifying_key,omitempty"`
}

// verifyingKey parses the pinned key-message signing key; nil when none
// is pinned yet.
func (r *identityRecord) verifyingKey() (*pqcrypto.VerifyingKey, error) {
	if len(r.KeysVerifyingKey) == 0 {
		return nil, nil
	}
	vk, err := pqcrypto.ParseVerifyingKey(r.KeysVerifyingKey)
	if err != nil {
		return nil, fmt.Errorf("keys_verifying_key: %w", err)
	}
	return vk, nil
}

// identity is a loaded agent identity.
type identity struct {
	identityRecord
	cert  tls.Certificate
	caPEM []byte
}

// loadIdentity reads the stored identity of dir; (nil, nil) when the agent
// has not enrolled. A certificate and key without identity.json (a crash
// between writing them) are recovered.
func loadIdentity(dir string) (*identity, error) {
	recPath := filepath.Join(dir, IdentityFile)
	data, err := os.ReadFile(recPath)
	var rec identityRecord
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &rec); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrIdentity, recPath, err)
		}
		if rec.AgentID == "" {
			return nil, fmt.Errorf("%w: %s: agent_id is empty", ErrIdentity, recPath)
		}
		if _, err := rec.verifyingKey(); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrIdentity, recPath, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		if _, err := os.Stat(filepath.Join(dir, CertFile)); err != nil {
			return nil, nil
		}
	default:
		return nil, fmt.Errorf("%w: %v", ErrIdentity, err)
	}
	key, err := loadKey(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, err
	}
	certPath := filepath.Join(dir, CertFile)
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIdentity, err)
	}
	cert, err := cpapi.AgentCertificate(string(certPEM), key)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrIdentity, certPath, err)
	}
	caPath := filepath.Join(dir, CAFile)
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIdentity, err)
	}
	if _, err := cpapi.CertPoolFromPEM(caPEM); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrIdentity, caPath, err)
	}
	id := agentIDOf(cert.Leaf)
	if id == "" {
		return nil, fmt.Errorf("%w: %s names no agent", ErrIdentity, certPath)
	}
	if rec.AgentID == "" { // recovered from the certificate
		rec = identityRecord{AgentID: id, EnrolledAt: cert.Leaf.NotBefore.Add(5 * time.Minute).UTC()}
	} else if rec.AgentID != id {
		return nil, fmt.Errorf("%w: %s says agent %q, the certificate %q", ErrIdentity, recPath, rec.AgentID, id)
	}
	return &identity{identityRecord: rec, cert: cert, caPEM: caPEM}, nil
}

// agentIDOf returns the agent id a control plane certificate names (its
// urn:edgefleet:agent: URI, which matches its CommonName).
func agentIDOf(c *x509.Certificate) string {
	prefix := cpapi.AgentURI("")
	for _, u := range c.URIs {
		if s := u.String(); strings.HasPrefix(s, prefix) {
			return strings.TrimPrefix(s, prefix)
		}
	}
	return ""
}

// loadKey reads the agent key, tightening loose permissions.
func loadKey(path string) (crypto.Signer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIdentity, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("%w: restrict %s to 0600: %v", ErrIdentity, path, err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrIdentity, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("%w: %s: no PRIVATE KEY PEM block", ErrIdentity, path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrIdentity, path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: %s: key type %T cannot sign", ErrIdentity, path, k)
	}
	return s, nil
}

// enrollmentKey returns the key to enroll with: the one already stored
// (an enrollment that did not finish) or a new ECDSA P-256 key, written
// to dir before it is used.
func enrollmentKey(dir string) (crypto.Signer, error) {
	path := filepath.Join(dir, KeyFile)
	if _, err := os.Stat(path); err == nil {
		return loadKey(path)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("uplink: generate agent key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("uplink: encode agent key: %w", err)
	}
	if err := writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	return key, nil
}

// saveIdentity stores an enrollment answer: CA bundle, certificate, then
// identity.json, each written atomically.
func saveIdentity(dir string, key crypto.Signer, resp cpapi.EnrollResponse, server string, at time.Time) (*identity, error) {
	cert, err := cpapi.AgentCertificate(resp.Certificate, key)
	if err != nil {
		return nil, fmt.Errorf("uplink: enrollment answer: %w", err)
	}
	if id := agentIDOf(cert.Leaf); id != resp.AgentID {
		return nil, fmt.Errorf("uplink: enrollment answer: certificate names agent %q, answer %q", id, resp.AgentID)
	}
	if _, err := cpapi.CertPoolFromPEM([]byte(resp.CABundle)); err != nil {
		return nil, fmt.Errorf("uplink: enrollment answer: ca_bundle: %w", err)
	}
	rec := identityRecord{AgentID: resp.AgentID, Server: server, EnrolledAt: at.UTC(), KeysVerifyingKey: resp.KeysVerifyingKey}
	if _, err := rec.verifyingKey(); err != nil {
		return nil, fmt.Errorf("uplink: enrollment answer: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
	}{{CAFile, []byte(resp.CABundle)}, {CertFile, []byte(resp.Certificate)}} {
		if err := writeFileAtomic(filepath.Join(dir, f.name), f.data, 0o644); err != nil {
			return nil, err
		}
	}
	if err := writeIdentityRecord(dir, rec); err != nil {
		return nil, err
	}
	return &identity{identityRecord: rec, cert: cert, caPEM: []byte(resp.CABundle)}, nil
}

// writeIdentityRecord writes identity.json.
func writeIdentityRecord(dir string, rec identityRecord) error {
	js, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("uplink: encode identity: %w", err)
	}
	return writeFileAtomic(filepath.Join(dir, IdentityFile), append(js, '\n'), 0o644)
}

// writeFileAtomic writes data to a temporary file with mode, syncs it and
// renames it over path, then syncs the folder: readers see the old or the
// new file, never a part.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("uplink: write %s: %w", path, err)
	}
	name := tmp.Name()
	defer os.Remove(name)
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("uplink: write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("uplink: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("uplink: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("uplink: write %s: %w", path, err)
	}
	if err := os.Rename(name, path); err != nil {
		return fmt.Errorf("uplink: write %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
