package controlplane

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// TestSQLiteFL: a job, an update stored with the state in one
// transaction, the same update refused a second time with nothing written,
// round records and the global model of an aggregated round.
func TestSQLiteFL(t *testing.T) {
	st := openTestStore(t)
	ctx := t.Context()
	now := time.Unix(1700000000, 0).UTC()
	job := cpapi.FLJob{ID: "flj-1", Status: "running", Created: now, Creator: "admin"}
	if err := st.SaveFL(ctx, FLSave{Job: job, State: []byte(`{"job":"flj-1"}`), Create: true}); err != nil {
		t.Fatal(err)
	}
	if err := st.SaveFL(ctx, FLSave{Job: job, State: []byte(`{}`), Create: true}); err == nil {
		t.Fatal("created the job twice")
	}
	up := &FLStoredUpdate{Round: 1, Attempt: 0, Agent: "ag-1", Examples: 7, Envelope: []byte("sealed update"), ReceivedAt: now.UnixNano()}
	if err := st.SaveFL(ctx, FLSave{Job: job, State: []byte(`{"reported":1}`), Update: up}); err != nil {
		t.Fatal(err)
	}
	err := st.SaveFL(ctx, FLSave{Job: job, State: []byte(`{"reported":2}`), Update: up})
	if !errors.Is(err, cpapi.ErrConflict) {
		t.Fatalf("second save of the same update: %v", err)
	}
	jobs, states, err := st.FLJobs(ctx)
	if err != nil || len(jobs) != 1 || string(states[0]) != `{"reported":1}` {
		t.Fatalf("jobs %+v states %q %v: the refused save wrote", jobs, states, err)
	}
	ups, err := st.FLUpdates(ctx, "flj-1", 1, 0)
	if err != nil || len(ups) != 1 || ups[0].Agent != "ag-1" || ups[0].Examples != 7 || string(ups[0].Envelope) != "sealed update" || ups[0].Round != 1 {
		t.Fatalf("updates %+v %v", ups, err)
	}
	if ups, _ := st.FLUpdates(ctx, "flj-1", 1, 1); len(ups) != 0 {
		t.Fatalf("attempt 1 has %d updates", len(ups))
	}
	r := cpapi.FLRound{Job: "flj-1", Round: 1, Phase: "aggregated", Participants: 1}
	global := []float64{0.5, -1.25, 3}
	if err := st.SaveFL(ctx, FLSave{Job: job, State: []byte(`{}`), Rounds: []cpapi.FLRound{r}, Globals: map[int][]float64{1: global}}); err != nil {
		t.Fatal(err)
	}
	// The record is replaced, the global model kept.
	r.Accuracy = map[string]float64{"test": 0.9}
	if err := st.SaveFL(ctx, FLSave{Job: job, State: []byte(`{}`), Rounds: []cpapi.FLRound{r}}); err != nil {
		t.Fatal(err)
	}
	rounds, err := st.FLRounds(ctx, "flj-1")
	if err != nil || len(rounds) != 1 || rounds[0].Accuracy["test"] != 0.9 {
		t.Fatalf("rounds %+v %v", rounds, err)
	}
	g, err := st.FLGlobal(ctx, "flj-1", 1)
	if err != nil || !slices.Equal(g, global) {
		t.Fatalf("global %v %v", g, err)
	}
	if _, err := st.FLGlobal(ctx, "flj-1", 2); !errors.Is(err, cpapi.ErrNotFound) {
		t.Fatalf("global of round 2: %v", err)
	}
	counts, err := st.FLUpdateCounts(ctx, "flj-1")
	if err != nil || counts["1/0"] != [2]int{1, 1} {
		t.Fatalf("counts %v %v", counts, err)
	}
}
