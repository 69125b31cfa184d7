package controlplane

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// holdingStore holds the first save of an FL update until released.
type holdingStore struct {
	Store
	held, release chan struct{}
}

func (s *holdingStore) SaveFL(ctx context.Context, f FLSave) error {
	if f.Update != nil && s.held != nil {
		close(s.held)
		s.held = nil
		<-s.release
	}
	return s.Store.SaveFL(ctx, f)
}

// TestFLUpdateClientGone: an agent killed while its update is being
// saved (found by edgectl sim --fl --kill-during-round) must not leave the
// update taken by the coordinator but unsaved and uncounted: the save
// goes on without the client, the update is stored and counted accepted.
func TestFLUpdateClientGone(t *testing.T) {
	var hs *holdingStore
	e := newKeyEnv(t, func(c *Config) {
		c.Keys.DevUnseal = true
		c.FL.Tick = time.Hour
		st, err := OpenSQLite(filepath.Join(c.DataDir, "controlplane.db"), c.SQLite)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		hs = &holdingStore{Store: st, held: make(chan struct{}), release: make(chan struct{})}
		c.Store = hs
	})
	agents := flTestAgents(t, e, "flgone", 3, 90)
	spec := flTestSpec("fl-gone", 2)
	off := false
	spec.FederatedStats = &off
	for i := range spec.Schema.Features {
		spec.Schema.Features[i].Std = 1
	}
	job, err := e.admin.CreateFLJob(e.ctx(), spec)
	if err != nil {
		t.Fatal(err)
	}
	e.srv.FLTick()
	task := flTasks(t, agents)[0]
	a := agents[0]
	env, sig := sealFL(t, a, task, cpapi.FLUpdate{Examples: 10, Delta: make([]float32, spec.Arch.NumParams())})
	held := hs.held
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := a.client.UploadFLUpdate(ctx, task, env, sig); done <- err }()
	select {
	case <-held:
	case <-time.After(20 * time.Second):
		t.Fatal("the update never reached the store")
	}
	cancel() // the agent is gone
	if err := <-done; err == nil {
		t.Fatal("the canceled upload returned no error")
	}
	time.Sleep(100 * time.Millisecond) // the server sees the connection close
	close(hs.release)
	var j cpapi.FLJob
	deadline := time.Now().Add(10 * time.Second)
	for {
		if j, err = e.admin.GetFLJob(e.ctx(), job.ID); err == nil && j.Current != nil && len(j.Current.Reported) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the client left: job %+v %v", j.Current, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stored, err := hs.Store.FLUpdates(context.Background(), job.ID, task.Round, task.Attempt)
	if err != nil || len(stored) != 1 {
		t.Fatalf("stored updates %d %v, want the one the coordinator took", len(stored), err)
	}
	var m dto.Metric
	if err := e.srv.metrics.flUpdates.WithLabelValues("accepted").Write(&m); err != nil || m.GetCounter().GetValue() != 1 {
		t.Errorf("accepted updates counted %v (%v), want 1", m.GetCounter().GetValue(), err)
	}
}
