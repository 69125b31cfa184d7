package clientconfig

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
)

// Environment variables read by FromEnv.
const (
	EnvServer  = "EDGEFLEET_SERVER"
	EnvToken   = "EDGEFLEET_TOKEN"
	EnvCA      = "EDGEFLEET_CA"
	EnvContext = "EDGEFLEET_CONTEXT"
	// EnvConfig overrides the path of the contexts file.
	EnvConfig = "EDGEFLEET_CONFIG"
	// EnvAgent is the base URL of an agent's local API.
	EnvAgent = "EDGEFLEET_AGENT"
)

// DefaultAgent is the agent API used when no flag, variable or context
// names one: the agent's default api.addr on this machine.
const DefaultAgent = "http://127.0.0.1:7070"

// maxCABytes bounds a CA bundle read from a file.
const maxCABytes = 1 << 20

// Settings are connection values from one source (flags or environment).
// Empty fields are unset.
type Settings struct {
	Server  string
	Token   string
	CA      string // a path, or PEM text
	Context string
	Agent   string // base URL of an agent's local API
}

// FromEnv reads Settings from the EDGEFLEET_* variables through getenv
// (nil: os.Getenv).
func FromEnv(getenv func(string) string) Settings {
	if getenv == nil {
		getenv = os.Getenv
	}
	return Settings{
		Server:  getenv(EnvServer),
		Token:   getenv(EnvToken),
		CA:      getenv(EnvCA),
		Context: getenv(EnvContext),
		Agent:   getenv(EnvAgent),
	}
}

// Connection is the resolved way to reach a control plane.
type Connection struct {
	// Server is the normalized base URL.
	Server string
	// Token is the API token ("" when no source gave one).
	Token string
	// CAPEM is the CA bundle; nil means the system roots.
	CAPEM []byte
	// Context is the name of the context that contributed values ("" if
	// none did).
	Context string
	// ServerFrom, TokenFrom and CAFrom say where each value came from:
	// the flag ("--token"), the environment variable ("EDGEFLEET_TOKEN"),
	// `context "NAME"`, or "" when unset.
	ServerFrom, TokenFrom, CAFrom string
}

// Resolve combines flags, environment and the selected context of f (which
// may be nil) into a Connection; see the package documentation for the
// precedence. It fails with ErrNoContext when a named context does not
// exist, ErrNoServer when no server is known, ErrNoToken when no token is
// known, or an error naming the CA source when the CA cannot be read.
func Resolve(f *File, flags, env Settings) (Connection, error) {
	if f == nil {
		f = &File{}
	}
	var conn Connection
	var ctx *Context
	name, nameFrom := first(flags.Context, "--context", env.Context, EnvContext, f.CurrentContext, "current-context")
	if name != "" {
		c, ok := f.Get(name)
		if !ok {
			where := f.path
			if where == "" {
				where = "the contexts file"
			}
			return conn, fmt.Errorf("%w: %q (from %s) is not in %s (known: %s)", ErrNoContext, name, nameFrom, where, f.names())
		}
		ctx = &c
	}
	ctxLabel := ""
	if ctx != nil {
		ctxLabel = fmt.Sprintf("context %q", ctx.Name)
	}

	server, from := first(flags.Server, "--server", env.Server, EnvServer, "", "")
	if server == "" && ctx != nil {
		server, from = ctx.Server, ctxLabel
	}
	if server == "" {
		return conn, fmt.Errorf("%w: pass --server, set %s, or run 'edgectl login'", ErrNoServer, EnvServer)
	}
	norm, err := NormalizeServer(server)
	if err != nil {
		return conn, fmt.Errorf("clientconfig: %s: %w", from, err)
	}
	conn.Server, conn.ServerFrom = norm, from

	// The context's credentials belong to the context's server only.
	useCtx := false
	if ctx != nil {
		cs, err := NormalizeServer(ctx.Server)
		useCtx = err == nil && cs == conn.Server
	}
	if useCtx {
		conn.Context = ctx.Name
	}

	conn.Token, conn.TokenFrom = first(flags.Token, "--token", env.Token, EnvToken, "", "")
	if conn.Token == "" && useCtx && ctx.Token != "" {
		conn.Token, conn.TokenFrom = ctx.Token, ctxLabel
	}

	var caBase string
	ca, caFrom := first(flags.CA, "--ca", env.CA, EnvCA, "", "")
	if ca == "" && useCtx && ctx.CA != "" {
		ca, caFrom = ctx.CA, ctxLabel
		if f.path != "" {
			caBase = filepath.Dir(f.path)
		}
	}
	if ca != "" {
		pemBytes, err := LoadCA(ca, caBase)
		if err != nil {
			return conn, fmt.Errorf("clientconfig: CA from %s: %w", caFrom, err)
		}
		conn.CAPEM, conn.CAFrom = pemBytes, caFrom
	}

	if conn.Token == "" {
		hint := ""
		if ctx != nil && !useCtx {
			hint = fmt.Sprintf(" (context %q is for %s, so its token is not sent to %s)", ctx.Name, ctx.Server, conn.Server)
		}
		return conn, fmt.Errorf("%w for %s: pass --token, set %s, or run 'edgectl login'%s", ErrNoToken, conn.Server, EnvToken, hint)
	}
	return conn, nil
}

