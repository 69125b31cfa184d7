package clientconfig

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func testCAPEM(t testing.TB) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestParse(t *testing.T) {
	good := `current-context: a
contexts:
  - name: a
    server: https://cp.example:8443
    token: efp_x
  - name: b
    server: cp2.example
`
	f, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if f.CurrentContext != "a" || len(f.Contexts) != 2 || f.Contexts[0].Token != "efp_x" {
		t.Fatalf("parsed %+v", f)
	}
	if f, err := Parse(nil); err != nil || len(f.Contexts) != 0 {
		t.Fatalf("empty file: %+v, %v", f, err)
	}
	bad := map[string]string{
		"unknown field":          "contexts:\n  - name: a\n    server: https://x\n    tokn: y\n",
		"unknown top":            "current_context: a\n",
		"duplicate name":         "contexts:\n  - {name: a, server: https://x}\n  - {name: a, server: https://y}\n",
		"http scheme":            "contexts:\n  - {name: a, server: http://x}\n",
		"missing server":         "contexts:\n  - {name: a}\n",
		"missing name":           "contexts:\n  - {server: https://x}\n",
		"not yaml":               "contexts: [\n",
		"wrong type":             "contexts: 7\n",
		"two documents":          "current-context: a\n---\ncurrent-context: b\n",
		"token with space":       "contexts:\n  - {name: a, server: https://x, token: 'a b'}\n",
		"server with path query": "contexts:\n  - {name: a, server: 'https://x/?q=1'}\n",
	}
	for name, in := range bad {
		if _, err := Parse([]byte(in)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
}

func TestDefaultPathRespectsXDG(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", dir)
	p, err := DefaultPath()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "edgefleet", "config.yaml"); p != want {
		t.Fatalf("DefaultPath = %s, want %s", p, want)
	}
	t.Setenv("XDG_CONFIG_HOME", "relative/dir")
	t.Setenv("HOME", dir)
	p, _ = DefaultPath()
	if want := filepath.Join(dir, ".config", "edgefleet", "config.yaml"); p != want {
		t.Fatalf("relative XDG_CONFIG_HOME: DefaultPath = %s, want %s", p, want)
	}
	t.Setenv(EnvConfig, "/etc/x.yaml")
	if p, _ = DefaultPath(); p != "/etc/x.yaml" {
		t.Fatalf("%s: DefaultPath = %s", EnvConfig, p)
	}
}

func TestWriteAndSelect(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "config.yaml")
	ca := testCAPEM(t)
	if err := WriteAndSelect(path, Context{Name: "prod", Server: "https://cp:8443/", Token: "efp_1", CA: "/etc/ca.pem"}); err != nil {
		t.Fatal(err)
	}
	if err := WriteAndSelect(path, Context{Name: "sim", Server: "https://127.0.0.1:9000", Token: "efp_2", CA: ca}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %04o, want 0600", st.Mode().Perm())
	}
	if dst, _ := os.Stat(filepath.Dir(path)); dst.Mode().Perm() != 0o700 {
		t.Fatalf("directory mode %04o, want 0700", dst.Mode().Perm())
	}
	if err := CheckMode(path); err != nil {
		t.Fatal(err)
	}
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if f.CurrentContext != "sim" || len(f.Contexts) != 2 {
		t.Fatalf("file %+v", f)
	}
	if c, _ := f.Get("prod"); c.Server != "https://cp:8443" {
		t.Fatalf("server not normalized: %q", c.Server)
	}
	if c, _ := f.Get("sim"); c.CA != ca {
		t.Fatalf("inline CA did not round-trip:\n%q\n%q", c.CA, ca)
	}
	// Replacing keeps one context of the name.
	if err := WriteAndSelect(path, Context{Name: "prod", Server: "https://cp2:8443", Token: "efp_3"}); err != nil {
		t.Fatal(err)
	}
	f, _ = Load(path)
	if c, _ := f.Get("prod"); len(f.Contexts) != 2 || c.Server != "https://cp2:8443" || f.CurrentContext != "prod" {
		t.Fatalf("after replace: %+v", f)
	}
	// An invalid context writes nothing.
	before, _ := os.ReadFile(path)
	if err := WriteAndSelect(path, Context{Name: "x", Server: "http://insecure"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("insecure server: %v", err)
	}
	after, _ := os.ReadFile(path)
	if string(before) != string(after) {
		t.Fatal("failed update changed the file")
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 2 { // config.yaml and its lock
		t.Fatalf("stray files: %v", entries)
	}
}

func TestCheckModeInsecure(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte("contexts: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o644)
	if err := CheckMode(path); !errors.Is(err, ErrInsecureMode) {
		t.Fatalf("CheckMode = %v, want ErrInsecureMode", err)
	}
	if err := CheckMode(filepath.Join(t.TempDir(), "missing")); err != nil {
		t.Fatal(err)
	}
}

func TestUpdateConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := Context{Name: fmt.Sprintf("c%d", i), Server: fmt.Sprintf("https://h%d", i), Token: "t"}
			if err := WriteAndSelect(path, c); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	f, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Contexts) != 8 {
		t.Fatalf("%d contexts after 8 concurrent writers, want 8", len(f.Contexts))
	}
}

func TestUseAndDelete(t *testing.T) {
	f := &File{}
	if err := f.Use("nope"); !errors.Is(err, ErrNoContext) {
		t.Fatal(err)
	}
	f.Set(Context{Name: "a", Server: "https://a"})
	f.Use("a")
	if err := f.Delete("a"); err != nil || f.CurrentContext != "" || len(f.Contexts) != 0 {
		t.Fatalf("delete: %v %+v", err, f)
	}
	if err := f.Delete("a"); !errors.Is(err, ErrNoContext) {
		t.Fatal(err)
	}
}

func TestResolvePrecedence(t *testing.T) {
	dir := t.TempDir()
	ca := testCAPEM(t)
	if err := os.WriteFile(filepath.Join(dir, "ca.pem"), []byte(ca), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "config.yaml")
	f := &File{path: path, CurrentContext: "a", Contexts: []Context{
		{Name: "a", Server: "https://a:1", Token: "tok-a", CA: "ca.pem"}, // relative to the file
		{Name: "b", Server: "https://b:2", Token: "tok-b", CA: ca},
	}}

	// Current context alone.
	c, err := Resolve(f, Settings{}, Settings{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Server != "https://a:1" || c.Token != "tok-a" || c.Context != "a" || string(c.CAPEM) != ca || c.TokenFrom != `context "a"` {
		t.Fatalf("current context: %+v", c)
	}
	// Env selects another context; flags beat env.
	c, _ = Resolve(f, Settings{}, Settings{Context: "b"})
	if c.Server != "https://b:2" || c.Token != "tok-b" {
		t.Fatalf("env context: %+v", c)
	}
	c, _ = Resolve(f, Settings{Context: "a"}, Settings{Context: "b"})
	if c.Context != "a" {
		t.Fatalf("flag context: %+v", c)
	}
	// Env token overrides the context's, flag token overrides env.
	c, _ = Resolve(f, Settings{}, Settings{Token: "env-tok"})
	if c.Token != "env-tok" || c.TokenFrom != EnvToken || c.Server != "https://a:1" {
		t.Fatalf("env token: %+v", c)
	}
	c, _ = Resolve(f, Settings{Token: "flag-tok"}, Settings{Token: "env-tok"})
	if c.Token != "flag-tok" || c.TokenFrom != "--token" {
		t.Fatalf("flag token: %+v", c)
	}
	// A server override to the same server keeps the context's credentials.
	c, err = Resolve(f, Settings{Server: "a:1"}, Settings{})
	if err != nil || c.Token != "tok-a" {
		t.Fatalf("same server: %+v %v", c, err)
	}
	// Another server does not receive the context's token.
	_, err = Resolve(f, Settings{Server: "https://evil:1"}, Settings{})
	if !errors.Is(err, ErrNoToken) || !strings.Contains(err.Error(), `context "a" is for https://a:1`) {
		t.Fatalf("other server: %v", err)
	}
	c, err = Resolve(f, Settings{Server: "https://other:1"}, Settings{Token: "t", CA: filepath.Join(dir, "ca.pem")})
	if err != nil || c.Token != "t" || c.Context != "" || c.CAFrom != EnvCA {
		t.Fatalf("other server with env token: %+v %v", c, err)
	}
	// Errors.
	if _, err := Resolve(f, Settings{Context: "zzz"}, Settings{}); !errors.Is(err, ErrNoContext) {
		t.Fatalf("unknown context: %v", err)
	}
	if _, err := Resolve(nil, Settings{}, Settings{}); !errors.Is(err, ErrNoServer) {
		t.Fatalf("nothing: %v", err)
	}
	if _, err := Resolve(nil, Settings{Server: "https://x"}, Settings{}); !errors.Is(err, ErrNoToken) {
		t.Fatalf("no token: %v", err)
	}
	if _, err := Resolve(nil, Settings{Server: "http://x", Token: "t"}, Settings{}); err == nil || !strings.Contains(err.Error(), "https") {
		t.Fatalf("http server: %v", err)
	}
	_, err = Resolve(nil, Settings{Server: "https://x", Token: "t", CA: filepath.Join(dir, "missing.pem")}, Settings{})
	if err == nil || !strings.Contains(err.Error(), "CA from --ca") {
		t.Fatalf("missing CA: %v", err)
	}
}

func TestLoadCA(t *testing.T) {
	ca := testCAPEM(t)
	if _, err := LoadCA(ca, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", ""); err == nil {
		t.Fatal("garbage certificate accepted")
	}
	path := filepath.Join(t.TempDir(), "x.pem")
	os.WriteFile(path, []byte("not pem"), 0o600)
	if _, err := LoadCA(path, ""); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Fatalf("not pem: %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("current-context: a\ncontexts:\n  - name: a\n    server: https://x:1\n    token: t\n    ca: /p\n"))
	f.Add([]byte("contexts:\n  - {name: a, server: x}\n  - {name: a, server: y}\n"))
	f.Add([]byte("contexts: [{name: a, server: 'https://[::1]:8443', ca: \"-----BEGIN CERTIFICATE-----\\n\"}]\n"))
	f.Add([]byte("contexts:\n  - {name: gw, agent: '10.0.0.7:7070'}\n  - {name: b, server: x, agent: 'https://h:1/'}\n"))
	f.Add([]byte("&a [*a, *a]"))
	f.Add([]byte("current-context: !!binary AAAA\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		// Whatever parses must survive a round trip.
		out, err := file.Marshal()
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		again, err := Parse(out)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", out, err)
		}
		if len(again.Contexts) != len(file.Contexts) || again.CurrentContext != file.CurrentContext {
			t.Fatalf("round trip changed %+v into %+v", file, again)
		}
	})
}
