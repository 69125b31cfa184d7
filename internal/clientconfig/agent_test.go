package clientconfig

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestResolveAgentPrecedence(t *testing.T) {
	f := &File{path: "/x/config.yaml", CurrentContext: "a", Contexts: []Context{
		{Name: "a", Server: "https://a:1", Agent: "http://10.0.0.1:7070"},
		{Name: "b", Server: "https://b:2"},
		{Name: "c", Agent: "10.0.0.3:7070"},
	}}
	cases := []struct {
		name       string
		file       *File
		flags, env Settings
		url, from  string
	}{
		{"default without anything", nil, Settings{}, Settings{}, DefaultAgent, "default"},
		{"current context", f, Settings{}, Settings{}, "http://10.0.0.1:7070", `context "a"`},
		{"context without agent", f, Settings{Context: "b"}, Settings{}, DefaultAgent, "default"},
		{"env context", f, Settings{}, Settings{Context: "c"}, "http://10.0.0.3:7070", `context "c"`},
		{"env beats context", f, Settings{}, Settings{Agent: "127.0.0.1:9"}, "http://127.0.0.1:9", EnvAgent},
		{"flag beats env", f, Settings{Agent: "https://h:1/"}, Settings{Agent: "127.0.0.1:9"}, "https://h:1", "--agent"},
		{"stale current-context is ignored", &File{CurrentContext: "gone"}, Settings{}, Settings{}, DefaultAgent, "default"},
	}
	for _, c := range cases {
		got, err := ResolveAgent(c.file, c.flags, c.env)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got.URL != c.url || got.From != c.from {
			t.Errorf("%s: got %+v, want %s from %s", c.name, got, c.url, c.from)
		}
	}

	if _, err := ResolveAgent(f, Settings{Context: "zzz"}, Settings{}); !errors.Is(err, ErrNoContext) {
		t.Errorf("unknown --context: %v", err)
	}
	if _, err := ResolveAgent(f, Settings{}, Settings{Context: "zzz"}); !errors.Is(err, ErrNoContext) {
		t.Errorf("unknown EDGEFLEET_CONTEXT: %v", err)
	}
	_, err := ResolveAgent(nil, Settings{}, Settings{Agent: "ftp://x:1"})
	if err == nil || !strings.Contains(err.Error(), EnvAgent) || !strings.Contains(err.Error(), "http or https") {
		t.Errorf("bad scheme: %v", err)
	}
}

func TestNormalizeAgent(t *testing.T) {
	good := map[string]string{
		"127.0.0.1:7070":          "http://127.0.0.1:7070",
		" http://h:1/ ":           "http://h:1",
		"https://[::1]:7070":      "https://[::1]:7070",
		"http://gateway.local:80": "http://gateway.local:80",
	}
	for in, want := range good {
		if got, err := NormalizeAgent(in); err != nil || got != want {
			t.Errorf("NormalizeAgent(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"", "  ", "ftp://h:1", "http://", "http://u:p@h:1", "http://h:1/v1", "http://h:1/?q=1", "http://h:1/#f", "http://h :1"} {
		if got, err := NormalizeAgent(in); err == nil {
			t.Errorf("NormalizeAgent(%q) = %q, want an error", in, got)
		}
	}
}

func TestContextWithAgentOnly(t *testing.T) {
	in := "current-context: gw\ncontexts:\n  - name: gw\n    agent: 10.0.0.7:7070\n"
	f, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := f.Get("gw"); c.Agent != "10.0.0.7:7070" || c.Server != "" {
		t.Fatalf("parsed %+v", c)
	}
	// Such a context has no control plane: commands that need one say so.
	if _, err := Resolve(f, Settings{}, Settings{}); !errors.Is(err, ErrNoServer) {
		t.Fatalf("Resolve: %v", err)
	}
	if _, err := Parse([]byte("contexts:\n  - {name: a, agent: 'ftp://x'}\n")); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad agent: %v", err)
	}

	// Set stores the address normalized, and it survives a save and load.
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := WriteAndSelect(path, Context{Name: "gw", Agent: "10.0.0.7:7070"}); err != nil {
		t.Fatal(err)
	}
	g, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	target, err := ResolveAgent(g, Settings{}, Settings{})
	if err != nil || target.URL != "http://10.0.0.7:7070" || target.From != `context "gw"` {
		t.Fatalf("after reload: %+v %v", target, err)
	}
}
