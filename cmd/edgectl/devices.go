package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/clientconfig"
)

// maxCommandBytes is the largest command payload the agent accepts.
const maxCommandBytes = 64 << 10

// deadLetterPage is the most dead letters the agent returns per request.
const deadLetterPage = 1000

// deadLetterReasons are the reasons --reason accepts.
var deadLetterReasons = func() []string {
	var out []string
	for _, r := range ingest.Reasons() {
		out = append(out, string(r))
	}
	return out
}()

// devicesCmd holds the flag the devices commands share.
type devicesCmd struct {
	a *app
	// agent is --agent.
	agent string
	// cp is --control-plane: the identity commands and list go to the
	// control plane.
	cp bool
}

func (a *app) newDevicesCmd() *cobra.Command {
	d := &devicesCmd{a: a}
	c := &cobra.Command{
		Use:     "devices",
		Aliases: []string{"device"},
		Short:   "List devices, manage their identities, send them commands and manage dead letters",
		Long: `devices talks to one agent's local HTTP API: the device registry it lists
and the device identities (register, rotate-secret, disable, enable) are the
fleet's replicated state, so any agent shows and changes every device, also
while the control plane is unreachable; each change is an audit record in
that agent's log; commands go out on that agent's MQTT broker; dead letters
are that agent's own.

With --control-plane, list, register, rotate-secret, disable and enable go to
the control plane instead (the selected context's server and token): it keeps
the identities it manages fleet-wide, records each change in its audit chain,
and every agent follows its changes (a long poll) and writes them into
replicated state, so they reach agents behind NAT. list then shows the
identities the control plane manages (state, topics, times), not device
activity. Identities are last-writer-wins by their update time, wherever they
were changed.

The agent API is taken from --agent, else EDGEFLEET_AGENT, else the 'agent'
field of the selected context, else ` + clientconfig.DefaultAgent + ` (an agent
on this machine with its default api.addr).`,
		RunE: cli.GroupRunE,
	}
	c.PersistentFlags().StringVar(&d.agent, "agent", "", agentFlagUsage)
	c.PersistentFlags().BoolVar(&d.cp, "control-plane", false, "list and identity commands: use the control plane (fleet-wide, audited there) instead of an agent")
	c.AddCommand(d.newListCmd(), d.newShowCmd(), d.newSendCmd(), d.newDeadLettersCmd(),
		d.newRegisterCmd(), d.newRotateCmd(), d.newStateCmd(false), d.newStateCmd(true), d.newCredentialsCmd())
	return c
}

// checkDeviceID refuses ids the agent would refuse.
func checkDeviceID(id string) error {
	if err := ingest.CheckDeviceID(id); err != nil {
		return cli.Usagef("device id %q: want 1 to %d characters of A-Z a-z 0-9 - _ . : @", id, ingest.MaxDeviceIDLen)
	}
	return nil
}

// listDevices lists the registry, [] when empty, with {} for no values.
func listDevices(ctx context.Context, api *agentapi.Client) ([]agentapi.DeviceRecord, error) {
	devs, err := api.Devices(ctx)
	if err != nil {
		return nil, err
	}
	if devs == nil {
		devs = []agentapi.DeviceRecord{}
	}
	for i := range devs {
		normalizeDevice(&devs[i])
	}
	return devs, nil
}

// normalizeDevice makes output print {} instead of null.
func normalizeDevice(r *agentapi.DeviceRecord) {
	if r.LastValues == nil {
		r.LastValues = map[string]float64{}
	}
}

func (d *devicesCmd) newListCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the fleet's devices from the replicated device registry",
		Long: `list prints every device any agent has received data from, from the device
registry replicated among the agents, and every registered device: its
identity's state (active, disabled, or unregistered), the agent that last
heard from it, when, how many messages and readings, the message rate and the
last value of each metric. --json prints an array of device objects (id,
state, agent, first_seen, last_seen, messages, readings, rate, last_values,
updated). With --control-plane it prints the identities the control plane
manages, fleet-wide, with their state.`,
		Example: `  edgectl devices list
  edgectl devices list --control-plane --json
  edgectl devices list --agent http://10.0.0.3:7070 -o yaml`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			var devs []deviceRow
			if d.cp {
				devs, err = fetch(d.a, c, listControlPlaneDevices)
			} else {
				devs, err = withAgent(d.a, c, d.agent, listDeviceRows)
			}
			if err != nil {
				return err
			}
			sort.Slice(devs, func(i, j int) bool { return devs[i].ID < devs[j].ID })
			return cli.Print(c.OutOrStdout(), format, devs, func(w io.Writer) error { return printDeviceTable(w, devs, d.a.now()) })
		},
	}
	out.Register(c)
	return c
}

