// Package test holds scenario tests that run the real edgefleet binaries as
// separate processes, talk to them over their real ports, and kill them with
// SIGKILL.
package test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/testutil"
)

// binDir holds the binaries built once for the whole test run.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edgefleet-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "test: temp dir:", err)
		os.Exit(1)
	}
	binDir = dir
	// Built as `make build` builds them: static, no cgo.
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", dir+"/", "../cmd/edge-agent", "../cmd/edgectl")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "test: building binaries:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testGossipKey is the shared gossip key of the test fleets (public, loopback only).
const testGossipKey = "dGVzdC1mbGVldC1nb3NzaXAta2V5LTAwMDAwMDAwMDA="

// proc is one edge-agent process with stable ports and data dir, so it can be
// killed and started again as the same agent.
type proc struct {
	t       *testing.T
	name    string
	dataDir string
	gossip  string // 127.0.0.1:port
	api     string // 127.0.0.1:port
	join    []string
	extra   []string // more edge-agent run arguments
	env     []string // more environment, after the defaults (later wins)
	cmd     *exec.Cmd
	logs    *testutil.SyncBuffer
	exited  chan struct{}
}

func newProc(t *testing.T, name string, join ...string) *proc {
	t.Helper()
	return &proc{
		t:       t,
		name:    name,
		dataDir: filepath.Join(t.TempDir(), name),
		gossip:  freeAddr(t),
		api:     freeAddr(t),
		join:    join,
		logs:    &testutil.SyncBuffer{},
	}
}

func (p *proc) start() {
	p.t.Helper()
	args := []string{"run", "--data", p.dataDir, "--bind", p.gossip, "--api", p.api, "--node-name", p.name, "--profile", "test", "--cluster", "edgefleet-test",
		"--mqtt-listen", "127.0.0.1:0"}
	args = append(args, p.extra...)
	if len(p.join) > 0 {
		args = append(args, "--join", strings.Join(p.join, ","))
	}
	env := append(os.Environ(), "EDGEFLEET_GOSSIP_KEY="+testGossipKey, "EDGEFLEET_LOG_LEVEL=debug")
	p.startWith(append(env, p.env...), args...)
}

// startWith starts edge-agent with env and args as this process and
// waits until it is ready; it is stopped when the test ends.
func (p *proc) startWith(env []string, args ...string) {
	p.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "edge-agent"), args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = p.logs, p.logs
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	p.cmd = cmd
	p.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(p.exited) }()
	p.t.Cleanup(p.stop)
	p.waitReady(30 * time.Second)
}

// kill9 kills the process with SIGKILL: no leave, no flush, no cleanup.
func (p *proc) kill9() {
	p.t.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		p.t.Fatalf("kill -9 %s: %v", p.name, err)
	}
	<-p.exited
}

func (p *proc) stop() {
	if p.cmd == nil || p.cmd.ProcessState != nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
	if p.t.Failed() {
		p.t.Logf("--- logs of %s ---\n%s", p.name, p.logs.String())
	}
}

func (p *proc) url(path string) string { return "http://" + p.api + path }

func (p *proc) waitReady(timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			p.t.Fatalf("%s exited before it was ready:\n%s", p.name, p.logs.String())
		default:
		}
		resp, err := http.Get(p.url("/readyz"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.t.Fatalf("%s not ready after %s:\n%s", p.name, timeout, p.logs.String())
}

// put writes one LWW key through the local API; nil means acknowledged.
func (p *proc) put(ctx context.Context, coll, key, value string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, p.url("/v1/state/"+coll+"/"+key), strings.NewReader(value))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("PUT %s/%s: %s: %s", coll, key, resp.Status, body)
	}
	return nil
}

// get reads one LWW key; ok is false for 404.
func (p *proc) get(coll, key string) (value json.RawMessage, ok bool, err error) {
	resp, err := http.Get(p.url("/v1/state/" + coll + "/" + key))
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return nil, false, nil
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, false, fmt.Errorf("GET %s/%s: %s: %s", coll, key, resp.Status, b)
	}
	var e struct {
		Value json.RawMessage `json:"value"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		return nil, false, err
	}
	return e.Value, true, nil
}

// aliveMembers counts members this agent sees alive.
func (p *proc) aliveMembers() (int, error) {
	resp, err := http.Get(p.url("/v1/members"))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var ms []struct {
		State string `json:"state"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ms); err != nil {
		return 0, err
	}
	n := 0
	for _, m := range ms {
		if m.State == "alive" {
			n++
		}
	}
	return n, nil
}

// eventually polls cond until it returns nil or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if last = cond(); last == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not true after %s: %v", what, timeout, last)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	// Both UDP and TCP must be free on the port for memberlist.
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return addr
	}
	t.Fatal("no free port")
	return ""
}
