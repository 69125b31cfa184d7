package test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/internal/datasettest"
)

// publishStored publishes lines as device over the agent's embedded broker
// and waits until the agent has committed them all (it ingests nothing
// else).
func publishStored(t *testing.T, p *proc, device string, lines []string) {
	t.Helper()
	publishLines(t, p.waitBroker(), "devices/"+device+"/telemetry", lines)
	eventually(t, 60*time.Second, fmt.Sprintf("%d messages stored", len(lines)), func() error {
		var st struct {
			Store struct {
				Messages int64 `json:"messages"`
			} `json:"store"`
		}
		if err := p.getJSON("/v1/ingest", &st); err != nil {
			return err
		}
		if st.Store.Messages < int64(len(lines)) {
			return fmt.Errorf("%d stored", st.Store.Messages)
		}
		return nil
	})
}

// waitTrained polls a job until it has ended and returns it; it fails the
// test unless the job is done.
func waitTrained(t *testing.T, api *agentapi.Client, id string, timeout time.Duration) agentapi.TrainingJob {
	t.Helper()
	var j agentapi.TrainingJob
	eventually(t, timeout, "training job "+id+" done", func() error {
		var err error
		if j, err = api.TrainingJob(context.Background(), id); err != nil {
			return err
		}
		switch j.State {
		case "done":
			return nil
		case "failed", "canceled":
			t.Fatalf("job %s %s: %s", id, j.State, j.Error)
		}
		return fmt.Errorf("%s, %d/%d epochs", j.State, j.EpochsDone, j.Epochs)
	})
	return j
}

// TestKill9DuringTraining kills an edge-agent with SIGKILL while a local
// training job runs. Restarted on the same data dir, the agent resumes the
// job from its last checkpoint (not from the start) and finishes it; the
// model it ends with is, bit for bit, the model the same job trains
// without interruption.
func TestKill9DuringTraining(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario test: skipped with -short")
	}
	lines, from, to := datasettest.Occupancy(t, 0, 3000, time.Now())
	p := newProc(t, "trainer-k9")
	p.start()
	publishStored(t, p, "room-1", lines)

	api := agentapi.New("http://"+p.api, nil)
	defer api.CloseIdleConnections()
	spec := datasettest.OccupancySpec("room-1", "mlp:64", 100, from, to)
	spec.BatchSize = 8
	j, err := api.CreateTrainingJob(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	var before agentapi.TrainingJob
	eventually(t, 120*time.Second, "3 epochs checkpointed", func() error {
		var err error
		if before, err = api.TrainingJob(context.Background(), j.ID); err != nil {
			return err
		}
		if before.State == "done" {
			t.Fatalf("the job finished before the kill; make it longer: %+v", before.History)
		}
		if before.EpochsDone < 3 {
			return fmt.Errorf("%s, %d epochs", before.State, before.EpochsDone)
		}
		return nil
	})
	p.kill9()
	t.Logf("killed after epoch %d of %d (%.2fs an epoch)", before.EpochsDone, before.Epochs, before.History[0].Seconds)

	p.start()
	got := waitTrained(t, api, j.ID, 300*time.Second)
	if len(got.Resumes) != 1 || got.Resumes[0] < before.EpochsDone || got.Resumes[0] >= got.Epochs {
		t.Fatalf("resumed after epochs %v; killed after epoch %d was reported", got.Resumes, before.EpochsDone)
	}
	for i, h := range got.History {
		if h.Epoch != i+1 {
			t.Fatalf("epochs %+v", got.History)
		}
	}
	if !slices.Equal(got.History[:before.EpochsDone], before.History) {
		t.Fatalf("the epochs before the kill changed:\n%+v\n%+v", got.History[:before.EpochsDone], before.History)
	}
	if got.Data.Changed {
		t.Fatal("the resumed job read other examples")
	}
	t.Logf("resumed after epoch %d; held-out accuracy %.4f after %d epochs", got.Resumes[0], got.History[len(got.History)-1].HeldOutAcc, got.Epochs)

	// The same job without interruption trains the same model.
	ref, err := api.CreateTrainingJob(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	waitTrained(t, api, ref.ID, 300*time.Second)
	resumed, err := api.TrainedModel(context.Background(), j.ID)
	if err != nil {
		t.Fatal(err)
	}
	whole, err := api.TrainedModel(context.Background(), ref.ID)
	if err != nil {
		t.Fatal(err)
	}
	for i := range whole.Weights {
		if !slices.Equal(resumed.Weights[i].Data, whole.Weights[i].Data) {
			t.Fatalf("tensor %s of the resumed job differs from the uninterrupted run", whole.Weights[i].Name)
		}
	}
}

// TestTrainingFootprintWISDM trains MLP(64) on WISDM-sized data (5,418
// examples of 43 features, the real data set published as one device's
// readings) in an edge-agent process, and reports its resident memory
// before and at the peak of the training run.
func TestTrainingFootprintWISDM(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario test: skipped with -short")
	}
	lines, from, to := datasettest.WISDM(t, time.Now())
	p := newProc(t, "trainer-wisdm")
	p.start()
	publishStored(t, p, "phone-1", lines)
	pid := fmt.Sprint(p.cmd.Process.Pid)
	idle := readStatus(t, pid)

	api := agentapi.New("http://"+p.api, nil)
	defer api.CloseIdleConnections()
	spec := datasettest.WISDMSpec("phone-1", "mlp:64", 20, from, to)
	j, err := api.CreateTrainingJob(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	j = waitTrained(t, api, j.ID, 300*time.Second)
	after := readStatus(t, pid)
	last := j.History[len(j.History)-1]
	var secs float64
	for _, h := range j.History {
		secs += h.Seconds
	}
	t.Logf("WISDM MLP(64): %d examples (%d train, %d held out), 20 epochs in %.1fs, held-out accuracy %.4f", j.Data.Kept, j.Data.Train, j.Data.HeldOut, secs, last.HeldOutAcc)
	t.Logf("edge-agent memory: before the job RSS %.1f MB (anon %.1f, file %.1f, peak so far %.1f); after it RSS %.1f MB (anon %.1f, file %.1f); peak RSS (VmHWM) %.1f MB",
		idle.RSS, idle.Anon, idle.File, idle.HWM, after.RSS, after.Anon, after.File, after.HWM)
	if j.Data.Kept != 5418 || j.Data.Incomplete == 0 {
		t.Fatalf("data %+v", *j.Data)
	}
	if last.HeldOutAcc < 0.7 {
		t.Errorf("held-out accuracy %.4f", last.HeldOutAcc)
	}
	// The examples are 5,418 x 43 float64 (1.9 MB); the model, its Adam
	// state and gorgonia's graph a few MB more. A peak 64 MB above the
	// agent's own means memory that is not bounded by the data.
	if grown := after.HWM - idle.HWM; grown > 64 {
		t.Errorf("training raised the peak RSS by %.1f MB", grown)
	}
}
