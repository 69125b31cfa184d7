package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"
)

// TestSIGTERMLeavesGracefully: an agent stopped with SIGTERM announces its
// departure, so its peer sees it as "left" (not failed), and exits 0.
func TestSIGTERMLeavesGracefully(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario test: skipped with -short")
	}
	a := newProc(t, "agent-a")
	a.start()
	b := newProc(t, "agent-b", a.gossip)
	b.start()
	eventually(t, 20*time.Second, "a sees b", func() error {
		n, err := a.aliveMembers()
		if err == nil && n != 2 {
			err = fmt.Errorf("%d alive", n)
		}
		return err
	})
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.exited:
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not exit within 15s of SIGTERM")
	}
	if code := b.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code after SIGTERM = %d, want 0\n%s", code, b.logs.String())
	}
	eventually(t, 10*time.Second, "a sees b as left", func() error {
		resp, err := http.Get(a.url("/v1/members"))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var ms []struct {
			Name  string `json:"name"`
			State string `json:"state"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&ms); err != nil {
			return err
		}
		for _, m := range ms {
			if m.Name == "agent-b" {
				if m.State != "left" {
					return fmt.Errorf("agent-b is %q", m.State)
				}
				return nil
			}
		}
		return fmt.Errorf("agent-b not listed: %+v", ms)
	})
}
