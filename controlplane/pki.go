package controlplane

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// File names inside Config.DataDir.
const (
	// CAFile is the CA certificate (PEM), given to operators and agents.
	CAFile = "ca.pem"
	// CAKeyFile is the CA private key (PKCS #8 PEM, mode 0600).
	CAKeyFile = "ca-key.pem"
	// ServerCertFile is the server certificate (PEM).
	ServerCertFile = "server.pem"
	// ServerKeyFile is the server private key (PKCS #8 PEM, mode 0600).
	ServerKeyFile = "server-key.pem"
	// AdminTokenFile holds the bootstrap admin API token (mode 0600).
	AdminTokenFile = "admin.token"
	// DatabaseFile is the default SQLite database.
	DatabaseFile = "controlplane.db"
)

// authority is the control plane's certificate authority.
type authority struct {
	cert    *x509.Certificate
	certPEM []byte
	key     *ecdsa.PrivateKey
	pool    *x509.CertPool
}

// randomSerial returns a positive 127-bit serial number from r.
func randomSerial(r io.Reader) (*big.Int, error) {
	b := make([]byte, 16)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("controlplane: serial number: %w", err)
	}
	b[0] &= 0x7f
	if b[0] == 0 {
		b[0] = 1
	}
	return new(big.Int).SetBytes(b), nil
}

// serialString is the registry's form of a certificate serial number.
func serialString(n *big.Int) string { return n.Text(16) }

func writePEMFile(path, typ string, der []byte, mode fs.FileMode) error {
	var buf bytes.Buffer
	if err := pem.Encode(&buf, &pem.Block{Type: typ, Bytes: der}); err != nil {
		return fmt.Errorf("controlplane: encode %s: %w", path, err)
	}
	return writeFileAtomic(path, buf.Bytes(), mode)
}

// writeFileAtomic writes data to a temporary file created with mode and
// renames it over path, so readers never see a partial file.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("controlplane: write %s: %w", path, err)
	}
	name := tmp.Name()
	defer os.Remove(name)
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("controlplane: write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("controlplane: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("controlplane: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("controlplane: write %s: %w", path, err)
	}
	if err := os.Rename(name, path); err != nil {
		return fmt.Errorf("controlplane: write %s: %w", path, err)
	}
	return nil
}

// readSecretFile reads a file that must not be readable by group or others;
// looser permissions are tightened with a warning.
func readSecretFile(path string, log *slog.Logger) ([]byte, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.Mode().Perm()&0o077 != 0 {
		log.Warn("secret file was readable by others; restricting to 0600", "path", path, "mode", st.Mode().Perm().String())
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("controlplane: chmod %s: %w", path, err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("controlplane: read %s: %w", path, err)
	}
	return b, nil
}

func decodePEM(b []byte, typ, path string) ([]byte, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != typ {
		return nil, fmt.Errorf("controlplane: %s: no %s PEM block", path, typ)
	}
	return blk.Bytes, nil
}

func loadECKey(path string, log *slog.Logger) (*ecdsa.PrivateKey, error) {
	b, err := readSecretFile(path, log)
	if err != nil {
		return nil, fmt.Errorf("controlplane: read %s: %w", path, err)
	}
	der, err := decodePEM(b, "PRIVATE KEY", path)
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("controlplane: parse %s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("controlplane: %s: key is %T, want ECDSA", path, k)
	}
	return ek, nil
}

func loadCert(path string) (*x509.Certificate, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("controlplane: read %s: %w", path, err)
	}
	der, err := decodePEM(b, "CERTIFICATE", path)
	if err != nil {
		return nil, nil, err
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("controlplane: parse %s: %w", path, err)
	}
	return c, b, nil
}