// listControlPlaneDevices lists the control plane's identities as rows
// (no activity: the control plane does not hold the device registry).
func listControlPlaneDevices(ctx context.Context, cp *cpapi.Client) ([]deviceRow, error) {
	ids, err := cp.ListDevices(ctx)
	if err != nil {
		return nil, err
	}
	rows := make([]deviceRow, 0, len(ids))
	for _, d := range ids {
		rows = append(rows, deviceRow{DeviceRecord: agentapi.DeviceRecord{ID: d.ID, LastValues: map[string]float64{}}, State: d.State})
	}
	return rows, nil
}

func printDeviceTable(w io.Writer, devs []deviceRow, now time.Time) error {
	if len(devs) == 0 {
		_, err := fmt.Fprintln(w, "No devices.")
		return err
	}
	tw := cli.NewTable(w)
	fmt.Fprintln(tw, "ID\tSTATE\tAGENT\tLAST SEEN\tMESSAGES\tREADINGS\tRATE\tLAST VALUES")
	for _, r := range devs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", cell(r.ID, 0), dash(r.State), cell(dash(r.Agent), 0), cli.Age(now, r.LastSeen),
			r.Messages, r.Readings, formatRate(r.Rate), cell(formatValues(r.LastValues, " "), 60))
	}
	return tw.Flush()
}

func formatRate(r float64) string {
	if r == 0 {
		return "-"
	}
	return strconv.FormatFloat(r, 'g', 3, 64) + "/s"
}

// formatValues renders metric=value pairs by metric name.
func formatValues(m map[string]float64, sep string) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.FormatFloat(m[k], 'g', -1, 64)
	}
	return strings.Join(parts, sep)
}

// cell makes text from outside (device ids, topics, error messages) safe
// for a table: control characters are escaped, and the text is cut at max
// runes (0: no limit).
func cell(s string, max int) string {
	if strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || r == utf8.RuneError }) {
		q := strconv.Quote(s)
		s = q[1 : len(q)-1]
	}
	if max > 0 && utf8.RuneCountInString(s) > max {
		r := []rune(s)
		s = string(r[:max-3]) + "..."
	}
	return s
}

func (d *devicesCmd) newShowCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:               "show ID",
		Aliases:           []string{"get"},
		Short:             "Show one device's registry entry with the last value of each metric",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: d.completeDeviceIDs,
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if err := checkDeviceID(args[0]); err != nil {
				return err
			}
			rec, err := withAgent(d.a, c, d.agent, func(ctx context.Context, api *agentapi.Client) (agentapi.DeviceRecord, error) {
				return api.Device(ctx, args[0])
			})
			if err != nil {
				return err
			}
			normalizeDevice(&rec)
			return cli.Print(c.OutOrStdout(), format, rec, func(w io.Writer) error { return printDevice(w, rec, d.a.now()) })
		},
	}
	out.Register(c)
	return c
}

func printDevice(w io.Writer, r agentapi.DeviceRecord, now time.Time) error {
	tw := cli.NewTable(w)
	when := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return fmt.Sprintf("%s (%s)", t.Local().Format(time.RFC3339), cli.Age(now, t))
	}
	fmt.Fprintf(tw, "ID:\t%s\n", cell(r.ID, 0))
	fmt.Fprintf(tw, "Agent:\t%s\n", cell(dash(r.Agent), 0))
	fmt.Fprintf(tw, "First seen:\t%s\n", when(r.FirstSeen))
	fmt.Fprintf(tw, "Last seen:\t%s\n", when(r.LastSeen))
	fmt.Fprintf(tw, "Messages:\t%d\n", r.Messages)
	fmt.Fprintf(tw, "Readings:\t%d\n", r.Readings)
	fmt.Fprintf(tw, "Rate:\t%s\n", formatRate(r.Rate))
	fmt.Fprintf(tw, "Updated:\t%s\n", when(r.Updated))
	if len(r.LastValues) == 0 {
		fmt.Fprintf(tw, "Last values:\tnone\n")
	} else {
		fmt.Fprintf(tw, "Last values:\n")
		keys := make([]string, 0, len(r.LastValues))
		for k := range r.LastValues {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(tw, "  %s\t%s\n", cell(k, 0), strconv.FormatFloat(r.LastValues[k], 'g', -1, 64))
		}
	}
	return tw.Flush()
}

