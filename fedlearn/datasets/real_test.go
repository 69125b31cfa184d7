package datasets

import (
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// sharedData returns the shared data directory ($EDGEFLEET_DATA, else
// ../shared/data beside the repository's root) and skips the test, saying
// so, when the file it needs is not there.
func sharedData(t *testing.T, need string) string {
	t.Helper()
	dir := os.Getenv(EnvDir)
	if dir == "" {
		wd, err := os.Getwd()
		if err != nil {
			t.Fatal(err)
		}
		for root := wd; ; root = filepath.Dir(root) {
			if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
				dir = filepath.Join(root, "..", "shared", "data")
				break
			}
			if filepath.Dir(root) == root {
				t.Fatal("no go.mod above the test's directory")
			}
		}
	}
	if _, err := os.Stat(filepath.Join(dir, need)); errors.Is(err, fs.ErrNotExist) {
		t.Skipf("SKIPPED: real data set %s not found under %s (set %s to the shared data directory)", need, dir, EnvDir)
	}
	return dir
}

func TestWISDMReal(t *testing.T) {
	dir := sharedData(t, WISDMFile)
	all, err := LoadWISDM(dir)
	if err != nil {
		t.Fatal(err)
	}
	if all.Len() != 5418 || len(all.Features) != 43 || all.Features[0] != "X0" || all.Features[42] != "RESULTANT" {
		t.Fatalf("%d examples, features %v", all.Len(), all.Features)
	}
	count := map[string]int{}
	for _, y := range all.Y {
		count[all.Classes[y]]++
	}
	want := map[string]int{"Walking": 2081, "Jogging": 1625, "Upstairs": 632, "Downstairs": 528, "Sitting": 306, "Standing": 246}
	for c, n := range want {
		if count[c] != n {
			t.Errorf("class %s: %d examples, want %d", c, count[c], n)
		}
	}
	missing := 0
	for _, x := range all.X {
		for _, v := range x {
			if math.IsNaN(v) {
				missing++
			}
		}
	}
	if missing != 615 {
		t.Errorf("%d missing values, want 615", missing)
	}
	users := all.ByUser()
	if len(users) != 36 || users[0].User != 1 || users[35].User != 36 {
		t.Fatalf("%d users", len(users))
	}
	wantTest := 0
	for _, u := range users {
		wantTest += max(1, u.Len()/5)
	}
	p, err := Load(dir, WISDM, 3)
	if err != nil {
		t.Fatal(err)
	}
	if p.Tests[0].Len() != wantTest || p.Train.Len() != 5418-wantTest {
		t.Fatalf("split %d train / %d test, want %d test", p.Train.Len(), p.Tests[0].Len(), wantTest)
	}
	clients, err := p.Clients()
	if err != nil {
		t.Fatal(err)
	}
	if len(clients) != 36 {
		t.Fatalf("%d clients", len(clients))
	}
	for i, c := range clients {
		if n := users[i].Len(); c.Test.Len() != max(1, n/5) || c.Train.Len()+c.Test.Len() != n {
			t.Errorf("user %d: %d train, %d test of %d", c.User, c.Train.Len(), c.Test.Len(), n)
		}
	}
	t.Logf("WISDM: %d examples, %d users, %d missing values; seed 3: %d train, %d test", all.Len(), len(users), missing, p.Train.Len(), p.Tests[0].Len())
}

func TestOccupancyReal(t *testing.T) {
	dir := sharedData(t, OccupancyTrainFile)
	p, err := Load(dir, Occupancy, 0)
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		rows, occupied int
	}
	got := map[string]Part{"train": p.Train, "datatest": p.Tests[0], "datatest2": p.Tests[1]}
	for name, w := range map[string]want{"train": {8143, 1729}, "datatest": {2665, 972}, "datatest2": {9752, 2049}} {
		part := got[name]
		occ := 0
		for _, y := range part.Y {
			occ += y
		}
		if part.Len() != w.rows || occ != w.occupied || part.Name != name {
			t.Errorf("%s (%s): %d rows, %d occupied; want %d, %d", name, part.Name, part.Len(), occ, w.rows, w.occupied)
		}
	}
	if p.Schema.Features[3].Metric != "co2" || p.Schema.Features[3].Name != "CO2" {
		t.Errorf("feature 3: %+v", p.Schema.Features[3])
	}
}