// loadOrCreateCA loads DIR/ca.pem and DIR/ca-key.pem, creating both when
// neither exists.
func loadOrCreateCA(dir string, now time.Time, rnd io.Reader, log *slog.Logger) (*authority, bool, error) {
	certPath, keyPath := filepath.Join(dir, CAFile), filepath.Join(dir, CAKeyFile)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		cert, certPEM, err := loadCert(certPath)
		if err != nil {
			return nil, false, err
		}
		key, err := loadECKey(keyPath, log)
		if err != nil {
			return nil, false, err
		}
		if !key.PublicKey.Equal(cert.PublicKey) {
			return nil, false, fmt.Errorf("controlplane: %s does not match %s", keyPath, certPath)
		}
		if !cert.IsCA {
			return nil, false, fmt.Errorf("controlplane: %s is not a CA certificate", certPath)
		}
		return newAuthority(cert, certPEM, key), false, nil
	case errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist):
	default:
		return nil, false, fmt.Errorf("controlplane: %s and %s must both exist or both be absent (cert: %v, key: %v)", certPath, keyPath, certErr, keyErr)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("controlplane: generate CA key: %w", err)
	}
	serial, err := randomSerial(rnd)
	if err != nil {
		return nil, false, err
	}
	ski := subjectKeyID(&key.PublicKey)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "edgefleet control plane CA", Organization: []string{"edgefleet"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		SubjectKeyId:          ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, false, fmt.Errorf("controlplane: create CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, false, fmt.Errorf("controlplane: marshal CA key: %w", err)
	}
	if err := writePEMFile(keyPath, "PRIVATE KEY", keyDER, 0o600); err != nil {
		return nil, false, err
	}
	if err := writePEMFile(certPath, "CERTIFICATE", der, 0o644); err != nil {
		return nil, false, err
	}
	cert, certPEM, err := loadCert(certPath)
	if err != nil {
		return nil, false, err
	}
	return newAuthority(cert, certPEM, key), true, nil
}

func newAuthority(cert *x509.Certificate, certPEM []byte, key *ecdsa.PrivateKey) *authority {
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &authority{cert: cert, certPEM: certPEM, key: key, pool: pool}
}

func subjectKeyID(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil
	}
	sum := sha256.Sum256(der)
	return sum[:20]
}

// serverNames returns the DNS names and IP addresses the server certificate
// must cover.
func serverNames(listen string, extra []string) (dns []string, ips []net.IP) {
	add := func(n string) {
		n = strings.TrimSpace(n)
		if n == "" {
			return
		}
		if ip := net.ParseIP(n); ip != nil {
			if ip.IsUnspecified() {
				return
			}
			for _, have := range ips {
				if have.Equal(ip) {
					return
				}
			}
			ips = append(ips, ip)
			return
		}
		n = strings.ToLower(n)
		if !slices.Contains(dns, n) {
			dns = append(dns, n)
		}
	}
	add("localhost")
	add("127.0.0.1")
	add("::1")
	if host, _, err := net.SplitHostPort(listen); err == nil {
		add(host)
	}
	for _, n := range extra {
		add(n)
	}
	return dns, ips
}

