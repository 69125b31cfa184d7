package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/fedlearn/coord"
	"github.com/edgefleet/edgefleet/fedlearn/datasets"
	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/sim"
)

// simFLFlags are the flags of a federated-learning run (edgectl sim --fl).
type simFLFlags struct {
	dataset   string
	strategy  string
	byzantine string
	dp        string
	secagg    string
	reference string
	carbon    simCarbonFlags
	o         sim.FLOptions
}

const simFLHelp = `
With --fl wisdm|occupancy the run is a federated-learning job instead: every
agent holds its own share of the data set, sent to it by simulated devices over
MQTT (one reading per example, its features and its label as metrics) and
stored before the job starts; the in-process control plane runs the job
(--strategy, --rounds) over every agent and evaluates the global model after
each round on the test set. wisdm: each WISDM user's examples shuffled with
--seed, the first fifth to test and the rest to train (as 'edgectl fl train');
each user is a device of one agent (--agents 36: one user each); the global
test set is the union of the users' test fifths. occupancy: the training file
cut into --agents contiguous slices (default 10), tested on datatest and
datatest2. The report gives each round's accuracy, loss, participants,
failures, bytes and seconds, the centralised model's accuracy on the same split
(trained in-process unless --reference) and the rounds to 0.95x and 0.97x of
it. Faults: --dropout, --kill-during-round, --restart-controlplane-during-round,
--byzantine K:scale=X. --dp z=Z,C=C[,budget=E] runs the job with differential
privacy (central by default; local:... on the devices) and reports the ε spent
after every round. --secagg runs the training rounds under SecAgg+ (four stages
per round; the control plane sees only the sum of the survivors' updates) and
reports each round's stages and the clients that dropped after their shares.` + simCarbonHelp

// simSecAggDefault is bare --secagg: neighbourhoods of half the round's
// clients, 60 % of a neighbourhood to reconstruct, Flower's ranges.
const simSecAggDefault = "num_shares=0.5,reconstruction_threshold=0.6"

func (s *simFLFlags) register(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&s.dataset, "fl", "", "run a federated-learning job on this data set instead: wisdm or occupancy")
	f.IntVar(&s.o.Rounds, "rounds", 0, "--fl: rounds of the job (default 50 for wisdm, 20 for occupancy)")
	f.StringVar(&s.strategy, "strategy", "fedavg", "--fl: aggregation, NAME[:param=value,...] with a job spec's strategy parameters, e.g. fedtrimmedavg:beta=0.2 or multikrum:num_malicious_clients=4,num_clients_to_keep=32")
	f.Float64Var(&s.o.Dropout, "dropout", 0, "--fl: probability that a selected agent sits a round out (seeded)")
	f.BoolVar(&s.o.KillDuringRound, "kill-during-round", false, "--fl: kill one agent hard in the middle of a round and restart it")
	f.BoolVar(&s.o.RestartControlPlaneDuringRound, "restart-controlplane-during-round", false, "--fl: restart the control plane on its database in the middle of a round")
	f.StringVar(&s.byzantine, "byzantine", "", "--fl: K:scale=X, K agents (seeded) send their update scaled by X")
	f.StringVar(&s.dp, "dp", "", "--fl: differential privacy, [central:|local:]z=Z,C=C[,delta=D][,budget=E] (central when the mode is left out)")
	f.StringVar(&s.secagg, "secagg", "", "--fl: secure aggregation (SecAgg+), num_shares=N,reconstruction_threshold=T[,clipping_range=C,quantization_range=Q,modulus_range=M,max_weight=W,stage_timeout=D]; bare --secagg: "+simSecAggDefault)
	f.Lookup("secagg").NoOptDefVal = simSecAggDefault
	f.StringVar(&s.o.Training.Model, "model", "", "--fl: model, lr or mlp:W[,W...] (default mlp:64 for wisdm, lr for occupancy)")
	f.IntVar(&s.o.Training.Epochs, "local-epochs", 0, "--fl: local epochs per round (default: the data set's, see sim.FLDefaults)")
	f.IntVar(&s.o.Training.BatchSize, "batch", 0, "--fl: local mini-batch size (default: the data set's)")
	f.Float64Var(&s.o.Training.LearnRate, "lr", 0, "--fl: local learning rate (default: the data set's)")
	f.StringVar(&s.o.Training.Solver, "solver", "", "--fl: local solver, sgd, momentum or adam (default: the data set's)")
	f.DurationVar(&s.o.RoundTimeout, "round-timeout", 0, "--fl: a round closes this long after it opened when not every client reported (default 2m)")
	f.Float64Var(&s.o.Fraction, "fraction", 0, "--fl: fraction of the agents a round selects (default 1: every agent)")
	s.carbon.register(f)
	f.StringVar(&s.reference, "reference", "", "--fl: the centralised accuracy per test part, PART=ACC[,...] (e.g. test=0.833); default: trained in-process with the seed")
}