// first returns the first non-empty value with its label.
func first(v1, l1, v2, l2, v3, l3 string) (string, string) {
	switch {
	case v1 != "":
		return v1, l1
	case v2 != "":
		return v2, l2
	case v3 != "":
		return v3, l3
	}
	return "", ""
}

// IsPEM reports whether s is PEM text rather than a path.
func IsPEM(s string) bool {
	return strings.HasPrefix(strings.TrimSpace(s), "-----BEGIN")
}

// LoadCA returns the CA bundle named by value: the value itself when it is
// PEM text, else the contents of the file it names ("~/" expands to the home
// directory; a relative path is taken relative to base when base is not
// empty). The bundle must hold at least one parsable certificate.
func LoadCA(value, base string) ([]byte, error) {
	var data []byte
	if IsPEM(value) {
		data = []byte(value)
	} else {
		path := value
		if rest, ok := strings.CutPrefix(path, "~/"); ok {
			home, err := os.UserHomeDir()
			if err != nil {
				return nil, err
			}
			path = filepath.Join(home, rest)
		}
		if base != "" && !filepath.IsAbs(path) {
			path = filepath.Join(base, path)
		}
		fh, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer fh.Close()
		data, err = io.ReadAll(io.LimitReader(fh, maxCABytes+1))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		if len(data) > maxCABytes {
			return nil, fmt.Errorf("%s is larger than %d bytes", path, maxCABytes)
		}
	}
	if err := checkCertificates(data); err != nil {
		return nil, err
	}
	return data, nil
}

// checkCertificates requires at least one PEM CERTIFICATE block, all of
// which parse.
func checkCertificates(data []byte) error {
	n := 0
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("no PEM certificate found")
	}
	return nil
}

// NormalizeAgent turns an agent API address into the base URL form used
// everywhere: "http://host:port" (or https) without a trailing slash. An
// address without a scheme gets http:// (the agent's local API is plain
// HTTP on loopback); a path, query, fragment or user info is refused.
func NormalizeAgent(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("agent API address is empty")
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("agent API %q: %v", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("agent API %q: scheme must be http or https", s)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return "", fmt.Errorf("agent API %q: want http://host:port", s)
	}
	u.Path = ""
	return u.String(), nil
}

// AgentTarget is the resolved agent API.
type AgentTarget struct {
	// URL is the normalized base URL.
	URL string
	// From says where it came from: "--agent", EDGEFLEET_AGENT,
	// `context "NAME"` or "default".
	From string
}

// ResolveAgent works out which agent API to use: flags.Agent (--agent),
// then env.Agent (EDGEFLEET_AGENT), then the agent of the selected context
// of f (which may be nil; selected by --context, EDGEFLEET_CONTEXT or
// current-context), then DefaultAgent. A context named by --context or
// EDGEFLEET_CONTEXT must exist (ErrNoContext); a malformed address is an
// error naming its source.
func ResolveAgent(f *File, flags, env Settings) (AgentTarget, error) {
	if f == nil {
		f = &File{}
	}
	var ctx *Context
	name, nameFrom := first(flags.Context, "--context", env.Context, EnvContext, f.CurrentContext, "current-context")
	if name != "" {
		c, ok := f.Get(name)
		switch {
		case ok:
			ctx = &c
		case nameFrom != "current-context":
			where := f.path
			if where == "" {
				where = "the contexts file"
			}
			return AgentTarget{}, fmt.Errorf("%w: %q (from %s) is not in %s (known: %s)", ErrNoContext, name, nameFrom, where, f.names())
		}
	}
	addr, from := first(flags.Agent, "--agent", env.Agent, EnvAgent, "", "")
	if addr == "" && ctx != nil && ctx.Agent != "" {
		addr, from = ctx.Agent, fmt.Sprintf("context %q", ctx.Name)
	}
	if addr == "" {
		return AgentTarget{URL: DefaultAgent, From: "default"}, nil
	}
	u, err := NormalizeAgent(addr)
	if err != nil {
		return AgentTarget{}, fmt.Errorf("clientconfig: %s: %w", from, err)
	}
	return AgentTarget{URL: u, From: from}, nil
}
