package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/controlplane"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// DeliveryReport is the exactly-once check of the device telemetry:
// every numeric reading the agents stored (device, metric, time, value:
// what their uplinks send) against what the control plane holds, and
// the control plane's own counts of what it accepted.
type DeliveryReport struct {
	// Sent is the readings compared: the numeric readings the agents
	// hold (strings and data are not uploaded).
	Sent int64 `json:"readings_sent"`
	// Missing were sent and are not held; OtherValue are held with
	// another value; NotSent are held and were never sent.
	Missing    int64 `json:"readings_missing"`
	OtherValue int64 `json:"readings_with_other_value"`
	NotSent    int64 `json:"readings_not_sent"`
	// Accepted is the readings the control plane stored from uploads
	// (controlplane_telemetry_readings_total), StoredTwice how many of
	// them it stored again: Accepted minus the readings it holds.
	Accepted    int64 `json:"readings_accepted"`
	StoredTwice int64 `json:"readings_stored_twice"`
	// DuplicateBatches is the uploads the control plane answered
	// "duplicate" (a retry it had), ConflictBatches those it refused as
	// conflicts (same identity, other readings).
	DuplicateBatches int64 `json:"batches_answered_duplicate"`
	ConflictBatches  int64 `json:"batches_refused_as_conflicts"`
	// LostAnswers is the upload answers the run dropped on purpose (a
	// fault of tests: the agent retries a batch the control plane has).
	LostAnswers int64 `json:"answers_lost,omitempty"`
}

