package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newFLJobsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "jobs",
		Short: "Federated-learning jobs run by the control plane",
		Long: `jobs creates, lists, shows, watches and cancels federated-learning jobs. A job
names a model (architecture, feature schema, labels, optional initial weights),
the agents' data (time range, label selector), a strategy with Flower's
parameter names, the number of rounds and the client selection; the control
plane runs its rounds, and a finished job's model goes to the model registry.`,
		RunE: cli.GroupRunE,
	}
	c.AddCommand(a.newFLJobsCreateCmd(), a.newFLJobsListCmd(), a.newFLJobsGetCmd(), a.newFLJobsWatchCmd(), a.newFLJobsCancelCmd())
	return c
}

// flSpec decodes a job's spec; a spec this build cannot read shows as
// empty fields rather than failing the listing.
func flSpec(j cpapi.FLJob) coord.Spec {
	var s coord.Spec
	_ = json.Unmarshal(j.Spec, &s)
	return s
}

// printFLJob prints one job in a few lines.
func printFLJob(w io.Writer, j cpapi.FLJob) error {
	s := flSpec(j)
	fmt.Fprintf(w, "Job:       %s\n", j.ID)
	fmt.Fprintf(w, "Status:    %s\n", j.Status)
	if j.Reason != "" {
		fmt.Fprintf(w, "Reason:    %s\n", cell(j.Reason, 0))
	}
	fmt.Fprintf(w, "Model:     %s (%s, %d inputs, %d classes)\n", cell(s.Model, 0), s.Arch, s.Arch.Inputs, s.Arch.Classes)
	fmt.Fprintf(w, "Strategy:  %s\n", strings.ToLower(s.Strategy.Name))
	fmt.Fprintf(w, "Rounds:    %d of %d\n", j.Done, s.Rounds)
	sel := s.Selector
	if sel == "" {
		sel = "every agent"
	}
	fmt.Fprintf(w, "Clients:   %s; at least %d available, fraction %.2g, at least %d per round\n", cell(sel, 0), s.MinAvailable, s.Fraction, s.MinFit)
	if s.FederatedStats != nil && *s.FederatedStats {
		done := "pending"
		if j.Schema != nil {
			done = "done"
		}
		fmt.Fprintf(w, "Normalise: federated statistics round (round 0) %s\n", done)
	}
	if s.DP != nil {
		spent := ""
		if p := j.Privacy; p != nil {
			spent = fmt.Sprintf("; spent ε=%.4g at δ=%g over %d rounds", p.Epsilon, p.Delta, p.Rounds)
		}
		fmt.Fprintf(w, "Privacy:   %s%s\n", s.DP, spent)
	}
	if a := s.SecAgg; a != nil {
		fmt.Fprintf(w, "SecAgg:    SecAgg+ num_shares=%g, reconstruction_threshold=%g, max_weight=%g, stage_timeout=%s\n",
			a.NumShares, a.ReconstructionThreshold, a.MaxWeight, time.Duration(a.StageTimeout))
	}
	if r := j.Current; r != nil {
		kind := ""
		if r.Kind == coord.RoundStats {
			kind = " (statistics)"
		}
		if sa := r.SecAgg; sa != nil {
			kind += ", secure aggregation stage " + sa.Stage
		}
		fmt.Fprintf(w, "Current:   round %d%s attempt %d, %s, %d of %d reported, deadline %s\n", r.Round, kind, r.Attempt, r.Phase, len(r.Reported), len(r.Selected), r.Deadline.UTC().Format("2006-01-02 15:04:05"))
	}
	if j.ModelVersion != "" {
		fmt.Fprintf(w, "Registry:  %s version %s\n", cell(s.Model, 0), cell(j.ModelVersion, 0))
	}
	_, err := fmt.Fprintf(w, "Created:   %s by %s\n", j.Created.Format("2006-01-02 15:04:05"), cell(j.Creator, 0))
	return err
}
