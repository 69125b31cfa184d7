// Package clientconfig reads and writes edgectl's contexts file and resolves
// which control plane, API token and CA certificate a command uses.
//
// The file lives at $XDG_CONFIG_HOME/edgefleet/config.yaml (default
// ~/.config/edgefleet/config.yaml; EDGEFLEET_CONFIG overrides), is written with mode 0600 because it
// holds API tokens, and looks like this:
//
//	current-context: prod
//	contexts:
//	  - name: prod
//	    server: https://cp.example.net:8443
//	    token: efp_...
//	    ca: /etc/edgefleet/ca.pem      # a path, or the PEM text itself
//	  - name: sim
//	    server: https://127.0.0.1:8443
//	    token: efp_...
//	    ca: |
//	      -----BEGIN CERTIFICATE-----
//	      ...
//	  - name: gateway-3
//	    agent: http://10.0.0.3:7070      # an agent's local API (edgectl devices)
//
// Precedence, per value: command-line flags, then EDGEFLEET_SERVER /
// EDGEFLEET_TOKEN / EDGEFLEET_CA, then the selected context (--context,
// else EDGEFLEET_CONTEXT, else current-context). A context's token and CA
// are only used with that context's own server: when the server is
// overridden by a flag or the environment, credentials stored for another
// server are never sent to it.
//
// The agent's local API, which `edgectl devices` talks to, resolves the
// same way on its own (see ResolveAgent): --agent, then EDGEFLEET_AGENT,
// then the selected context's agent, then DefaultAgent. A context may name
// only an agent, without a server.
//
// Programs that create a control plane (edgectl login, edgectl sim --serve)
// call WriteAndSelect to store a context and make it current.
package clientconfig

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// FileName is the contexts file's name inside its directory.
const FileName = "config.yaml"

// MaxFileBytes bounds the contexts file read by Load.
const MaxFileBytes = 1 << 20

var (
	// ErrInvalid means the contexts file, or a context given to it, is
	// malformed: bad YAML, an unknown field, a missing or duplicate name, or
	// a server that is not an https URL.
	ErrInvalid = errors.New("clientconfig: invalid contexts file")
	// ErrNoContext means a context was named (flag, environment or
	// current-context) that the file does not contain.
	ErrNoContext = errors.New("clientconfig: no such context")
	// ErrNoServer means no control plane URL was given by any source.
	ErrNoServer = errors.New("clientconfig: no control plane server")
	// ErrNoToken means no API token was given by any source.
	ErrNoToken = errors.New("clientconfig: no API token")
	// ErrInsecureMode means the contexts file can be read or written by
	// users other than its owner.
	ErrInsecureMode = errors.New("clientconfig: contexts file is accessible to other users")
)

// Context is one named control plane with the credentials to use there.
type Context struct {
	// Name identifies the context (required, unique).
	Name string `yaml:"name" json:"name"`
	// Server is the control plane's base URL, https://host[:port].
	// Required unless Agent is set.
	Server string `yaml:"server,omitempty" json:"server"`
	// Token is an operator API token.
	Token string `yaml:"token,omitempty" json:"-"`
	// CA is the control plane CA certificate: either its PEM text or the
	// path of a PEM file (relative paths are relative to the contexts
	// file's directory). Empty means the system roots.
	CA string `yaml:"ca,omitempty" json:"-"`
	// Agent is the base URL of an agent's local API, http://host:port
	// (edgectl devices). Empty means DefaultAgent.
	Agent string `yaml:"agent,omitempty" json:"agent,omitempty"`
}

// File is the contents of a contexts file.
type File struct {
	CurrentContext string    `yaml:"current-context"`
	Contexts       []Context `yaml:"contexts"`

	// path is where the file was loaded from; relative CA paths resolve
	// against its directory.
	path string
}

// DefaultPath returns the contexts file's path from the process
// environment; see PathFrom.
func DefaultPath() (string, error) { return PathFrom(os.Getenv) }

