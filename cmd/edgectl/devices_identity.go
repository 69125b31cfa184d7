package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/devcred"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

// Device identities live in the agents' replicated state (collection
// device_identities), so any agent of the site changes them for all, also
// while the control plane is unreachable; the agent writes an audit
// record to its log for each change. With --control-plane the identity
// commands go to the control plane instead (fleet-wide, recorded in its
// audit chain), whose changes every agent follows and writes into
// replicated state.

// deviceRow is a line of devices list: the activity record and the
// identity's state ("unregistered" without one; omitted when the agent
// has no identity API).
type deviceRow struct {
	agentapi.DeviceRecord
	State string `json:"state,omitempty"`
}

// listDeviceRows joins the activity records and the identities.
func listDeviceRows(ctx context.Context, api *agentapi.Client) ([]deviceRow, error) {
	devs, err := listDevices(ctx, api)
	if err != nil {
		return nil, err
	}
	ids, err := api.Identities(ctx)
	if err != nil && agentapi.StatusCode(err) != http.StatusNotFound {
		return nil, err
	}
	known := err == nil
	state := make(map[string]string, len(ids))
	for _, d := range ids {
		state[d.ID] = d.State
	}
	rows := make([]deviceRow, 0, len(devs)+len(ids))
	seen := map[string]bool{}
	for _, d := range devs {
		r := deviceRow{DeviceRecord: d}
		if known {
			r.State = state[d.ID]
			if r.State == "" {
				r.State = "unregistered"
			}
		}
		seen[d.ID] = true
		rows = append(rows, r)
	}
	for _, d := range ids {
		if !seen[d.ID] {
			rows = append(rows, deviceRow{DeviceRecord: agentapi.DeviceRecord{ID: d.ID, LastValues: map[string]float64{}}, State: d.State})
		}
	}
	return rows, nil
}

// parseTopics splits --topics entries "pub:FILTER" and "sub:FILTER".
func parseTopics(entries []string) (pub, sub []string, err error) {
	for _, e := range entries {
		kind, f, ok := strings.Cut(e, ":")
		if err := devcred.CheckFilter(f); !ok || err != nil {
			return nil, nil, cli.Usagef("--topics %q: want pub:FILTER or sub:FILTER with an MQTT topic filter", e)
		}
		switch kind {
		case "pub", "publish":
			pub = append(pub, f)
		case "sub", "subscribe":
			sub = append(sub, f)
		default:
			return nil, nil, cli.Usagef("--topics %q: want pub:FILTER or sub:FILTER", e)
		}
	}
	return pub, sub, nil
}

