package main

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/clientconfig"
)

func TestInvokedAs(t *testing.T) {
	onPath := t.TempDir()
	if err := os.WriteFile(filepath.Join(onPath, "edgectl"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", onPath)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for arg0, want := range map[string]string{
		"bin/edgectl":                        "bin/edgectl",
		"./bin/edgectl":                      "./bin/edgectl",
		"edgectl":                            "edgectl",
		filepath.Join(onPath, "edgectl"):     "edgectl",
		filepath.Join(wd, "bin", "edgectl"):  filepath.Join("bin", "edgectl"),
		"/opt/edgefleet/edgectl":             "/opt/edgefleet/edgectl",
		"/tmp/go-build2731/b001/exe/edgectl": "go run ./cmd/edgectl",
		"":                                   "edgectl",
	} {
		if got := invokedAs(arg0); got != want {
			t.Errorf("invokedAs(%q) = %q, want %q", arg0, got, want)
		}
	}
}

// TestSimServeAsMakeSim runs edgectl as `make sim` does, bin/edgectl sim
// --serve, on a clone without the data sets: it announces synthetic
// devices, names the missing data, and its hints name bin/edgectl.
func TestSimServeAsMakeSim(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a fleet: skipped with -short")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	clone := t.TempDir()
	if err := os.Mkdir(filepath.Join(clone, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(exe, filepath.Join(clone, "bin", "edgectl")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bin/edgectl", "sim", "--serve", "--agents", "2", "--profile", "test", "--data", filepath.Join(clone, "fleet"))
	cmd.Dir = clone
	cmd.Env = []string{envMain + "=1", "HOME=" + clone, clientconfig.EnvConfig + "=" + filepath.Join(clone, "config.yaml"),
		"EDGEFLEET_DATA=" + filepath.Join(clone, "no-data")}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	timer := time.AfterFunc(time.Minute, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	var out []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		out = append(out, sc.Text())
		if strings.HasPrefix(sc.Text(), "Ctrl-C") {
			break
		}
	}
	text := strings.Join(out, "\n")
	for _, want := range []string{
		"fleet running: 2 agents online, 6 synthetic devices (no occupancy data at " + filepath.Join(clone, "no-data") + ")",
		"\n  bin/edgectl agents list\n",
		"\n  bin/edgectl devices list\n",
		"\n  bin/edgectl telemetry query --bucket 1m\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q:\n%s", want, text)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	stopped = true
	_, _ = io.Copy(io.Discard, stdout)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("edgectl sim --serve after Ctrl-C: %v", err)
	}
}
