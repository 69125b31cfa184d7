package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/clientconfig"
)

// statusReport is what status prints: the agent's GET /v1/status answer
// and the ingestion rate measured between two of them.
type statusReport struct {
	agentapi.Status
	// IngestRate is messages received per second over RateWindowSeconds
	// (absent with --window 0, without ingestion, or across a restart).
	IngestRate        *float64 `json:"ingest_rate,omitempty"`
	RateWindowSeconds float64  `json:"rate_window_seconds,omitempty"`
}

func newStatusCmd() *cobra.Command {
	var (
		out     cli.OutputFlags
		api     string
		window  time.Duration
		timeout time.Duration
	)
	c := &cobra.Command{
		Use:   "status",
		Short: "Show a running agent at a glance: members, ingestion rate and backlog, uplink, key versions",
		Long: `status asks a running agent's local API (GET /v1/status) for its state:
node, version, uptime and health; members by state; ingestion (broker,
subscription, back-pressure, the backlog of messages received but not yet
committed, the outbox waiting for the uplink); the uplink (enrollment,
breaker, last heartbeat and upload); the key versions the agent holds and
its gossip keyring. It asks twice, --window apart, to measure the ingestion
rate (--window 0 asks once and shows no rate).

--json prints the agent's answer with ingest_rate (messages per second) and
rate_window_seconds added. Model and scheduler state are not reported yet.`,
		Example: `  edge-agent status
  edge-agent status --api 10.0.0.3:7070 --json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if window < 0 || timeout <= 0 {
				return cli.Usagef("--window must not be negative and --timeout must be positive")
			}
			base, err := clientconfig.NormalizeAgent(api)
			if err != nil {
				return cli.Usagef("--api: %v", err)
			}
			client := agentapi.New(base, nil)
			defer client.CloseIdleConnections()
			rep, err := sampleStatus(c.Context(), client, window, timeout)
			if err != nil {
				var ue *agentapi.UnreachableError
				if errors.As(err, &ue) {
					return fmt.Errorf("no answer from the agent API at %s: %w (is edge-agent running? set --api)", base, ue.Err)
				}
				return err
			}
			return cli.Print(c.OutOrStdout(), format, rep, func(w io.Writer) error { return printStatus(w, rep) })
		},
	}
	out.Register(c)
	f := c.Flags()
	f.StringVar(&api, "api", agent.DefaultConfig().API.Addr, "the agent's local API: host:port or http://host:port (its api.addr)")
	f.DurationVar(&window, "window", time.Second, "measure the ingestion rate over this long (0: no rate)")
	f.DurationVar(&timeout, "timeout", 5*time.Second, "bound on each request")
	return c
}

// sampleStatus asks for the status, and again after window to measure the
// ingestion rate.
func sampleStatus(ctx context.Context, client *agentapi.Client, window, timeout time.Duration) (statusReport, error) {
	get := func() (agentapi.Status, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return client.Status(ctx)
	}
	first, err := get()
	if err != nil || window == 0 {
		return statusReport{Status: first}, err
	}
	if err := clock.Sleep(ctx, clock.Real(), window); err != nil {
		return statusReport{}, err
	}
	second, err := get()
	if err != nil {
		return statusReport{}, err
	}
	rep := statusReport{Status: second}
	if r, ok := agentapi.IngestRate(first, second); ok {
		rep.IngestRate, rep.RateWindowSeconds = &r, second.At.Sub(first.At).Seconds()
	}
	return rep, nil
}

func printStatus(w io.Writer, r statusReport) error {
	st := r.Status
	now := st.At // ages on the agent's clock
	tw := cli.NewTable(w)
	health := "-"
	if st.Health != nil {
		health = st.Health.Status
	}
	state := "running"
	if !st.Running {
		state = "not running"
	}
	fmt.Fprintf(tw, "Agent:\t%s (%s), %s, up %s, health %s\n", safe(st.Node, 0), safe(st.Version, 0), state,
		(time.Duration(st.UptimeSeconds) * time.Second).String(), health)
	if st.Health != nil {
		for _, k := range slices.Sorted(maps.Keys(st.Health.Checks)) {
			if v := st.Health.Checks[k]; v != "ok" && !strings.HasPrefix(k, "members_") {
				fmt.Fprintf(tw, "\t  %s: %s\n", safe(k, 0), safe(v, 0))
			}
		}
	}
	fmt.Fprintf(tw, "Members:\t%d alive, %d dead, %d left\n", st.Members.Alive, st.Members.Dead, st.Members.Left)
	for _, m := range st.Members.List {
		fmt.Fprintf(tw, "\t  %s\t%s\t%s\t%s\n", safe(m.Name, 0), safe(m.Addr, 0), safe(m.State, 0), safe(m.Meta.Version, 0))
	}

	in := st.Ingest
	switch {
	case !in.Enabled:
		fmt.Fprintf(tw, "Ingestion:\tdisabled\n")
	default:
		sub := "subscribed to " + safe(in.Broker, 0)
		if !in.Subscribed {
			sub = "NOT subscribed to " + safe(in.Broker, 0)
		}
		if in.Embedded {
			sub += " (embedded broker)"
		}
		rate := "rate not measured"
		if r.IngestRate != nil {
			rate = fmt.Sprintf("%s msg/s over %s", strconv.FormatFloat(*r.IngestRate, 'f', 1, 64), time.Duration(r.RateWindowSeconds*float64(time.Second)).Round(time.Millisecond))
		}
		fmt.Fprintf(tw, "Ingestion:\t%s, %s\n", sub, rate)
		if s := in.Stats; s != nil {
			pressure := "none"
			if in.Pressure != "" {
				pressure = "held back by the " + in.Pressure
			}
			fmt.Fprintf(tw, "\t  backlog %d (received %d, acknowledged %d), back-pressure %s\n", s.Pending, s.Received, s.Acked, pressure)
		}
		if s := in.Store; s != nil {
			fmt.Fprintf(tw, "\t  outbox %d readings in %d batches, %d dead letters, %d devices\n", s.OutboxPending, s.OutboxPendingBatches, s.DeadLetters, s.Devices)
		}
		if in.StoreError != "" {
			fmt.Fprintf(tw, "\t  store: %s\n", safe(in.StoreError, 0))
		}
	}

	up := st.Uplink
	switch {
	case !up.Enabled:
		fmt.Fprintf(tw, "Uplink:\tdisabled (no control plane)\n")
	case !up.Enrolled:
		fmt.Fprintf(tw, "Uplink:\tnot enrolled yet with %s, breaker %s\n", safe(up.Server, 0), safe(up.Breaker, 0))
	default:
		fmt.Fprintf(tw, "Uplink:\tenrolled as %s with %s, breaker %s\n", safe(up.AgentID, 0), safe(up.Server, 0), safe(up.Breaker, 0))
		fmt.Fprintf(tw, "\t  last heartbeat %s, last upload %s, %d batches uploaded\n", cli.Age(now, up.LastHeartbeat), cli.Age(now, up.LastUpload), up.UploadedBatches)
	}
	if up.Decommissioned {
		fmt.Fprintf(tw, "\t  DECOMMISSIONED: the control plane refuses this agent\n")
	}
	if up.LastError != "" {
		fmt.Fprintf(tw, "\t  last error: %s\n", safe(up.LastError, 0))
	}
	if up.UploadsWaiting != "" {
		fmt.Fprintf(tw, "\t  uploads wait: %s\n", safe(up.UploadsWaiting, 0))
	}

	if len(st.Keys.Held) == 0 {
		fmt.Fprintf(tw, "Keys:\tnone from a control plane\n")
	}
	for i, k := range st.Keys.Held {
		label := ""
		if i == 0 {
			label = "Keys:"
		}
		fmt.Fprintf(tw, "%s\t%s (%s): primary v%d, versions %s\n", label, safe(k.Name, 0), safe(k.Purpose, 0), k.Primary, versions(k.Versions))
	}
	g := st.Keys.Gossip
	switch {
	case !g.Encrypted:
		fmt.Fprintf(tw, "Gossip keyring:\tunencrypted\n")
	default:
		var parts []string
		for _, v := range g.Versions {
			s := "v" + strconv.FormatUint(uint64(v), 10)
			if v == g.Primary {
				s += " (primary)"
			}
			parts = append(parts, s)
		}
		if g.Bootstrap {
			s := "bootstrap key"
			if g.Primary == 0 {
				s += " (primary)"
			}
			parts = append(parts, s)
		}
		fmt.Fprintf(tw, "Gossip keyring:\t%s\n", strings.Join(parts, ", "))
	}
	return tw.Flush()
}

func versions(vs []uint32) string {
	if len(vs) == 0 {
		return "-"
	}
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = "v" + strconv.FormatUint(uint64(v), 10)
	}
	return strings.Join(parts, " ")
}
