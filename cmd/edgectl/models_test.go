package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// writeModel writes a small valid model file and returns its path.
func writeModel(t *testing.T, dir, name, version string, seed uint64) string {
	t.Helper()
	a, err := fedlearn.ParseArch("lr", 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	f := &fedlearn.File{
		Name: name, Version: version, Arch: a, Weights: fedlearn.InitWeights(a, seed),
		Schema: fedlearn.Schema{Features: []fedlearn.Feature{
			{Name: "temperature", Metric: "temperature", Agg: fedlearn.AggLatest, Std: 1},
			{Name: "co2", Metric: "co2", Agg: fedlearn.AggLatest, Std: 1},
		}},
		Labels:   []string{"empty", "occupied"},
		Training: fedlearn.Training{Dataset: "occupancy", Epochs: 2, Seed: seed, Accuracy: 0.975, Created: time.Now().UTC()},
	}
	b, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name+"-"+version+".model")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestModelsCommands(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	dir := t.TempDir()
	v1, v2 := writeModel(t, dir, "occupancy", "1", 1), writeModel(t, dir, "occupancy", "2", 2)

	if out := e.must("models", "list"); !strings.Contains(out, "No models.") {
		t.Fatalf("empty list: %s", out)
	}
	if out := e.must("models", "push", v1); !strings.Contains(out, "Pushed occupancy version 1") || !strings.Contains(out, "Signed by:") {
		t.Fatalf("push: %s", out)
	}
	m := decodeJSON[cpapi.Model](t, e.must("models", "push", v2, "--json"))
	if m.Version != "2" || m.Arch != "lr" {
		t.Fatalf("push --json: %+v", m)
	}
	// A damaged file is refused with the reason; nothing is stored.
	b, _ := os.ReadFile(v1)
	bad := filepath.Join(dir, "bad.model")
	os.WriteFile(bad, b[:len(b)/2], 0o644)
	r := e.run("models", "push", bad)
	if r.code != 1 || !strings.Contains(r.stderr, "400") || !strings.Contains(r.stderr, "truncated") {
		t.Fatalf("truncated push: %+v", r)
	}
	if r := e.run("models", "push", filepath.Join(dir, "missing.model")); r.code != 2 {
		t.Fatalf("missing file: %+v", r)
	}

	if out := e.must("models", "deploy", "occupancy", "--version", "1", "--selector", "site=a"); !strings.Contains(out, "version 1 is active on agents with site=a") {
		t.Fatalf("deploy: %s", out)
	}
	e.must("models", "deploy", "occupancy", "--version", "2", "--selector", "site=a")
	if r := e.run("models", "deploy", "occupancy", "--version", "9", "--selector", "site=a"); r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Fatalf("deploy unknown version: %+v", r)
	}
	if r := e.run("models", "deploy", "occupancy", "--version", "1", "--selector", "site"); r.code != 2 {
		t.Fatalf("bad selector: %+v", r)
	}
	if r := e.run("models", "deploy", "occupancy", "--selector", "site=a"); r.code != 2 {
		t.Fatalf("no version: %+v", r)
	}
	out := e.must("models", "list")
	if !strings.Contains(out, "MODEL") || !strings.Contains(out, "97.50%") || !strings.Contains(out, "site=a") {
		t.Fatalf("list: %s", out)
	}
	list := decodeJSON[cpapi.ModelsResponse](t, e.must("models", "list", "--json"))
	if len(list.Models) != 2 || len(list.Deployments) != 1 || list.Deployments[0].Version != "2" {
		t.Fatalf("list --json: %+v", list)
	}
	if out := e.must("models", "rollback", "occupancy"); !strings.Contains(out, "from version 2 to 1") {
		t.Fatalf("rollback: %s", out)
	}
	if r := e.run("models", "rollback", "occupancy"); r.code != 1 || !strings.Contains(r.stderr, "409") {
		t.Fatalf("rollback past the first: %+v", r)
	}

	// get: newest by default, --version, --out writes the signed file.
	out = e.must("models", "get", "occupancy")
	if !strings.Contains(out, "Architecture:") || !strings.Contains(out, "rolled back") {
		t.Fatalf("get: %s", out)
	}
	if d := decodeJSON[modelDetail](t, e.must("models", "get", "occupancy", "--json")); d.Version != "2" {
		t.Fatalf("get without --version: version %s, want the newest (2)", d.Version)
	}
	signed := filepath.Join(dir, "signed.model")
	d := decodeJSON[modelDetail](t, e.must("models", "get", "occupancy", "--version", "1", "--out", signed, "--json"))
	if d.Version != "1" || d.File != signed || len(d.Deployments) != 2 {
		t.Fatalf("get --json: %+v", d)
	}
	sb, err := os.ReadFile(signed)
	if err != nil {
		t.Fatal(err)
	}
	f, err := fedlearn.Decode(sb)
	if err != nil || f.SignerID == "" || f.DigestHex() != d.Digest {
		t.Fatalf("downloaded file: %v %+v", err, f)
	}
	if r := e.run("models", "get", "nothing"); r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Fatalf("get unknown: %+v", r)
	}

	// undeploy ends the selector's whole stack (1, then 2 on top).
	if r := e.run("models", "undeploy", "occupancy"); r.code == 0 || !strings.Contains(r.stderr, "--selector") {
		t.Fatalf("undeploy without --selector: %+v", r)
	}
	e.must("models", "deploy", "occupancy", "--version", "2", "--selector", "site=a")
	un := decodeJSON[cpapi.UndeployModelResponse](t, e.must("models", "undeploy", "occupancy", "--selector", "site=a", "--json"))
	if len(un.Ended) != 2 || un.Ended[0].Version != "2" || un.Ended[1].Version != "1" {
		t.Fatalf("undeploy --json: %+v", un)
	}
	if list := decodeJSON[cpapi.ModelsResponse](t, e.must("models", "list", "--json")); len(list.Deployments) != 0 {
		t.Fatalf("active deployments after undeploy: %+v", list.Deployments)
	}
	if r := e.run("models", "undeploy", "occupancy", "--selector", "site=a"); r.code != 1 || !strings.Contains(r.stderr, "404") {
		t.Fatalf("undeploy again: %+v", r)
	}
}