// PathFrom returns the contexts file's path: $EDGEFLEET_CONFIG if set,
// else $XDG_CONFIG_HOME/edgefleet/config.yaml, else
// $HOME/.config/edgefleet/config.yaml (XDG_CONFIG_HOME is ignored when it
// is not absolute, as the XDG base directory specification asks).
func PathFrom(getenv func(string) string) (string, error) {
	if p := getenv(EnvConfig); p != "" {
		return p, nil
	}
	if x := getenv("XDG_CONFIG_HOME"); x != "" && filepath.IsAbs(x) {
		return filepath.Join(x, "edgefleet", FileName), nil
	}
	home := getenv("HOME")
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("clientconfig: locate the contexts file: %w", err)
		}
		home = h
	}
	return filepath.Join(home, ".config", "edgefleet", FileName), nil
}

// Path returns where the file was loaded from ("" if it was parsed from
// bytes).
func (f *File) Path() string { return f.path }

// Parse decodes and validates a contexts file. Unknown fields are errors.
func Parse(data []byte) (*File, error) {
	f := &File{}
	if len(bytes.TrimSpace(data)) == 0 {
		return f, nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(f); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, fmt.Errorf("%w: more than one YAML document", ErrInvalid)
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return f, nil
}

// Validate checks every context and the uniqueness of names. A
// current-context that names no context is allowed here (it is reported
// when it is used).
func (f *File) Validate() error {
	seen := make(map[string]bool, len(f.Contexts))
	for i, c := range f.Contexts {
		if err := c.Validate(); err != nil {
			return fmt.Errorf("contexts[%d]: %w", i, err)
		}
		if seen[c.Name] {
			return fmt.Errorf("%w: contexts[%d]: name %q used twice", ErrInvalid, i, c.Name)
		}
		seen[c.Name] = true
	}
	return nil
}

// Validate checks one context.
func (c Context) Validate() error {
	if strings.TrimSpace(c.Name) == "" || c.Name != strings.TrimSpace(c.Name) {
		return fmt.Errorf("%w: context name %q must be non-empty without surrounding spaces", ErrInvalid, c.Name)
	}
	if strings.ContainsFunc(c.Name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("%w: context name %q contains control characters", ErrInvalid, c.Name)
	}
	if c.Server != "" || c.Agent == "" {
		if _, err := NormalizeServer(c.Server); err != nil {
			return fmt.Errorf("%w: context %q: %v", ErrInvalid, c.Name, err)
		}
	}
	if c.Agent != "" {
		if _, err := NormalizeAgent(c.Agent); err != nil {
			return fmt.Errorf("%w: context %q: %v", ErrInvalid, c.Name, err)
		}
	}
	if strings.ContainsAny(c.Token, " \t\r\n") {
		return fmt.Errorf("%w: context %q: token contains white space", ErrInvalid, c.Name)
	}
	return nil
}

// NormalizeServer turns a server address into the base URL form used
// everywhere: "https://host[:port]" without a trailing slash. An address
// without a scheme gets https://; any other scheme is refused.
func NormalizeServer(s string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", errors.New("server is empty")
	}
	if !strings.Contains(s, "://") {
		s = "https://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("server %q: %v", s, err)
	}
	if u.Scheme != "https" {
		return "", fmt.Errorf("server %q: scheme must be https (the control plane serves TLS only)", s)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("server %q: want https://host[:port]", s)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// Get returns the context called name.
func (f *File) Get(name string) (Context, bool) {
	for _, c := range f.Contexts {
		if c.Name == name {
			return c, true
		}
	}
	return Context{}, false
}

// Set adds c, or replaces the context of the same name, after validating
// it. The server is stored normalized.
func (f *File) Set(c Context) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if c.Server != "" {
		c.Server, _ = NormalizeServer(c.Server)
	}
	if c.Agent != "" {
		c.Agent, _ = NormalizeAgent(c.Agent)
	}
	for i := range f.Contexts {
		if f.Contexts[i].Name == c.Name {
			f.Contexts[i] = c
			return nil
		}
	}
	f.Contexts = append(f.Contexts, c)
	return nil
}

// Use makes name the current context.
func (f *File) Use(name string) error {
	if _, ok := f.Get(name); !ok {
		return fmt.Errorf("%w: %q (known: %s)", ErrNoContext, name, f.names())
	}
	f.CurrentContext = name
	return nil
}

// Delete removes the context called name; if it was current, no context is
// current afterwards.
func (f *File) Delete(name string) error {
	for i, c := range f.Contexts {
		if c.Name == name {
			f.Contexts = append(f.Contexts[:i:i], f.Contexts[i+1:]...)
			if f.CurrentContext == name {
				f.CurrentContext = ""
			}
			return nil
		}
	}
	return fmt.Errorf("%w: %q (known: %s)", ErrNoContext, name, f.names())
}

func (f *File) names() string {
	if len(f.Contexts) == 0 {
		return "none"
	}
	n := make([]string, len(f.Contexts))
	for i, c := range f.Contexts {
		n[i] = c.Name
	}
	return strings.Join(n, ", ")
}

// Load reads the contexts file at path. A file that does not exist yields
// an empty File (and no error), so first use needs no set-up.
func Load(path string) (*File, error) {
	fh, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &File{path: path}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("clientconfig: %w", err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("clientconfig: read %s: %w", path, err)
	}
	if len(data) > MaxFileBytes {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalid, path, MaxFileBytes)
	}
	f, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	f.path = path
	return f, nil
}