// completeDeviceIDs offers device ids (with their agents) for the first
// argument.
func (d *devicesCmd) completeDeviceIDs(c *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	ac, err := d.a.agentConn(c, d.agent)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	defer ac.close()
	ac.timeout = 3 * time.Second
	devs, err := agentCall(c.Context(), ac, listDevices)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	out := make([]string, 0, len(devs))
	for _, r := range devs {
		out = append(out, r.ID+"\tvia "+r.Agent)
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

func (d *devicesCmd) newSendCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   "send ID PAYLOAD|-",
		Short: "Publish a command to a device (QoS 1 on devices/ID/commands) through the agent's broker",
		Long: `send publishes PAYLOAD, or what stdin holds when PAYLOAD is '-', to the
device's command topic devices/ID/commands on the agent's MQTT broker, with
QoS 1. The payload is sent as given (at most 64 KiB, not empty); the agent
answers once the broker has it. It prints the topic.`,
		Example: `  edgectl devices send room-1 '{"fan":"on"}'
  echo '{"reboot":true}' | edgectl devices send room-1 -`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: d.completeDeviceIDs,
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if err := checkDeviceID(args[0]); err != nil {
				return err
			}
			payload := []byte(args[1])
			if args[1] == "-" {
				payload, err = io.ReadAll(io.LimitReader(c.InOrStdin(), maxCommandBytes+1))
				if err != nil {
					return fmt.Errorf("read the payload from stdin: %w", err)
				}
			}
			if len(payload) == 0 {
				return cli.Usagef("the payload is empty")
			}
			if len(payload) > maxCommandBytes {
				return cli.Usagef("the payload is larger than %d bytes", maxCommandBytes)
			}
			sent, err := withAgent(d.a, c, d.agent, func(ctx context.Context, api *agentapi.Client) (agentapi.CommandSent, error) {
				return api.SendCommand(ctx, args[0], payload)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, sent, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Sent %d bytes to %s (QoS 1).\n", sent.Bytes, cell(sent.Topic, 0))
				return err
			})
		},
	}
	out.Register(c)
	return c
}

// deadLetterFlags are the flags of dead-letters and dead-letters list.
type deadLetterFlags struct {
	out         cli.OutputFlags
	reason      string
	limit       int
	after       int64
	showPayload bool
}

func (d *devicesCmd) newDeadLettersCmd() *cobra.Command {
	var fl deadLetterFlags
	c := &cobra.Command{
		Use:     "dead-letters",
		Aliases: []string{"dl"},
		Short:   "List (the default) or purge the messages the agent could not ingest",
		Long: `dead-letters lists the agent's dead letters: messages it received but could
not turn into readings (bad topic, syntax, types, names, times, values, size),
kept with their receive time, topic, reason, error and payload (the first
4096 bytes; the full size is recorded). 'purge' deletes them.

Reasons: ` + strings.Join(deadLetterReasons, ", ") + `.`,
		Example: `  edgectl devices dead-letters
  edgectl devices dead-letters --reason syntax --show-payload
  edgectl devices dead-letters purge --before -7d`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return d.listDeadLetters(c, &fl) },
	}
	d.registerDeadLetterFlags(c, &fl)
	c.AddCommand(d.newDeadLettersListCmd(), d.newDeadLettersPurgeCmd())
	return c
}

func (d *devicesCmd) newDeadLettersListCmd() *cobra.Command {
	var fl deadLetterFlags
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List dead letters, oldest first: id, time, topic, reason, error, payload size",
		Long: `list prints dead letters in id order (oldest first), at most --limit of them
(0: all), starting after --after. --show-payload prints each one in full with
its payload (text as is, anything else as a hex dump). --json prints an array
of objects (id, at, topic, reason, error, payload in base64, payload_size,
truncated).`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return d.listDeadLetters(c, &fl) },
	}
	d.registerDeadLetterFlags(c, &fl)
	return c
}

