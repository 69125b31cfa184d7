package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newAgentsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:     "agents",
		Aliases: []string{"agent"},
		Short:   "List, inspect, label and decommission enrolled agents",
		RunE:    cli.GroupRunE,
	}
	c.AddCommand(a.newAgentsListCmd(), a.newAgentsShowCmd(), a.newAgentsLabelCmd(), a.newAgentsDecommissionCmd())
	return c
}

var agentStates = []string{string(cpapi.StateOnline), string(cpapi.StateStale), string(cpapi.StateOffline), string(cpapi.StateDecommissioned)}

func (a *app) newAgentsListCmd() *cobra.Command {
	var (
		out       cli.OutputFlags
		selectors []string
		state     string
		watch     bool
		interval  time.Duration
	)
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List agents with their state (online, stale, offline, decommissioned)",
		Long: `list prints the registry: one row per agent with its state, derived from
the time of its last heartbeat. --json prints an array of agent objects (id,
name, state, labels, last_seen, version, os, arch, first_seen, health,
resources, ...). --watch redraws the listing every --interval until interrupted.`,
		Example: `  edgectl agents list
  edgectl agents list --selector site=berlin --state online
  edgectl agents list --watch --interval 5s
  edgectl agents list -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if state != "" && !contains(agentStates, state) {
				return cli.Usagef("--state %q: want one of %s", state, strings.Join(agentStates, ", "))
			}
			if watch && interval <= 0 {
				return cli.Usagef("--interval must be positive")
			}
			filter := cpapi.AgentFilter{State: cpapi.AgentState(state), Labels: cli.SplitList(selectors)}
			for _, sel := range filter.Labels {
				if k, _, _ := strings.Cut(sel, "="); k == "" {
					return cli.Usagef("--selector %q: want key=value or key", sel)
				}
			}
			s, err := a.connect(c)
			if err != nil {
				return err
			}
			defer s.client.CloseIdleConnections()
			list := func(ctx context.Context) ([]cpapi.Agent, error) {
				ctx, cancel := context.WithTimeout(ctx, a.timeout)
				defer cancel()
				agents, err := s.client.ListAgents(ctx, filter)
				if err != nil {
					return nil, s.explain(err)
				}
				return normalizeAgents(agents), nil
			}
			w := c.OutOrStdout()
			if !watch {
				agents, err := list(c.Context())
				if err != nil {
					return err
				}
				return cli.Print(w, format, agents, func(w io.Writer) error { return printAgentTable(w, agents, a.now()) })
			}

			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			tty := isTerminal(w)
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				agents, err := list(ctx)
				if ctx.Err() != nil {
					return nil
				}
				if format == cli.FormatTable {
					if tty {
						fmt.Fprint(w, "\x1b[H\x1b[2J")
					}
					fmt.Fprintf(w, "Every %s: edgectl agents list    %s\n\n", interval, a.now().Format(time.RFC3339))
				}
				if err != nil {
					fmt.Fprintf(c.ErrOrStderr(), "%s: %v\n", c.Root().Name(), err)
				} else if err := cli.Print(w, format, agents, func(w io.Writer) error { return printAgentTable(w, agents, a.now()) }); err != nil {
					return err
				}
				if format == cli.FormatTable && !tty {
					fmt.Fprintln(w)
				}
				select {
				case <-ctx.Done():
					return nil
				case <-tick.C:
				}
			}
		},
	}
	out.Register(c)
	f := c.Flags()
	f.StringArrayVarP(&selectors, "selector", "l", nil, "label selector key=value or key (present); repeatable or comma-separated, all must match")
	f.StringVar(&state, "state", "", "only agents in this state: "+strings.Join(agentStates, ", "))
	f.BoolVarP(&watch, "watch", "w", false, "redraw the listing every --interval until interrupted")
	f.DurationVar(&interval, "interval", 2*time.Second, "refresh interval of --watch")
	c.RegisterFlagCompletionFunc("state", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return agentStates, cobra.ShellCompDirectiveNoFileComp
	})
	return c
}

// normalizeAgents makes listings print [] and {} instead of null.
func normalizeAgents(agents []cpapi.Agent) []cpapi.Agent {
	if agents == nil {
		agents = []cpapi.Agent{}
	}
	for i := range agents {
		if agents[i].Labels == nil {
			agents[i].Labels = map[string]string{}
		}
	}
	return agents
}

func printAgentTable(w io.Writer, agents []cpapi.Agent, now time.Time) error {
	if len(agents) == 0 {
		_, err := fmt.Fprintln(w, "No agents.")
		return err
	}
	tw := cli.NewTable(w)
	fmt.Fprintln(tw, "ID\tNAME\tSTATE\tLAST SEEN\tVERSION\tOS/ARCH\tLABELS")
	for _, ag := range agents {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", ag.ID, dash(ag.Name), ag.State, cli.Age(now, ag.LastSeen),
			dash(ag.Version), dash(osArch(ag.OS, ag.Arch)), cli.FormatLabels(ag.Labels))
	}
	return tw.Flush()
}

func osArch(os, arch string) string {
	if os == "" && arch == "" {
		return ""
	}
	return os + "/" + arch
}

func (a *app) newAgentsShowCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:               "show ID",
		Aliases:           []string{"get"},
		Short:             "Show one agent: identity, state, health, resources, certificate and keys",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeAgentIDs,
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if err := checkID("agent", args[0]); err != nil {
				return err
			}
			ag, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.Agent, error) {
				return cl.GetAgent(ctx, args[0])
			})
			if err != nil {
				return err
			}
			if ag.Labels == nil {
				ag.Labels = map[string]string{}
			}
			return cli.Print(c.OutOrStdout(), format, ag, func(w io.Writer) error { return printAgent(w, ag, a.now()) })
		},
	}
	out.Register(c)
	return c
}

func printAgent(w io.Writer, ag cpapi.Agent, now time.Time) error {
	tw := cli.NewTable(w)
	row := func(k, format string, args ...any) {
		fmt.Fprintf(tw, "%s:\t"+format+"\n", append([]any{k}, args...)...)
	}
	when := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return fmt.Sprintf("%s (%s)", t.Local().Format(time.RFC3339), cli.Age(now, t))
	}
	row("ID", "%s", ag.ID)
	row("Name", "%s", dash(ag.Name))
	row("State", "%s", ag.State)
	row("Labels", "%s", cli.FormatLabels(ag.Labels))
	row("Version", "%s", dash(ag.Version))
	row("OS/Arch", "%s", dash(osArch(ag.OS, ag.Arch)))
	row("First seen", "%s", when(ag.FirstSeen))
	row("Last seen", "%s", when(ag.LastSeen))
	if h := ag.Health; h != nil {
		var checks []string
		for _, k := range sortedKeys(h.Checks) {
			checks = append(checks, k+"="+h.Checks[k])
		}
		if len(checks) > 0 {
			row("Health", "%s (%s)", h.Status, strings.Join(checks, ", "))
		} else {
			row("Health", "%s", h.Status)
		}
		for _, inc := range h.Incidents {
			row("DB incident", "%s database quarantined as %s at %s (%s)%s", inc.DB, inc.QuarantinedAs,
				inc.At.Local().Format(time.RFC3339), inc.Status, incidentCounts(inc))
		}
	} else {
		row("Health", "not reported")
	}
	if r := ag.Resources; r != nil {
		row("CPU", "%.1f%% (load1 %.2f)", r.CPUPercent, r.Load1)
		row("Memory", "%s of %s", bytesIEC(r.MemUsedBytes), bytesIEC(r.MemTotalBytes))
		row("Disk", "%s of %s", bytesIEC(r.DiskUsedBytes), bytesIEC(r.DiskTotalBytes))
		row("Uptime", "%s", (time.Duration(r.UptimeSeconds) * time.Second).String())
	}
	row("Certificate", "serial %s, expires %s", dash(ag.CertSerial), ag.CertNotAfter.Local().Format(time.RFC3339))
	pq := "none"
	if len(ag.XWingPublic) > 0 || len(ag.MLDSAPublic) > 0 {
		pq = fmt.Sprintf("X-Wing %d bytes, ML-DSA %d bytes", len(ag.XWingPublic), len(ag.MLDSAPublic))
	}
	row("Post-quantum keys", "%s", pq)
	row("Enrollment token", "%s", dash(ag.EnrollmentTokenID))
	if ag.DecommissionedAt != nil {
		row("Decommissioned", "%s", when(*ag.DecommissionedAt))
	}
	return tw.Flush()
}

func (a *app) newAgentsLabelCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   "label ID KEY=VALUE... KEY-...",
		Short: "Set (key=value) and remove (key-) labels of an agent",
		Example: `  edgectl agents label 3f2a site=berlin rack=4
  edgectl agents label 3f2a rack-`,
		Args:              cobra.MinimumNArgs(2),
		ValidArgsFunction: a.completeAgentIDs,
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if err := checkID("agent", args[0]); err != nil {
				return err
			}
			set, remove, err := cli.ParseLabelEdits(args[1:])
			if err != nil {
				return cli.UsageError{Err: err}
			}
			ag, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.Agent, error) {
				return cl.UpdateLabels(ctx, args[0], cpapi.LabelsPatch{Set: set, Remove: remove})
			})
			if err != nil {
				return err
			}
			if ag.Labels == nil {
				ag.Labels = map[string]string{}
			}
			return cli.Print(c.OutOrStdout(), format, ag, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Agent %s labels: %s\n", ag.ID, cli.FormatLabels(ag.Labels))
				return err
			})
		},
	}
	out.Register(c)
	return c
}

func (a *app) newAgentsDecommissionCmd() *cobra.Command {
	var (
		out cli.OutputFlags
		yes bool
	)
	c := &cobra.Command{
		Use:   "decommission ID",
		Short: "Revoke an agent's certificate; every later request from it is refused",
		Long: `decommission revokes the agent's client certificate. The agent keeps its
registry entry (state "decommissioned") but the control plane refuses it from
then on; to bring the device back, enroll it again with a new token. Without
--yes the command asks for confirmation, and refuses when stdin is not a
terminal.`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeAgentIDs,
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if err := checkID("agent", args[0]); err != nil {
				return err
			}
			id := args[0]
			s, err := a.connect(c)
			if err != nil {
				return err
			}
			defer s.client.CloseIdleConnections()
			if !yes {
				ctx, cancel := a.ctx(c)
				ag, err := s.client.GetAgent(ctx, id)
				cancel()
				if err != nil {
					return s.explain(err)
				}
				ok, err := confirm(c, fmt.Sprintf("Decommission agent %s (%s, %s)? Its certificate is revoked for good. [y/N] ", ag.ID, dash(ag.Name), ag.State))
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("decommission of %s cancelled", id)
				}
			}
			// The call's time starts after the operator answered.
			ctx, cancel := a.ctx(c)
			defer cancel()
			ag, err := s.client.Decommission(ctx, id)
			if err != nil {
				return s.explain(err)
			}
			if ag.Labels == nil {
				ag.Labels = map[string]string{}
			}
			return cli.Print(c.OutOrStdout(), format, ag, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Agent %s decommissioned; certificate %s revoked.\n", ag.ID, ag.CertSerial)
				return err
			})
		},
	}
	out.Register(c)
	c.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return c
}

// confirm asks a yes/no question on stderr and reads the answer from
// stdin. A stdin that is a file or pipe rather than a terminal is refused,
// so that scripts must say --yes.
func confirm(c *cobra.Command, question string) (bool, error) {
	in := c.InOrStdin()
	if f, ok := in.(*os.File); ok && !isTerminal(f) {
		return false, cli.Usagef("stdin is not a terminal: pass --yes to confirm")
	}
	fmt.Fprint(c.ErrOrStderr(), question)
	var line []byte
	buf := make([]byte, 1)
	for len(line) < 64 {
		n, err := in.Read(buf)
		if n == 1 {
			if buf[0] == '\n' {
				break
			}
			line = append(line, buf[0])
		}
		if err != nil {
			break
		}
	}
	ans := strings.ToLower(strings.TrimSpace(string(line)))
	return ans == "y" || ans == "yes", nil
}

// completeAgentIDs offers agent ids (with names) for the first argument.
func (a *app) completeAgentIDs(c *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	conn, err := a.resolve(c)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	cl, err := newClient(conn, 3*time.Second)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer cl.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(c.Context(), 3*time.Second)
	defer cancel()
	agents, err := cl.ListAgents(ctx, cpapi.AgentFilter{})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	out := make([]string, 0, len(agents))
	for _, ag := range agents {
		out = append(out, ag.ID+"\t"+ag.Name+" ("+string(ag.State)+")")
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// incidentCounts tells what a salvage of an ingestion database kept and lost.
func incidentCounts(inc cpapi.DBIncident) string {
	if inc.DB != "ingest" {
		return ""
	}
	lost := "unknown"
	if inc.LostReadings >= 0 {
		lost = strconv.FormatInt(inc.LostReadings, 10)
	}
	return fmt.Sprintf(": %d readings salvaged, %s lost; %d outbox batches salvaged, about %d lost",
		inc.SalvagedReadings, lost, inc.SalvagedOutbox, inc.LostOutbox)
}