func (d *devicesCmd) newRegisterCmd() *cobra.Command {
	var out cli.OutputFlags
	var topics []string
	c := &cobra.Command{
		Use:   "register ID",
		Short: "Give a device its own MQTT identity and print its secret (once)",
		Long: `register creates the device's identity in the agents' replicated state: a
random 256-bit secret, stored only as a salted PBKDF2-SHA512 hash (Mosquitto's
$7$ format), and the topics it may use. Every agent of the site then admits
the device on its embedded broker with user name = client id = ID and the
secret. The secret is printed once; no command shows it again
(rotate-secret makes a new one).

Without --topics the device may publish devices/ID/telemetry and subscribe to
devices/ID/commands and devices/ID/inference. --topics replaces the defaults
of a direction: pub:FILTER allows publishing, sub:FILTER subscribing and
receiving (repeat the flag or separate with commas).`,
		Example: `  edgectl devices register room-1
  edgectl devices register cam-2 --topics pub:devices/cam-2/telemetry,pub:devices/cam-2/images --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if err := checkDeviceID(args[0]); err != nil {
				return err
			}
			pub, sub, err := parseTopics(topics)
			if err != nil {
				return err
			}
			r, err := identityCall(d, c, func(ctx context.Context, api *agentapi.Client) (agentapi.IdentitySecret, error) {
				return api.Register(ctx, agentapi.RegisterRequest{ID: args[0], Publish: pub, Subscribe: sub})
			}, func(ctx context.Context, cp *cpapi.Client) (agentapi.IdentitySecret, error) {
				r, err := cp.RegisterDevice(ctx, cpapi.RegisterDeviceRequest{ID: args[0], Publish: pub, Subscribe: sub})
				return secretFromCP(r), err
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, r, func(w io.Writer) error { return printSecret(w, r, "registered") })
		},
	}
	c.Flags().StringSliceVar(&topics, "topics", nil, "allowed topics: pub:FILTER or sub:FILTER (replaces that direction's defaults)")
	out.Register(c)
	return c
}

func printSecret(w io.Writer, r agentapi.IdentitySecret, what string) error {
	tw := cli.NewTable(w)
	fmt.Fprintf(tw, "Device %s %s.\n", cell(r.Identity.ID, 0), what)
	fmt.Fprintf(tw, "Secret:\t%s\n", r.Secret)
	fmt.Fprintf(tw, "Publish:\t%s\n", cell(strings.Join(r.Identity.Publish, " "), 0))
	fmt.Fprintf(tw, "Subscribe:\t%s\n", cell(strings.Join(r.Identity.Subscribe, " "), 0))
	fmt.Fprintf(tw, "The secret is shown only now: give it to the device (MQTT user name and client id %s).\n", cell(r.Identity.ID, 0))
	return tw.Flush()
}

// identityCall makes an identity call on the agent, or with
// --control-plane on the control plane.
func identityCall[T any](d *devicesCmd, c *cobra.Command, viaAgent func(context.Context, *agentapi.Client) (T, error),
	viaCP func(context.Context, *cpapi.Client) (T, error)) (T, error) {
	if d.cp {
		return fetch(d.a, c, viaCP)
	}
	return withAgent(d.a, c, d.agent, viaAgent)
}

// identityFromCP is the control plane's identity in the agent's terms.
func identityFromCP(d cpapi.DeviceIdentity) agentapi.DeviceIdentity {
	return agentapi.DeviceIdentity{ID: d.ID, Hash: d.Hash, Publish: d.Publish, Subscribe: d.Subscribe, State: d.State,
		Created: d.Created, Rotated: d.Rotated, Updated: d.Updated}
}

func secretFromCP(r cpapi.DeviceSecretResponse) agentapi.IdentitySecret {
	return agentapi.IdentitySecret{Identity: identityFromCP(r.Device), Secret: r.Secret}
}

// oneDeviceCmd is a command on one device id that prints what the agent
// (or the control plane) answers (table, --json or -o yaml).
func oneDeviceCmd[T any](d *devicesCmd, use, short, long string, call func(ctx context.Context, api *agentapi.Client, id string) (T, error),
	cpCall func(ctx context.Context, cp *cpapi.Client, id string) (T, error), table func(w io.Writer, v T) error) *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Long:  long,
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if err := checkDeviceID(args[0]); err != nil {
				return err
			}
			v, err := identityCall(d, c, func(ctx context.Context, api *agentapi.Client) (T, error) { return call(ctx, api, args[0]) },
				func(ctx context.Context, cp *cpapi.Client) (T, error) { return cpCall(ctx, cp, args[0]) })
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, v, func(w io.Writer) error { return table(w, v) })
		},
	}
	out.Register(c)
	return c
}

func (d *devicesCmd) newRotateCmd() *cobra.Command {
	return oneDeviceCmd(d, "rotate-secret ID", "Give a registered device a new secret (printed once); the old one stops working",
		`rotate-secret replaces the device's secret. Its connections made with the old
secret are closed on every agent as the change arrives (within
ingest.broker.identity_poll of it).`,
		func(ctx context.Context, api *agentapi.Client, id string) (agentapi.IdentitySecret, error) {
			return api.RotateSecret(ctx, id)
		},
		func(ctx context.Context, cp *cpapi.Client, id string) (agentapi.IdentitySecret, error) {
			r, err := cp.RotateDeviceSecret(ctx, id)
			return secretFromCP(r), err
		},
		func(w io.Writer, r agentapi.IdentitySecret) error { return printSecret(w, r, "has a new secret") })
}

func (d *devicesCmd) newStateCmd(enable bool) *cobra.Command {
	use, short, long := "disable ID", "Refuse a device on every agent and close its live connections",
		`disable marks the device disabled in the replicated identities: every agent
refuses its logins and closes its connections once the change arrives (within
ingest.broker.identity_poll of it; the agent answering at once).`
	if enable {
		use, short, long = "enable ID", "Admit a disabled device again", `enable lets a disabled device log in again with its secret.`
	}
	return oneDeviceCmd(d, use, short, long,
		func(ctx context.Context, api *agentapi.Client, id string) (agentapi.DeviceIdentity, error) {
			return api.SetIdentityEnabled(ctx, id, enable)
		},
		func(ctx context.Context, cp *cpapi.Client, id string) (agentapi.DeviceIdentity, error) {
			d, err := cp.SetDeviceState(ctx, id, enable)
			return identityFromCP(d), err
		},
		func(w io.Writer, id agentapi.DeviceIdentity) error {
			_, err := fmt.Fprintf(w, "Device %s is %s.\n", cell(id.ID, 0), id.State)
			return err
		})
}

func (d *devicesCmd) newCredentialsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "credentials",
		Short: "Export the device identities for another broker",
		RunE:  cli.GroupRunE,
	}
	c.AddCommand(d.newExportCmd())
	return c
}

// exportResult is what credentials export wrote.
type exportResult struct {
	PasswordFile      string   `json:"password_file"`
	ACLFile           string   `json:"acl_file"`
	AgentUser         string   `json:"agent_user"`
	AgentPasswordFile string   `json:"agent_password_file"`
	AgentPasswordNew  bool     `json:"agent_password_new"`
	Devices           []string `json:"devices"`
	Skipped           []string `json:"skipped_disabled"`
}

func (d *devicesCmd) newExportCmd() *cobra.Command {
	var out cli.OutputFlags
	var format, dir, agentUser, agentPwFile string
	c := &cobra.Command{
		Use:   "export",
		Short: "Write a Mosquitto password file and ACL file giving the devices' rules to a Mosquitto broker",
		Long: `export reads the registered devices from the agent and writes, into --dir,
"passwd" (mosquitto password_file: user:$7$ hash, one a line) and "acl"
(mosquitto acl_file: per user, "topic write" for what it may publish,
"topic read" for what it may subscribe to). Disabled devices are left out,
so Mosquitto refuses them. Point mosquitto.conf at both files (password_file,
acl_file, allow_anonymous false) and reload it after each export.

The agent's own user (--agent-user) may subscribe to devices/+/telemetry and
publish devices/+/commands and devices/+/inference. Its password is read from
--agent-password-file; when that file does not exist, a new random password
is written there (mode 0600): give that file to the agent as
ingest.mqtt.password_file, with ingest.mqtt.username = --agent-user and
ingest.mqtt.broker = the Mosquitto broker.

The embedded broker also requires a device's client id to be its id; Mosquitto
does not check that (its use_username_as_clientid option comes close, but
then agents sharing --agent-user also share one session).`,
		Example: `  edgectl devices credentials export --format mosquitto --dir /etc/mosquitto/edgefleet`,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			of, err := out.Format()
			if err != nil {
				return err
			}
			if format != "mosquitto" {
				return cli.Usagef("--format %q: want mosquitto", format)
			}
			if agentUser == "" || strings.ContainsAny(agentUser, ": \t\r\n") {
				return cli.Usagef("--agent-user %q: want a non-empty name without ':' or white space", agentUser)
			}
			if agentPwFile == "" {
				agentPwFile = filepath.Join(dir, "agent.password")
			}
			ids, err := withAgent(d.a, c, d.agent, func(ctx context.Context, api *agentapi.Client) ([]agentapi.DeviceIdentity, error) {
				return api.Identities(ctx)
			})
			if err != nil {
				return err
			}
			res, err := exportMosquitto(dir, agentUser, agentPwFile, ids)
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), of, res, func(w io.Writer) error {
				fmt.Fprintf(w, "Wrote %s and %s: %d devices, agent user %s.\n", res.PasswordFile, res.ACLFile, len(res.Devices), res.AgentUser)
				if len(res.Skipped) > 0 {
					fmt.Fprintf(w, "Left out (disabled): %s\n", strings.Join(res.Skipped, " "))
				}
				if res.AgentPasswordNew {
					fmt.Fprintf(w, "New agent password written to %s: set ingest.mqtt.password_file to it.\n", res.AgentPasswordFile)
				}
				return nil
			})
		},
	}
	c.Flags().StringVar(&format, "format", "mosquitto", "output format (mosquitto)")
	c.Flags().StringVar(&dir, "dir", ".", "directory to write passwd and acl into")
	c.Flags().StringVar(&agentUser, "agent-user", "edge-agent", "MQTT user name of the agent at that broker")
	c.Flags().StringVar(&agentPwFile, "agent-password-file", "", "file holding the agent's password; created with a new one when missing (default DIR/agent.password)")
	out.Register(c)
	return c
}

// exportMosquitto writes dir/passwd and dir/acl for the active identities
// and the agent's user.
func exportMosquitto(dir, agentUser, agentPwFile string, ids []agentapi.DeviceIdentity) (exportResult, error) {
	res := exportResult{PasswordFile: filepath.Join(dir, "passwd"), ACLFile: filepath.Join(dir, "acl"),
		AgentUser: agentUser, AgentPasswordFile: agentPwFile, Devices: []string{}, Skipped: []string{}}
	pw, err := os.ReadFile(agentPwFile)
	switch {
	case errors.Is(err, os.ErrNotExist):
		secret, err := devcred.NewSecret(rand.Reader)
		if err != nil {
			return res, err
		}
		if err := os.WriteFile(agentPwFile, []byte(secret+"\n"), 0o600); err != nil {
			return res, fmt.Errorf("write the agent's password: %w", err)
		}
		pw, res.AgentPasswordNew = []byte(secret), true
	case err != nil:
		return res, fmt.Errorf("read the agent's password: %w", err)
	}
	password := strings.TrimRight(string(pw), "\r\n")
	if password == "" {
		return res, fmt.Errorf("%s is empty: want the agent's MQTT password", agentPwFile)
	}
	hash, err := devcred.HashSecret(rand.Reader, password)
	if err != nil {
		return res, err
	}
	users := []devcred.User{{Name: agentUser, Hash: hash, Subscribe: []string{"devices/+/telemetry"},
		Publish: []string{"devices/+/commands", "devices/+/inference"}}}
	for _, id := range ids {
		switch {
		case id.ID == agentUser:
			return res, fmt.Errorf("device %s has the agent's user name: choose another --agent-user", id.ID)
		case id.State != "active":
			res.Skipped = append(res.Skipped, id.ID)
			continue
		}
		users = append(users, devcred.User{Name: id.ID, Hash: id.Hash, Publish: id.Publish, Subscribe: id.Subscribe})
		res.Devices = append(res.Devices, id.ID)
	}
	var pwb, aclb strings.Builder
	if err := devcred.WriteMosquitto(&pwb, &aclb, users); err != nil {
		return res, err
	}
	for _, f := range []struct{ path, text string }{{res.PasswordFile, pwb.String()}, {res.ACLFile, aclb.String()}} {
		if err := writeFileAtomic(f.path, []byte(f.text)); err != nil {
			return res, err
		}
	}
	return res, nil
}

// writeFileAtomic writes b to path through a temporary file and a rename,
// mode 0600 (a password file holds hashes, a model file weights).
func writeFileAtomic(path string, b []byte) error {
	tmp := fmt.Sprintf("%s.tmp-%d", path, time.Now().UnixNano())
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