func (d *devicesCmd) registerDeadLetterFlags(c *cobra.Command, fl *deadLetterFlags) {
	fl.out.Register(c)
	f := c.Flags()
	f.StringVar(&fl.reason, "reason", "", "only dead letters with this reason: "+strings.Join(deadLetterReasons, ", "))
	f.IntVar(&fl.limit, "limit", 100, "print at most this many (0: all)")
	f.Int64Var(&fl.after, "after", 0, "start after this dead-letter id")
	f.BoolVar(&fl.showPayload, "show-payload", false, "print each dead letter in full with its payload")
	c.RegisterFlagCompletionFunc("reason", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return deadLetterReasons, cobra.ShellCompDirectiveNoFileComp
	})
}

func checkReason(r string) error {
	if r != "" && !contains(deadLetterReasons, r) {
		return cli.Usagef("--reason %q: want one of %s", r, strings.Join(deadLetterReasons, ", "))
	}
	return nil
}

func (d *devicesCmd) listDeadLetters(c *cobra.Command, fl *deadLetterFlags) error {
	format, err := fl.out.Format()
	if err != nil {
		return err
	}
	if err := checkReason(fl.reason); err != nil {
		return err
	}
	if fl.limit < 0 || fl.after < 0 {
		return cli.Usagef("--limit and --after must not be negative")
	}
	type listing struct {
		items []agentapi.DeadLetter
		next  int64 // id to continue after, 0 when all were listed
	}
	ac, err := d.a.agentConn(c, d.agent)
	if err != nil {
		return err
	}
	defer ac.close()
	var l listing
	after := fl.after
	for {
		n := deadLetterPage
		if fl.limit > 0 {
			n = min(n, fl.limit-len(l.items))
		}
		q := agentapi.DeadLetterQuery{After: after, Limit: n, Reason: fl.reason}
		page, err := agentCall(c.Context(), ac, func(ctx context.Context, api *agentapi.Client) (agentapi.DeadLetterPage, error) {
			return api.DeadLetters(ctx, q)
		})
		if err != nil {
			return err
		}
		l.items = append(l.items, page.Items...)
		if page.Next == 0 || len(page.Items) == 0 {
			l.next = 0
			break
		}
		if page.Next <= after {
			return fmt.Errorf("agent API at %s: GET /v1/dead-letters: page after %d continues at %d, which does not advance", ac.target.URL, after, page.Next)
		}
		after, l.next = page.Next, page.Next
		if fl.limit > 0 && len(l.items) >= fl.limit {
			break
		}
	}
	if l.items == nil {
		l.items = []agentapi.DeadLetter{}
	}
	if l.next != 0 {
		fmt.Fprintf(c.ErrOrStderr(), "More dead letters follow: --after %d continues, --limit 0 lists all.\n", l.next)
	}
	return cli.Print(c.OutOrStdout(), format, l.items, func(w io.Writer) error {
		if fl.showPayload {
			return printDeadLettersFull(w, l.items)
		}
		return printDeadLetterTable(w, l.items)
	})
}

func printDeadLetterTable(w io.Writer, items []agentapi.DeadLetter) error {
	if len(items) == 0 {
		_, err := fmt.Fprintln(w, "No dead letters.")
		return err
	}
	tw := cli.NewTable(w)
	fmt.Fprintln(tw, "ID\tTIME\tTOPIC\tREASON\tSIZE\tERROR")
	for _, dl := range items {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", dl.ID, dl.At.Local().Format(time.RFC3339), cell(dl.Topic, 48),
			cell(dl.Reason, 0), bytesIEC(uint64(max(dl.PayloadSize, 0))), cell(dl.Error, 80))
	}
	return tw.Flush()
}

