package uplink

import (
	"context"
	"crypto/rand"
	"errors"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn/secagg"
)

// Secure aggregation: a round under SecAgg+ comes as four tasks, one per
// stage (cpapi.FLTaskSecAgg), each answered by the same sealed and signed
// path as an update. The agent's side of the round (fedlearn/secagg's
// Client, its key pairs and mask seed) lives in memory from the setup
// stage to the unmask stage: an agent restarted mid-round has no answer
// to the later stages and is left out of the round (its masks are removed
// from its neighbours' shares, or it is in nobody's masks).

// flSecAggKeep bounds the rounds whose client state is kept.
const flSecAggKeep = 4

// flSecAgg answers one stage of a secure-aggregation round; the collect
// stage trains first.
func (u *Uplink) flSecAgg(ctx context.Context, client *cpapi.Client, t cpapi.FLTask) *flPending {
	sa := t.SecAgg
	log := u.log.With("fl_job", t.Job, "round", t.Round, "attempt", t.Attempt, "secagg_stage", sa.Stage)
	if u.sa == nil {
		u.sa = map[string]*secagg.Client{}
	}
	c := u.sa[t.Key()]
	if sa.Stage == cpapi.FLSecAggSetup {
		c = secagg.NewClient(u.agentName(), rand.Reader)
		u.sa[t.Key()] = c
		u.saOrder = append(u.saOrder, t.Key())
		if len(u.saOrder) > flSecAggKeep {
			delete(u.sa, u.saOrder[0])
			u.saOrder = u.saOrder[1:]
		}
	}
	if c == nil {
		log.Warn("fl secure aggregation: no state for this round (the agent restarted after its setup stage); this agent sits the round out")
		return nil
	}
	msg, err := c.Respond(sa.Message, func() ([]float32, error) {
		tctx := ctx
		if !t.Deadline.IsZero() {
			var cancel context.CancelFunc
			tctx, cancel = context.WithDeadline(ctx, t.Deadline)
			defer cancel()
		}
		log.Info("fl round task received; training (secure aggregation)")
		delta, examples, ok := u.flTrain(tctx, t, log)
		if !ok {
			return nil, errSatOut
		}
		return secagg.Weighted(delta, examples, sa.MaxWeight), nil
	})
	switch {
	case errors.Is(err, errSatOut):
		return nil // logged by flTrain
	case err != nil:
		log.Warn("fl secure aggregation: this agent sits the round out", "err", err)
		delete(u.sa, t.Key())
		return nil
	}
	if sa.Stage == cpapi.FLSecAggUnmask {
		delete(u.sa, t.Key())
	}
	return u.flSeal(ctx, client, t, cpapi.FLUpdate{Job: t.Job, Round: t.Round, Attempt: t.Attempt, SecAgg: msg}, log)
}

// errSatOut: local training failed (logged); the agent sits the round out.
var errSatOut = errors.New("uplink: fl training failed")

// agentName is the agent's id once enrolled, else its configured name.
func (u *Uplink) agentName() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.id != nil {
		return u.id.AgentID
	}
	return u.name
}