func certCovers(c *x509.Certificate, dns []string, ips []net.IP) bool {
	for _, d := range dns {
		if !slices.Contains(c.DNSNames, d) {
			return false
		}
	}
	for _, ip := range ips {
		found := false
		for _, have := range c.IPAddresses {
			if have.Equal(ip) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// loadOrCreateServerCert reuses DIR/server.pem when it was issued by ca,
// covers every name and is valid for at least 30 more days; otherwise it
// issues a new one.
func loadOrCreateServerCert(dir string, ca *authority, listen string, extra []string, now time.Time, rnd io.Reader, log *slog.Logger) (tls.Certificate, error) {
	certPath, keyPath := filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile)
	dns, ips := serverNames(listen, extra)
	if cert, _, err := loadCert(certPath); err == nil {
		key, kerr := loadECKey(keyPath, log)
		ok := kerr == nil && key.PublicKey.Equal(cert.PublicKey) &&
			cert.CheckSignatureFrom(ca.cert) == nil &&
			certCovers(cert, dns, ips) &&
			now.Add(30*24*time.Hour).Before(cert.NotAfter)
		if ok {
			return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}, nil
		}
		log.Info("reissuing server certificate", "path", certPath)
	} else if !errors.Is(err, fs.ErrNotExist) {
		log.Warn("server certificate unreadable; reissuing", "path", certPath, "err", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("controlplane: generate server key: %w", err)
	}
	serial, err := randomSerial(rnd)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: dns[0], Organization: []string{"edgefleet"}},
		NotBefore:      now.Add(-time.Hour),
		NotAfter:       now.AddDate(1, 0, 0),
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:       dns,
		IPAddresses:    ips,
		AuthorityKeyId: ca.cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("controlplane: create server certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("controlplane: marshal server key: %w", err)
	}
	if err := writePEMFile(keyPath, "PRIVATE KEY", keyDER, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := writePEMFile(certPath, "CERTIFICATE", der, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("controlplane: parse server certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// parseCSR decodes and checks an agent's certificate signing request.
func parseCSR(csrPEM string) (*x509.CertificateRequest, error) {
	blk, rest := pem.Decode([]byte(csrPEM))
	if blk == nil {
		return nil, errors.New("csr: no PEM block")
	}
	if blk.Type != "CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("csr: PEM block is %q, want \"CERTIFICATE REQUEST\"", blk.Type)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("csr: trailing data after the PEM block")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("csr: %v", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr: signature does not verify: %v", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("csr: ECDSA curve %s not accepted (P-256 or P-384)", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("csr: RSA key of %d bits is too small (minimum 2048)", k.N.BitLen())
		}
	default:
		return nil, fmt.Errorf("csr: unsupported public key type %T", csr.PublicKey)
	}
	return csr, nil
}

// issueAgentCert signs a client certificate for agentID with the CSR's key.
// The subject and names in the CSR are ignored: the certificate names the
// agent id only.
func (a *authority) issueAgentCert(csr *x509.CertificateRequest, agentID string, now time.Time, ttl time.Duration, rnd io.Reader) (*x509.Certificate, []byte, error) {
	serial, err := randomSerial(rnd)
	if err != nil {
		return nil, nil, err
	}
	u, err := url.Parse(cpapi.AgentURI(agentID))
	if err != nil {
		return nil, nil, fmt.Errorf("controlplane: agent URI: %w", err)
	}
	notAfter := now.Add(ttl)
	if notAfter.After(a.cert.NotAfter) {
		notAfter = a.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:   serial,
		Subject:        pkix.Name{CommonName: agentID, Organization: []string{"edgefleet agents"}},
		NotBefore:      now.Add(-5 * time.Minute),
		NotAfter:       notAfter,
		KeyUsage:       x509.KeyUsageDigitalSignature,
		ExtKeyUsage:    []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		URIs:           []*url.URL{u},
		AuthorityKeyId: a.cert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, csr.PublicKey, a.key)
	if err != nil {
		return nil, nil, fmt.Errorf("controlplane: sign agent certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("controlplane: parse agent certificate: %w", err)
	}
	return cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// agentIDFromCert extracts the agent id from a verified client certificate:
// its URI SAN must be urn:edgefleet:agent:<id> and agree with the
// CommonName.
func agentIDFromCert(c *x509.Certificate) (string, error) {
	var id string
	for _, u := range c.URIs {
		if s := u.String(); strings.HasPrefix(s, cpapi.AgentURIPrefix) {
			id = strings.TrimPrefix(s, cpapi.AgentURIPrefix)
			break
		}
	}
	if id == "" {
		return "", errors.New("client certificate carries no agent URI")
	}
	if c.Subject.CommonName != id {
		return "", fmt.Errorf("client certificate CommonName %q does not match agent URI %q", c.Subject.CommonName, id)
	}
	return id, nil
}