// run runs the federated-learning simulation with the shared flags of the
// fleet simulation.
func (s *simFLFlags) run(ctx context.Context, c *cobra.Command, base sim.Options, asJSON bool) error {
	if !slices.Contains(datasets.Names, s.dataset) {
		return cli.Usagef("--fl %q: want %s", s.dataset, strings.Join(datasets.Names, " or "))
	}
	o := s.o
	o.Dataset = s.dataset
	fl := c.Flags()
	if fl.Changed("agents") {
		o.Agents = base.Agents
	}
	if fl.Changed("seed") {
		o.Seed = base.Seed
	}
	if fl.Changed("timeout") {
		o.Timeout = base.Timeout
	}
	o.DataSets, o.DataDir, o.Logger, o.AgentLogger = base.DataSets, base.DataDir, base.Logger, base.AgentLogger
	var err error
	if o.Strategy, err = sim.ParseStrategy(s.strategy); err != nil {
		return cli.Usagef("--strategy: %v", err)
	}
	if s.byzantine != "" {
		if o.Byzantine, o.ByzantineScale, err = parseByzantine(s.byzantine); err != nil {
			return cli.Usagef("--byzantine: %v", err)
		}
	}
	if s.dp != "" {
		if o.DP, err = coord.ParseDP(s.dp); err != nil {
			return cli.Usagef("--dp: %v", err)
		}
	}
	if s.secagg != "" {
		if o.SecAgg, err = coord.ParseSecAgg(s.secagg); err != nil {
			return cli.Usagef("--secagg: %v", err)
		}
	}
	if s.reference != "" {
		if o.Reference, err = parseReference(s.reference); err != nil {
			return cli.Usagef("--reference: %v", err)
		}
	}
	if o.Carbon, err = s.carbon.options(fl, base.TimeScale); err != nil {
		return err
	}
	rep, err := sim.RunFL(ctx, o)
	if err != nil {
		if asJSON && rep.Job != "" {
			cli.PrintJSON(c.OutOrStdout(), rep)
		}
		return err
	}
	if asJSON {
		return cli.PrintJSON(c.OutOrStdout(), rep)
	}
	if err := printSimFLReport(c.OutOrStdout(), rep); err != nil {
		return err
	}
	if rep.Carbon != nil {
		printSimCarbon(c.OutOrStdout(), rep.Carbon)
	}
	return nil
}

// parseByzantine reads "K:scale=X".
func parseByzantine(v string) (int, float64, error) {
	k, rest, ok := strings.Cut(v, ":")
	name, x, ok2 := strings.Cut(rest, "=")
	if !ok || !ok2 || strings.TrimSpace(name) != "scale" {
		return 0, 0, fmt.Errorf("%q: want K:scale=X, e.g. 4:scale=-10", v)
	}
	n, err := strconv.Atoi(strings.TrimSpace(k))
	if err != nil || n < 1 {
		return 0, 0, fmt.Errorf("%q: K must be a whole number of agents, at least 1", v)
	}
	scale, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
	if err != nil || math.IsNaN(scale) || math.IsInf(scale, 0) {
		return 0, 0, fmt.Errorf("%q: the scale must be a finite number", v)
	}
	return n, scale, nil
}

// parseReference reads "PART=ACC[,PART=ACC...]".
func parseReference(v string) (map[string]float64, error) {
	out := map[string]float64{}
	for _, kv := range strings.Split(v, ",") {
		k, x, ok := strings.Cut(kv, "=")
		acc, err := strconv.ParseFloat(strings.TrimSpace(x), 64)
		if !ok || strings.TrimSpace(k) == "" || err != nil || !(acc > 0 && acc <= 1) {
			return nil, fmt.Errorf("%q: want PART=ACCURACY with an accuracy in (0, 1], e.g. test=0.833", kv)
		}
		out[strings.TrimSpace(k)] = acc
	}
	return out, nil
}