// CheckMode reports ErrInsecureMode when the file at path is accessible to
// group or others. A missing file is fine.
func CheckMode(path string) error {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("clientconfig: %w", err)
	}
	if m := st.Mode().Perm(); m&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; it holds API tokens, run: chmod 600 %s", ErrInsecureMode, path, m, path)
	}
	return nil
}

// Marshal encodes f as YAML.
func (f *File) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(f); err != nil {
		return nil, fmt.Errorf("clientconfig: encode: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("clientconfig: encode: %w", err)
	}
	return buf.Bytes(), nil
}

// Save writes f to path atomically (a temporary file in the same directory,
// synced, then renamed) with mode 0600, creating the directory with mode
// 0700 if needed.
func (f *File) Save(path string) error {
	if err := f.Validate(); err != nil {
		return err
	}
	data, err := f.Marshal()
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("clientconfig: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("clientconfig: %w", err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("clientconfig: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("clientconfig: write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("clientconfig: sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("clientconfig: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("clientconfig: %w", err)
	}
	done = true
	f.path = path
	return nil
}

// Update loads the file at path, applies fn and saves the result, holding
// an exclusive lock on path+".lock" (where the platform supports it) so
// that two programs updating contexts at once do not lose each other's
// change. Nothing is written if fn fails.
func Update(path string, fn func(*File) error) error {
	unlock, err := lockFile(path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	f, err := Load(path)
	if err != nil {
		return err
	}
	if err := fn(f); err != nil {
		return err
	}
	return f.Save(path)
}

// WriteAndSelect stores c in the contexts file at path (DefaultPath when
// path is "") and makes it the current context, replacing a context of the
// same name. edgectl login and edgectl sim --serve use it; sim stores its
// in-process control plane as:
//
//	clientconfig.WriteAndSelect("", clientconfig.Context{
//		Name: "sim", Server: srv.URL(), Token: adminToken, CA: string(srv.CAPEM()),
//	})
func WriteAndSelect(path string, c Context) error {
	if path == "" {
		p, err := DefaultPath()
		if err != nil {
			return err
		}
		path = p
	}
	return Update(path, func(f *File) error {
		if err := f.Set(c); err != nil {
			return err
		}
		return f.Use(c.Name)
	})
}