// Err says how the telemetry was not delivered exactly once, or nil.
func (r *DeliveryReport) Err() error {
	if r == nil {
		return errors.New("sim: telemetry delivery not checked (no control plane)")
	}
	var errs []error
	if r.Missing != 0 || r.OtherValue != 0 || r.NotSent != 0 {
		errs = append(errs, fmt.Errorf("%d of %d readings sent are missing at the control plane, %d held with another value, %d held that were never sent",
			r.Missing, r.Sent, r.OtherValue, r.NotSent))
	}
	if r.StoredTwice != 0 {
		errs = append(errs, fmt.Errorf("the control plane stored %d readings more than once (%d accepted)", r.StoredTwice, r.Accepted))
	}
	if r.ConflictBatches != 0 {
		errs = append(errs, fmt.Errorf("the control plane refused %d uploads as conflicts", r.ConflictBatches))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("sim: telemetry not delivered exactly once: %w", errors.Join(errs...))
}

// uplinkFaults are faults a test injects into a run's uplink
// (Options.faults).
type uplinkFaults struct {
	// loseAnswerEvery: every n-th telemetry upload reaches the control
	// plane and is stored, but its answer is lost (the agent sees an
	// error and retries). 0: none.
	loseAnswerEvery int64
	// noDedup switches the control plane's de-duplication of telemetry
	// off: every upload, a retry too, is stored as a new batch. It
	// exists to show that the exactly-once check catches it.
	noDedup bool
}

// errAnswerLost is what an upload whose answer the run dropped fails with.
var errAnswerLost = errors.New("sim: upload answer lost (injected fault)")

// answerLoss drops the answer of every n-th telemetry upload after the
// control plane handled it.
type answerLoss struct {
	every   int64
	uploads atomic.Int64
	lost    atomic.Int64
}

func (l *answerLoss) wrap(rt http.RoundTripper) http.RoundTripper {
	if l.every <= 0 {
		return rt
	}
	return roundTripFunc(func(r *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(r)
		if err != nil || r.Method != http.MethodPost || r.URL.Path != "/v1/agents/self/telemetry" || l.uploads.Add(1)%l.every != 0 {
			return resp, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		l.lost.Add(1)
		return nil, errAnswerLost
	})
}

// wrapUplink is the agents' uplink transport: the simulated outage,
// then the lost answers.
func (f *Fleet) wrapUplink(rt http.RoundTripper) http.RoundTripper {
	return f.outage.wrap(f.loss.wrap(rt))
}

// outboxPending returns the outbox batches an agent has not had
// acknowledged yet.
func (n *node) outboxPending(ctx context.Context) (int64, error) {
	in := n.ag.Ingest()
	if in == nil {
		return 0, nil
	}
	st, err := in.Store().Stats(ctx)
	if err != nil {
		return 0, fmt.Errorf("sim: ingest stats of %s: %w", n.name, err)
	}
	return st.OutboxPendingBatches, nil
}

// noDedupStore stores every telemetry upload as a new batch (a fresh
// epoch per call): the control plane's de-duplication switched off.
type noDedupStore struct {
	controlplane.Store
	n atomic.Int64
}

func (s *noDedupStore) IngestTelemetry(ctx context.Context, agentID string, b cpapi.TelemetryBatch, at time.Time) (cpapi.IngestResult, error) {
	b.Epoch = fmt.Sprintf("nodedup-%d", s.n.Add(1))
	return s.Store.IngestTelemetry(ctx, agentID, b, at)
}

// counter sums a counter of the control plane's registry over the
// series whose label (if any) has the value given.
func counter(reg *prometheus.Registry, name, label, value string) (int64, error) {
	mfs, err := reg.Gather()
	if err != nil {
		return 0, fmt.Errorf("sim: control plane metrics: %w", err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			if label != "" {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == label && lp.GetValue() != value {
						continue next
					}
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return int64(sum), nil
}

// readingKey is one reading of an agent, time in µs.
type readingKey struct {
	device, metric string
	us             int64
}

// checkDelivery compares, agent by agent, every numeric reading stored
// at the agent with the readings the control plane holds for it, and
// reads the control plane's counts.
func (f *Fleet) checkDelivery(ctx context.Context) (*DeliveryReport, error) {
	r := &DeliveryReport{LostAnswers: f.loss.lost.Load()}
	var held int64
	for _, n := range f.nodes {
		in := n.ag.Ingest()
		id := n.ag.Uplink().Status().AgentID
		if in == nil {
			continue
		}
		rs, err := in.Store().Readings(ctx, ingest.ReadingQuery{Limit: math.MaxInt32})
		if err != nil {
			return nil, fmt.Errorf("sim: readings of %s: %w", n.name, err)
		}
		sent := make(map[readingKey]float64, len(rs))
		for _, rd := range rs {
			if rd.Kind == ingest.KindNumber || rd.Kind == ingest.KindBool {
				sent[readingKey{rd.Device, rd.Metric, rd.Time.UnixMicro()}] = rd.Value
			}
		}
		r.Sent += int64(len(sent))
		var got []cpapi.Series
		if id != "" {
			if got, err = f.cp.points(ctx, id, f.clock.Now()); err != nil {
				return nil, err
			}
		}
		seen := 0
		for _, s := range got {
			for _, p := range s.Points {
				held++
				v, ok := sent[readingKey{s.Device, s.Metric, p.TS.UnixMicro()}]
				switch {
				case !ok || p.TS.UnixNano()%1000 != 0:
					r.NotSent++
				case math.Float64bits(v) != math.Float64bits(p.Value):
					seen++
					r.OtherValue++
				default:
					seen++
				}
			}
		}
		r.Missing += int64(len(sent) - seen)
	}
	var err error
	if r.Accepted, err = counter(f.cp.reg, "controlplane_telemetry_readings_total", "", ""); err != nil {
		return nil, err
	}
	if r.DuplicateBatches, err = counter(f.cp.reg, "controlplane_telemetry_batches_total", "result", "duplicate"); err != nil {
		return nil, err
	}
	if r.ConflictBatches, err = counter(f.cp.reg, "controlplane_telemetry_batches_total", "result", "conflict"); err != nil {
		return nil, err
	}
	r.StoredTwice = r.Accepted - held
	return r, nil
}

// points returns every raw reading the control plane holds for one
// agent id, by series; series over the query limit are asked alone.
func (c *controlPlane) points(ctx context.Context, agentID string, now time.Time) ([]cpapi.Series, error) {
	q := cpapi.TelemetryQuery{Agent: agentID, From: now.Add(-30 * 24 * time.Hour), To: now.Add(30 * time.Minute), Limit: maxPoints}
	res, err := c.client.QueryTelemetry(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("sim: telemetry of %s: %w", agentID, err)
	}
	if !res.Truncated {
		return res.Series, nil
	}
	q.Bucket, q.Limit = 60*24*time.Hour, 0
	list, err := c.client.QueryTelemetry(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("sim: telemetry of %s: %w", agentID, err)
	}
	var out []cpapi.Series
	for _, s := range list.Series {
		q := cpapi.TelemetryQuery{Agent: agentID, Device: s.Device, Metric: s.Metric, From: q.From, To: q.To, Limit: maxPoints}
		one, err := c.client.QueryTelemetry(ctx, q)
		if err != nil {
			return nil, fmt.Errorf("sim: telemetry of %s/%s/%s: %w", agentID, s.Device, s.Metric, err)
		}
		if one.Truncated {
			return nil, fmt.Errorf("sim: %s/%s/%s holds more than %d readings: too many to compare", agentID, s.Device, s.Metric, maxPoints)
		}
		for _, x := range one.Series {
			if x.Device == s.Device && x.Metric == s.Metric {
				out = append(out, x)
			}
		}
	}
	return out, nil
}

// maxPoints is the control plane's bound on the raw points of a query.
const maxPoints = 100000