func printDeadLettersFull(w io.Writer, items []agentapi.DeadLetter) error {
	if len(items) == 0 {
		_, err := fmt.Fprintln(w, "No dead letters.")
		return err
	}
	for i, dl := range items {
		if i > 0 {
			fmt.Fprintln(w)
		}
		tw := cli.NewTable(w)
		fmt.Fprintf(tw, "Dead letter:\t%d\n", dl.ID)
		fmt.Fprintf(tw, "Time:\t%s\n", dl.At.Local().Format(time.RFC3339Nano))
		fmt.Fprintf(tw, "Topic:\t%s\n", cell(dl.Topic, 0))
		fmt.Fprintf(tw, "Reason:\t%s\n", cell(dl.Reason, 0))
		fmt.Fprintf(tw, "Error:\t%s\n", cell(dl.Error, 0))
		size := bytesIEC(uint64(max(dl.PayloadSize, 0)))
		if dl.Truncated {
			size += fmt.Sprintf(" (the first %d bytes are kept)", len(dl.Payload))
		}
		fmt.Fprintf(tw, "Size:\t%s\n", size)
		if err := tw.Flush(); err != nil {
			return err
		}
		if _, err := io.WriteString(w, formatPayload(dl.Payload)); err != nil {
			return err
		}
	}
	return nil
}

// formatPayload renders a payload for a terminal: printable UTF-8 text as
// is, indented; anything else as a hex dump.
func formatPayload(p []byte) string {
	if len(p) == 0 {
		return "Payload: (empty)\n"
	}
	s := strings.ReplaceAll(string(p), "\r\n", "\n")
	text := utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool {
		return r != '\n' && r != '\t' && !unicode.IsPrint(r)
	})
	var b strings.Builder
	if text {
		b.WriteString("Payload:\n")
		for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
			b.WriteString("  " + line + "\n")
		}
		return b.String()
	}
	b.WriteString("Payload (binary, hex):\n")
	for _, line := range strings.SplitAfter(strings.TrimRight(hex.Dump(p), "\n"), "\n") {
		b.WriteString("  " + strings.TrimRight(line, "\n") + "\n")
	}
	return b.String()
}

func (d *devicesCmd) newDeadLettersPurgeCmd() *cobra.Command {
	var (
		out    cli.OutputFlags
		all    bool
		before string
		reason string
		ids    []int64
	)
	c := &cobra.Command{
		Use:   "purge --all | --before T | --reason R | --id N...",
		Short: "Delete dead letters: all of them, those received before T, of one reason, or by id",
		Long: `purge deletes dead letters selected by exactly one of: --all; --before T
(received before T: RFC 3339, a date, or an offset such as -7d); --reason R;
--id N (repeatable or comma-separated). It prints how many were deleted.`,
		Example: `  edgectl devices dead-letters purge --before -7d
  edgectl devices dead-letters purge --id 12,13
  edgectl devices dead-letters purge --all`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			n := 0
			for _, set := range []bool{all, before != "", reason != "", len(ids) > 0} {
				if set {
					n++
				}
			}
			if n != 1 {
				return cli.Usagef("purge needs exactly one of --all, --before, --reason or --id")
			}
			var p agentapi.DeadLetterPurge
			switch {
			case all:
				p.All = true
			case before != "":
				t, err := cli.ParseTime(before, d.a.now())
				if err != nil {
					return cli.Usagef("--before: %v", err)
				}
				p.Before = t
			case reason != "":
				if err := checkReason(reason); err != nil {
					return err
				}
				p.Reason = reason
			default:
				for _, id := range ids {
					if id <= 0 {
						return cli.Usagef("--id %d: dead-letter ids are positive", id)
					}
				}
				p.IDs = ids
			}
			res, err := withAgent(d.a, c, d.agent, func(ctx context.Context, api *agentapi.Client) (agentapi.PurgeResult, error) {
				return api.PurgeDeadLetters(ctx, p)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, res, func(w io.Writer) error {
				noun := "dead letters"
				if res.Purged == 1 {
					noun = "dead letter"
				}
				_, err := fmt.Fprintf(w, "Purged %d %s.\n", res.Purged, noun)
				return err
			})
		},
	}
	out.Register(c)
	f := c.Flags()
	f.BoolVar(&all, "all", false, "delete every dead letter")
	f.StringVar(&before, "before", "", "delete those received before this time (RFC 3339, date, or offset such as -7d)")
	f.StringVar(&reason, "reason", "", "delete those with this reason: "+strings.Join(deadLetterReasons, ", "))
	f.Int64SliceVar(&ids, "id", nil, "delete these ids (repeatable or comma-separated)")
	c.RegisterFlagCompletionFunc("reason", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return deadLetterReasons, cobra.ShellCompDirectiveNoFileComp
	})
	return c
}
