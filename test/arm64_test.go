package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/internal/archcheck"
)

// qemuAarch64 is the user-mode emulator of Debian's qemu-user-static. It is
// called explicitly: binfmt_misc is often not registered in containers.
const qemuAarch64 = "qemu-aarch64-static"

// TestFedlearnArm64 cross-compiles the fedlearn tests for linux/arm64, runs
// all of them under qemu-user, and checks that the models of
// fedlearn.TestCrossArchPredictions predict on arm64 what they predict on
// amd64. It then perturbs one weight on the arm64 side and requires the
// comparison to catch it.
func TestFedlearnArm64(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-architecture test: skipped with -short")
	}
	if runtime.GOARCH != "amd64" {
		skipLoudly(t, "the cross-architecture check compares amd64 with arm64 under qemu; this machine is "+runtime.GOARCH)
	}
	qemu, err := exec.LookPath(qemuAarch64)
	if err != nil {
		skipLoudly(t, qemuAarch64+" not found (Debian package qemu-user-static; scripts/test.sh installs it): fedlearn is not tested on arm64")
	}
	dir := t.TempDir()
	native := filepath.Join(dir, "fedlearn.amd64.test")
	arm := filepath.Join(dir, "fedlearn.arm64.test")
	start := time.Now()
	goTestC(t, native, nil)
	goTestC(t, arm, []string{"GOOS=linux", "GOARCH=arm64"})
	t.Logf("built the fedlearn test binaries for amd64 and arm64 in %v", time.Since(start).Round(time.Millisecond))

	// Every fedlearn test on arm64, writing the predictions on the way.
	armOut := filepath.Join(dir, "arm64.json")
	start = time.Now()
	runTestBinary(t, dir, []string{qemu, arm, "-test.count=1", "-test.timeout=10m"},
		"EDGEFLEET_PREDICTIONS_OUT="+armOut)
	t.Logf("fedlearn tests passed on arm64 under qemu in %v", time.Since(start).Round(time.Millisecond))

	nativeOut := filepath.Join(dir, "amd64.json")
	runTestBinary(t, dir, []string{native, "-test.count=1", "-test.run=^TestCrossArchPredictions$"},
		"EDGEFLEET_PREDICTIONS_OUT="+nativeOut)

	want, got := readPredictions(t, nativeOut), readPredictions(t, armOut)
	if want.GOARCH != "amd64" || got.GOARCH != "arm64" {
		t.Fatalf("predictions came from %s and %s, want amd64 and arm64", want.GOARCH, got.GOARCH)
	}
	if diffs := archcheck.Compare(want, got, archcheck.Tolerance); len(diffs) > 0 {
		t.Fatalf("arm64 predicts differently from amd64 (tolerance %g):\n%s", archcheck.Tolerance, strings.Join(diffs, "\n"))
	}
	n := 0
	for _, m := range got.Models {
		n += len(m.Probs)
	}
	t.Logf("%d models, %d predictions: arm64 equals amd64 within %g (largest difference %.3g)",
		len(got.Models), n, archcheck.Tolerance, archcheck.MaxDiff(want, got))

	// The same comparison must fail when one weight differs on one side.
	perturbed := filepath.Join(dir, "arm64-perturbed.json")
	runTestBinary(t, dir, []string{qemu, arm, "-test.count=1", "-test.run=^TestCrossArchPredictions$"},
		"EDGEFLEET_PREDICTIONS_OUT="+perturbed, "EDGEFLEET_PREDICTIONS_PERTURB=1e-3")
	if diffs := archcheck.Compare(want, readPredictions(t, perturbed), archcheck.Tolerance); len(diffs) == 0 {
		t.Fatal("a weight perturbed by 1e-3 on arm64 went unnoticed by the comparison")
	}
}

// goTestC compiles the fedlearn package's tests into out, with more
// environment (GOOS, GOARCH) when cross-compiling.
func goTestC(t *testing.T, out string, env []string) {
	t.Helper()
	cmd := exec.Command("go", "test", "-c", "-o", out, "../fedlearn")
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go test -c %v: %v\n%s", env, err, b)
	}
}

func readPredictions(t *testing.T, path string) archcheck.Dump {
	t.Helper()
	d, err := archcheck.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// runTestBinary runs a compiled test binary in dir (the package directory's
// testdata is not needed by fedlearn) and fails with its output if it fails.
func runTestBinary(t *testing.T, dir string, argv []string, env ...string) {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	b, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, b)
	}
}

// maxArm64AgentBytes bounds the stripped linux/arm64 edge-agent (issue 12's
// footprint bar: 28 MiB with fedlearn and gorgonia linked in).
const maxArm64AgentBytes = 28 << 20

// TestEdgeAgentArm64Size builds edge-agent with `make arm64-agent` (static,
// -trimpath, stripped, the Makefile's GCFLAGS) and fails if it is larger than
// maxArm64AgentBytes.
func TestEdgeAgentArm64Size(t *testing.T) {
	if testing.Short() {
		t.Skip("binary size check: skipped with -short")
	}
	if _, err := exec.LookPath("make"); err != nil {
		skipLoudly(t, "make not found: the arm64 edge-agent's size is not checked")
	}
	out := t.TempDir()
	bin := filepath.Join(out, "linux-arm64", "edge-agent")
	start := time.Now()
	cmd := exec.Command("make", "-s", "-C", "..", "arm64-agent", "BIN="+out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make arm64-agent: %v\n%s", err, b)
	}
	built := time.Since(start)
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	mods, err := exec.Command("go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	gorgonia := strings.Contains(string(mods), "gorgonia.org/gorgonia")
	t.Logf("stripped linux/arm64 edge-agent: %d bytes (%.2f MiB, limit %.0f MiB), gorgonia linked in: %v (built in %v)",
		fi.Size(), float64(fi.Size())/(1<<20), float64(maxArm64AgentBytes)/(1<<20), gorgonia, built.Round(time.Millisecond))
	if fi.Size() > maxArm64AgentBytes {
		t.Fatalf("stripped linux/arm64 edge-agent is %d bytes (%.2f MiB), over the %d-byte (28 MiB) limit; "+
			"`go tool nm -size -sort size` on an unstripped build shows what is big",
			fi.Size(), float64(fi.Size())/(1<<20), maxArm64AgentBytes)
	}
}