func printSimFLReport(w io.Writer, r sim.FLReport) error {
	parts := make([]string, 0, len(r.TestExamples))
	for p := range r.TestExamples {
		parts = append(parts, p)
	}
	sort.Strings(parts)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ROUND\tATTEMPT\tPHASE\t")
	for _, p := range parts {
		fmt.Fprintf(tw, "ACC %s\t", p)
	}
	fmt.Fprintf(tw, "PARTICIPANTS\tFAILURES\tUP\tDOWN\tSECONDS\n")
	for _, rd := range r.Rounds {
		phase := rd.Phase
		if rd.Kind == "stats" {
			phase += " (statistics)"
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t", rd.Round, rd.Attempt, phase)
		for _, p := range parts {
			if acc, ok := rd.Accuracy[p]; ok {
				fmt.Fprintf(tw, "%.4f\t", acc)
			} else {
				fmt.Fprintf(tw, "-\t")
			}
		}
		fmt.Fprintf(tw, "%d/%d\t%d\t%d\t%d\t%.1f\n", rd.Participants, rd.Selected, rd.Failures, rd.BytesUp, rd.BytesDown, rd.Seconds)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	rows := [][2]string{
		{"data set", fmt.Sprintf("%s: %d agents, %d devices, %d training examples", r.Dataset, r.Agents, r.Devices, r.Examples)},
		{"training", fmt.Sprintf("%s, %s lr %g, batch %d, %d local epochs; strategy %s; seed %d", r.Training.Model, r.Training.Solver, r.Training.LearnRate, r.Training.BatchSize, r.Training.Epochs, r.Strategy.Name, r.Seed)},
		{"job", fmt.Sprintf("%s %s %s", r.Job, r.Status, r.Reason)},
	}
	for _, p := range parts {
		to := func(m map[string]int) string {
			if n, ok := m[p]; ok {
				return "at round " + strconv.Itoa(n)
			}
			return "never"
		}
		rows = append(rows, [2]string{"accuracy " + p, fmt.Sprintf("final %.4f; centralised %.4f (%s); 0.95x %s, 0.97x %s",
			r.FinalAccuracy[p], r.Reference[p], r.ReferenceSource, to(r.RoundsTo95), to(r.RoundsTo97))})
	}
	rows = append(rows,
		[2]string{"updates", fmt.Sprintf("%d accepted by the control plane, %d participants over the rounds, %d distinct agent rounds accepted; counted once: %v; refused %v",
			r.Updates.Accepted, r.Updates.Participants, r.Updates.DistinctAccepted, r.Updates.CountedOnce, r.Updates.Refused)},
		[2]string{"evaluation check", fmt.Sprintf("control plane %v, sim %v, match %v", r.EvaluationCheck.ControlPlane, r.EvaluationCheck.Sim, r.EvaluationCheck.Match)},
		[2]string{"traffic", fmt.Sprintf("%d bytes up, %d bytes down", r.BytesUp, r.BytesDown)},
		[2]string{"time", fmt.Sprintf("setup %.1f s, job %.1f s, total %.1f s", r.SetupSeconds, r.JobSeconds, r.TotalSeconds)},
		[2]string{"load", fmt.Sprintf("1-min load mean %.2f, max %.2f on %d CPUs", r.Load.Mean, r.Load.Max, r.Load.CPUs)},
	)
	if p := r.Privacy; p != nil {
		rows = append(rows, [2]string{"privacy", fmt.Sprintf("%s DP: ε %.4g at δ %g after %d rounds", p.Mode, p.Epsilon, p.Delta, p.Rounds)})
	}
	if f := r.Faults; f.Dropout > 0 || f.Killed != nil || f.ControlPlaneRestart != nil || len(f.Byzantine) > 0 {
		rows = append(rows, [2]string{"faults", fmt.Sprintf("dropout %g (%d tasks sat out); Byzantine %v ×%g", f.Dropout, f.Dropped, f.Byzantine, f.ByzantineScale)})
		if k := f.Killed; k != nil {
			rows = append(rows, [2]string{"killed agent", fmt.Sprintf("%s in round %d after %d of %d reported, down %.1f s, its update accepted after the restart: %v", k.Agent, k.Round, k.ReportedBefore, k.Selected, k.DownSeconds, k.Reported)})
		}
		if k := f.ControlPlaneRestart; k != nil {
			rows = append(rows, [2]string{"control plane restart", fmt.Sprintf("in round %d after %d of %d reported, down %.1f s", k.Round, k.ReportedBefore, k.Selected, k.DownSeconds)})
		}
	}
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}
