package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/internal/cli"
)

// maxEnvelopeInput bounds an envelope read for rewrap; the server's body
// limit (1 MiB by default) usually refuses less.
const maxEnvelopeInput = 64 << 20

func (a *app) newKeysCmd() *cobra.Command {
	c := &cobra.Command{
		Use:     "keys",
		Aliases: []string{"key"},
		Short:   "Manage the control plane's key service: unseal, keys, rotation, rewrap, policies",
		Long: `The control plane's key service holds versioned keys under a root key that
is split into shares (k of n unseal it). After every start the service is
sealed: key operations answer 503 until enough custodians ran
'edgectl keys unseal' with their share (admin role). Enrollment, heartbeats
and telemetry work while sealed.

Keys have a purpose (data: envelope encryption; gossip: the agents' gossip
keyring), versions (primary, decrypt-only, retired, destroyed) and a policy
(automatic rotation period, minimum decryption version, which agents receive
them). Agents fetch the versions sealed to their own X-Wing key.

Roles: viewer may list and read the status; operator may create, rotate,
rewrap, change policies and retire; admin may also destroy, unseal, seal,
rotate the key-encryption key (rotate-kek) and replace the root key and its
shares (rekey-root).`,
		RunE: cli.GroupRunE,
	}
	c.AddCommand(a.newKeysStatusCmd(), a.newKeysListCmd(), a.newKeysShowCmd(), a.newKeysCreateCmd(), a.newKeysRotateCmd(),
		a.newKeysRewrapCmd(), a.newKeysPolicyCmd(), a.newKeysRetireCmd(), a.newKeysDestroyCmd(), a.newKeysUnsealCmd(), a.newKeysSealCmd(),
		a.newKeysRotateKEKCmd(), a.newKeysRekeyRootCmd())
	return c
}

// ---- status, unseal, seal ----

func sealedText(st cpapi.KeyServiceStatus) string {
	switch {
	case !st.Initialized:
		return "not initialized"
	case st.Sealed:
		return fmt.Sprintf("SEALED (%d of %d shares given)", st.SharesProvided, st.SharesNeeded)
	case st.DevMode:
		return "unsealed (DEV MODE: root key stored in the clear)"
	}
	return "unsealed"
}

func printKeyStatus(w io.Writer, st cpapi.KeyServiceStatus) error {
	tw := cli.NewTable(w)
	fmt.Fprintf(tw, "Key service:\t%s\n", sealedText(st))
	fmt.Fprintf(tw, "Root key:\tv%d, key-check value %s\n", st.RootVersion, dash(st.RootKCV))
	if st.DevMode {
		fmt.Fprintf(tw, "Shares:\tnone (dev mode)\n")
	} else {
		fmt.Fprintf(tw, "Shares:\t%d of %d unseal\n", st.SharesNeeded, st.SharesTotal)
	}
	kek := "- (sealed)"
	if st.KEKVersion > 0 {
		kek = fmt.Sprintf("v%d", st.KEKVersion)
	}
	fmt.Fprintf(tw, "Key-encryption key:\t%s\n", kek)
	fmt.Fprintf(tw, "Key-message signing key:\tML-DSA-65, fingerprint %s\n", dash(st.VerifyingKeyFingerprint))
	return tw.Flush()
}

func (a *app) newKeysStatusCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   "status",
		Short: "Show whether the key service is sealed and how many shares were given",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			st, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.KeyServiceStatus, error) {
				return cl.KeyStatus(ctx)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, st, func(w io.Writer) error { return printKeyStatus(w, st) })
		},
	}
	out.Register(c)
	return c
}

func (a *app) newKeysUnsealCmd() *cobra.Command {
	var (
		out    cli.OutputFlags
		shares []string
	)
	c := &cobra.Command{
		Use:   "unseal [--share SHARE]",
		Short: "Give root key shares until the key service unseals (admin)",
		Long: `unseal gives one root key share ("dkms-share:...") to the control plane.
Shares accumulate until the threshold is reached and the key service
unseals; a share that is malformed, mistyped (checksum), from another
control plane or altered is refused by name and does not count, and a
share given twice is refused as a duplicate.

The share comes from --share, else from stdin when stdin is not a
terminal (every line holding a share is given in turn; empty lines and
lines starting with # are skipped), else from a prompt on the terminal
with the input hidden. Prefer stdin or the prompt: a --share value stays
in the shell history.`,
		Example: `  edgectl keys unseal                       # prompts for the share
  edgectl keys unseal < my-share.txt
  edgectl keys unseal --share dkms-share:RUZTSAEAAAAB...`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			list := cli.SplitList(shares)
			if len(list) == 0 {
				if list, err = readShares(c); err != nil {
					return err
				}
			}
			s, err := a.connect(c)
			if err != nil {
				return err
			}
			defer s.client.CloseIdleConnections()
			w, ew := c.OutOrStdout(), c.ErrOrStderr()
			var st cpapi.KeyServiceStatus
			for i, sh := range list {
				ctx, cancel := a.ctx(c)
				st, err = s.client.Unseal(ctx, sh)
				cancel()
				if err != nil {
					return fmt.Errorf("share %d of %d: %w", i+1, len(list), s.explain(err))
				}
				if !st.Sealed {
					if rest := len(list) - i - 1; rest > 0 {
						fmt.Fprintf(ew, "%s: unsealed; %d more share(s) not needed and not sent\n", c.Root().Name(), rest)
					}
					break
				}
				if format == cli.FormatTable {
					fmt.Fprintf(w, "Share accepted: %d of %d given; still sealed.\n", st.SharesProvided, st.SharesNeeded)
				}
			}
			return cli.Print(w, format, st, func(w io.Writer) error {
				if st.Sealed {
					_, err := fmt.Fprintf(w, "Key service sealed: %d more share(s) needed (run 'edgectl keys unseal' with another custodian's share).\n", st.SharesNeeded-st.SharesProvided)
					return err
				}
				_, err := fmt.Fprintf(w, "Key service unsealed (root key v%d, kcv %s).\n", st.RootVersion, st.RootKCV)
				return err
			})
		},
	}
	out.Register(c)
	c.Flags().StringArrayVar(&shares, "share", nil, "root key share (text form dkms-share:...); repeatable")
	return c
}

// readShares reads shares from stdin, or prompts for one on the terminal.
func readShares(c *cobra.Command) ([]string, error) {
	in := c.InOrStdin()
	if f, ok := in.(*os.File); ok && isTerminal(f) {
		sh, err := promptSecret(c, f, "Root key share (input hidden): ")
		if err != nil {
			return nil, err
		}
		if sh == "" {
			return nil, cli.Usagef("no share entered")
		}
		return []string{sh}, nil
	}
	data, err := io.ReadAll(io.LimitReader(in, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("reading shares from stdin: %w", err)
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, line)
	}
	if len(out) == 0 {
		return nil, cli.Usagef("no share on stdin: give one with --share, on stdin, or at the prompt")
	}
	return out, nil
}

// promptSecret reads a line from the terminal f with echo turned off by
// stty; where stty is missing the input is shown, and a warning says so.
func promptSecret(c *cobra.Command, f *os.File, prompt string) (string, error) {
	ew := c.ErrOrStderr()
	stty := func(arg string) error {
		cmd := exec.Command("stty", arg)
		cmd.Stdin = f
		return cmd.Run()
	}
	if err := stty("-echo"); err != nil {
		fmt.Fprintf(ew, "%s: warning: cannot hide the input (stty: %v)\n", c.Root().Name(), err)
	} else {
		defer func() {
			stty("echo")
			fmt.Fprintln(ew)
		}()
	}
	fmt.Fprint(ew, prompt)
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("reading the share: %w", err)
	}
	return strings.TrimSpace(line), nil
}

func (a *app) newKeysSealCmd() *cobra.Command {
	var (
		out cli.OutputFlags
		yes bool
	)
	c := &cobra.Command{
		Use:   "seal",
		Short: "Make the key service forget its root key; key operations stop until unsealed (admin)",
		Long: `seal makes the running control plane forget its root key and every
unwrapped key at once, for example when a compromise is suspected. Key
operations answer 503 and agents receive no new key versions until
custodians unseal it again with their shares (a dev-mode control plane needs
a restart). Without --yes the command asks for confirmation.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if !yes {
				ok, err := confirm(c, "Seal the key service? Key operations stop until enough shares are given again. [y/N] ")
				if err != nil {
					return err
				}
				if !ok {
					return errors.New("seal cancelled")
				}
			}
			st, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.KeyServiceStatus, error) {
				return cl.Seal(ctx)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, st, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Key service sealed; %d share(s) unseal it.\n", st.SharesNeeded)
				return err
			})
		},
	}
	out.Register(c)
	c.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return c
}

// ---- key-encryption key and root key ----

func (a *app) newKeysRotateKEKCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   "rotate-kek",
		Short: "Rewrap every key version under a new key-encryption key and destroy the old one (admin)",
		Long: `rotate-kek creates a new version of the key service's key-encryption key
(KEK, the layer between the root key and the keys), rewraps every stored key
version under it and destroys the older KEK versions, in one transaction on
the control plane. Keys, their versions, their material and the agents are
unaffected. Run it after destroying key versions, so that copies of their
wrapped material (backups, disk remnants) open under no KEK the key store
still holds. The key service must be unsealed. --json prints
{"kek_version": N}.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			resp, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.RotateKEKResponse, error) {
				return cl.RotateKEK(ctx)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, resp, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Key-encryption key rotated: v%d is primary; every key version is wrapped under it, older KEK versions are destroyed.\n", resp.KEKVersion)
				return err
			})
		},
	}
	out.Register(c)
	return c
}

func (a *app) newKeysRekeyRootCmd() *cobra.Command {
	var (
		out               cli.OutputFlags
		shares, threshold int
		sharesFile        string
		yes               bool
	)
	c := &cobra.Command{
		Use:   "rekey-root --shares N --threshold K [--shares-file FILE] [--yes]",
		Short: "Replace the root key with a new one split into new shares; the old shares stop working (admin)",
		Long: `rekey-root makes a new root key, splits it into --shares shares of which
--threshold unseal the key service, and rewraps the key-encryption keys
under it. The key service must be unsealed and stays unsealed. From then on
the old shares no longer unseal this control plane (copies of keys.db made
before still open with them: retire those with the old shares). Use it when
a custodian leaves or a share may have leaked, or to change N or K.

The new shares are shown once and stored nowhere: written to --shares-file
(a new file of mode 0600, never replaced) or printed on stdout, in the form
'edgectl keys unseal' reads. Hand one to each custodian, then destroy the
copy. If the answer is lost (connection cut), run rekey-root again while the
key service is still unsealed. Without --yes the command asks for
confirmation. --json prints the answer (root_version, root_kcv,
shares_needed, shares_total, shares); with --shares-file the shares go to the
file only.`,
		Example: `  edgectl keys rekey-root --shares 5 --threshold 3 --shares-file /root/new-shares.txt
  edgectl keys rekey-root --shares 3 --threshold 2 --yes > new-shares.txt`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if !c.Flags().Changed("shares") || !c.Flags().Changed("threshold") {
				return cli.Usagef("rekey-root needs --shares N and --threshold K")
			}
			if shares < 1 || shares > dkms.MaxShares {
				return cli.Usagef("--shares %d: want 1..%d", shares, dkms.MaxShares)
			}
			if threshold < 1 || threshold > shares {
				return cli.Usagef("--threshold %d: want 1..--shares (%d)", threshold, shares)
			}
			if sharesFile != "" {
				if _, err := os.Stat(sharesFile); err == nil {
					return cli.Usagef("--shares-file %s exists; it is never replaced", sharesFile)
				}
			}
			if !yes {
				ok, err := confirm(c, "Replace the root key? The current shares stop unsealing this control plane; the new ones are shown once. [y/N] ")
				if err != nil {
					return err
				}
				if !ok {
					return errors.New("rekey-root cancelled")
				}
			}
			resp, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.RekeyRootResponse, error) {
				return cl.RekeyRoot(ctx, shares, threshold)
			})
			if err != nil {
				return err
			}
			return handOutNewShares(c, format, resp, sharesFile, a.now())
		},
	}
	out.Register(c)
	f := c.Flags()
	f.IntVar(&shares, "shares", 0, "split the new root key into this many shares (1..255)")
	f.IntVar(&threshold, "threshold", 0, "shares needed to unseal (1..--shares)")
	f.StringVar(&sharesFile, "shares-file", "", "write the new shares to this new file (mode 0600) instead of stdout")
	f.BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return c
}

// handOutNewShares shows the shares of a rekey once: in a new file of mode
// 0600, or on stdout. If the file cannot be written the shares go to
// stdout, since they exist nowhere else.
func handOutNewShares(c *cobra.Command, format string, resp cpapi.RekeyRootResponse, path string, now time.Time) error {
	name, w, ew := c.Root().Name(), c.OutOrStdout(), c.ErrOrStderr()
	text := sharesText(resp.Shares, resp.SharesNeeded, now)
	summary := fmt.Sprintf("root key replaced: v%d, key-check value %s; any %d of its %d shares unseal, the old shares no longer do", resp.RootVersion, resp.RootKCV, resp.SharesNeeded, resp.SharesTotal)
	if path != "" {
		err := createSecretFile(path, text)
		if err == nil {
			fmt.Fprintf(ew, "%s: %s; the new shares are written to %s (mode 0600): hand them out and delete the file\n", name, summary, path)
			resp.Shares = []string{}
			return cli.Print(w, format, resp, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Root key replaced: v%d; %d new shares in %s.\n", resp.RootVersion, resp.SharesTotal, path)
				return err
			})
		}
		fmt.Fprintf(ew, "%s: writing the shares to %s failed (%v); here they are instead\n", name, path, err)
	}
	fmt.Fprintf(ew, "%s: %s. NEW ROOT KEY SHARES (shown once, stored nowhere):\n", name, summary)
	return cli.Print(w, format, resp, func(w io.Writer) error {
		_, err := io.WriteString(w, text)
		return err
	})
}

// sharesText is the text of a root key shares file: comments saying what
// the shares are and how to use them, then one share per line, as
// 'edgectl keys unseal' reads it from stdin.
func sharesText(shares []string, threshold int, now time.Time) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# edgefleet control plane root key shares, made %s.\n", now.UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "# Any %d of these %d shares unseal the key service; fewer reveal nothing.\n", threshold, len(shares))
	fmt.Fprintf(&b, "# They are shown this once and stored nowhere else. Give each share to one\n")
	fmt.Fprintf(&b, "# custodian, then destroy this copy. After every start of the control plane,\n")
	fmt.Fprintf(&b, "# %d custodians each run: edgectl keys unseal   (and paste their share)\n", threshold)
	for i, sh := range shares {
		fmt.Fprintf(&b, "# share %d of %d\n%s\n", i+1, len(shares), sh)
	}
	return b.String()
}

// createSecretFile writes text to a new file of mode 0600; an existing
// file is never replaced.
func createSecretFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// ---- listing ----

func recipientsText(p cpapi.KeyPolicy) string {
	var parts []string
	if p.AllAgents {
		parts = append(parts, "all agents")
	}
	if len(p.AllowedAgents) > 0 {
		parts = append(parts, "agents "+strings.Join(p.AllowedAgents, ","))
	}
	if len(p.AllowedLabels) > 0 {
		parts = append(parts, "labels "+cli.FormatLabels(p.AllowedLabels))
	}
	if len(parts) == 0 {
		return "control plane only"
	}
	return strings.Join(parts, "; ")
}

// durationShort renders a Go duration text in days where whole.
func durationShort(s string) string {
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return s
	case d == 0:
		return "on demand"
	case d%(24*time.Hour) == 0:
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return strings.TrimSuffix(strings.TrimSuffix(d.String(), "0s"), "0m")
}

func statesText(k cpapi.Key) string {
	count := map[string]int{}
	for _, v := range k.Versions {
		count[v.State]++
	}
	var parts []string
	for _, st := range []string{"decrypt-only", "retired", "destroyed"} {
		if n := count[st]; n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, st))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func nextRotationText(k cpapi.Key, now time.Time) string {
	if k.NextRotation == nil {
		return "-"
	}
	d := k.NextRotation.Sub(now)
	if d <= 0 {
		return "due"
	}
	return "in " + strings.TrimSuffix(cli.Age(now, *k.NextRotation), " ahead")
}

func printKeysTable(w io.Writer, keys []cpapi.Key, now time.Time) error {
	if len(keys) == 0 {
		_, err := fmt.Fprintln(w, "No keys.")
		return err
	}
	tw := cli.NewTable(w)
	fmt.Fprintln(tw, "NAME\tPURPOSE\tPRIMARY\tOLDER VERSIONS\tMIN\tROTATION\tNEXT\tRECIPIENTS")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\tv%d\t%s\t%d\t%s\t%s\t%s\n", k.Name, k.Purpose, k.PrimaryVersion, statesText(k), k.MinDecryptVersion,
			durationShort(k.Policy.RotationPeriod), nextRotationText(k, now), recipientsText(k.Policy))
	}
	return tw.Flush()
}

func (a *app) newKeysListCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:     "list [NAME...]",
		Aliases: []string{"ls"},
		Short:   "List keys: purpose, primary version, older versions, policy (viewer)",
		Long: `list prints one row per key (or per NAME given). --json prints an array of
key objects (name, purpose, primary_version, latest_version,
min_decrypt_version, policy, created_at, rotated_at, next_rotation,
versions). The listing works while the key service is sealed; a note on
stderr says so.`,
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			resp, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.KeysResponse, error) {
				return cl.ListKeys(ctx)
			})
			if err != nil {
				return err
			}
			keys, err := selectKeys(resp.Keys, args)
			if err != nil {
				return err
			}
			if resp.Sealed {
				fmt.Fprintf(c.ErrOrStderr(), "%s: the key service is sealed: key operations are refused until 'edgectl keys unseal'\n", c.Root().Name())
			}
			return cli.Print(c.OutOrStdout(), format, keys, func(w io.Writer) error { return printKeysTable(w, keys, a.now()) })
		},
	}
	out.Register(c)
	return c
}

// selectKeys keeps the named keys, in the order named; none named keeps all.
func selectKeys(keys []cpapi.Key, names []string) ([]cpapi.Key, error) {
	if keys == nil {
		keys = []cpapi.Key{}
	}
	if len(names) == 0 {
		return keys, nil
	}
	out := []cpapi.Key{}
	for _, n := range names {
		found := false
		for _, k := range keys {
			if k.Name == n {
				out = append(out, k)
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("no key named %q (see 'edgectl keys list')", n)
		}
	}
	return out, nil
}

// getKey fetches one key by name through the listing.
func (a *app) getKey(c *cobra.Command, s *session, name string) (cpapi.Key, error) {
	ctx, cancel := a.ctx(c)
	defer cancel()
	resp, err := s.client.ListKeys(ctx)
	if err != nil {
		return cpapi.Key{}, s.explain(err)
	}
	keys, err := selectKeys(resp.Keys, []string{name})
	if err != nil {
		return cpapi.Key{}, err
	}
	return keys[0], nil
}

func printKey(w io.Writer, k cpapi.Key, now time.Time) error {
	tw := cli.NewTable(w)
	row := func(name, format string, args ...any) {
		fmt.Fprintf(tw, "%s:\t"+format+"\n", append([]any{name}, args...)...)
	}
	row("Name", "%s", k.Name)
	row("Purpose", "%s", k.Purpose)
	row("Primary", "v%d (latest v%d)", k.PrimaryVersion, k.LatestVersion)
	row("Min decrypt version", "%d", k.MinDecryptVersion)
	row("Rotation", "%s, next %s", durationShort(k.Policy.RotationPeriod), nextRotationText(k, now))
	row("Recipients", "%s", recipientsText(k.Policy))
	if k.Purpose == "gossip" {
		row("Gossip grace", "install %s, remove %s", durationShort(k.Policy.InstallGrace), durationShort(k.Policy.RemoveGrace))
	}
	row("Created", "%s", k.CreatedAt.Local().Format(time.RFC3339))
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = cli.NewTable(w)
	fmt.Fprintln(tw, "VERSION\tSTATE\tCREATED\tCHANGED")
	for i := len(k.Versions) - 1; i >= 0; i-- {
		v := k.Versions[i]
		fmt.Fprintf(tw, "v%d\t%s\t%s\t%s\n", v.Version, v.State, cli.Age(now, v.CreatedAt), cli.Age(now, v.ChangedAt))
	}
	return tw.Flush()
}

func (a *app) newKeysShowCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:     "show NAME",
		Aliases: []string{"get"},
		Short:   "Show one key with its policy and every version's state (viewer)",
		Args:    cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			s, err := a.connect(c)
			if err != nil {
				return err
			}
			defer s.client.CloseIdleConnections()
			k, err := a.getKey(c, s, args[0])
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, k, func(w io.Writer) error { return printKey(w, k, a.now()) })
		},
	}
	out.Register(c)
	return c
}

// ---- changes ----

// policyFlags are the flags that set a key policy.
type policyFlags struct {
	rotation     string
	minVersion   uint32
	allAgents    bool
	agents       []string
	labels       []string
	installGrace string
	removeGrace  string
}

func (p *policyFlags) register(c *cobra.Command, forCreate bool) {
	f := c.Flags()
	f.StringVar(&p.rotation, "rotation-period", "", "automatic rotation period, e.g. 30d, 12h; off for on demand only (default: the server's)")
	f.BoolVar(&p.allAgents, "all-agents", false, "send the key to every enrolled agent")
	f.StringArrayVar(&p.agents, "agents", nil, "send the key to these agent ids (comma-separated or repeated)")
	f.StringArrayVar(&p.labels, "labels", nil, "send the key to agents with all these labels key=value (comma-separated or repeated)")
	f.StringVar(&p.installGrace, "install-grace", "", "gossip keys: a new version becomes keyring primary this long after creation (default 1m)")
	f.StringVar(&p.removeGrace, "remove-grace", "", "gossip keys: older versions leave keyrings this long after that (default 1h)")
	if !forCreate {
		f.Uint32Var(&p.minVersion, "min-version", 0, "refuse to open data under versions below this (at most the primary)")
	}
}

// policyDuration turns a flag value into the API's Go duration text.
func policyDuration(flag, v string) (string, error) {
	switch strings.ToLower(v) {
	case "":
		return "", nil
	case "off", "none", "0":
		return "0", nil
	}
	d, err := cli.ParseDuration(v)
	if err != nil || d <= 0 {
		return "", cli.Usagef("--%s %q: want a positive duration such as 30d, 12h or 90m, or off", flag, v)
	}
	return d.String(), nil
}

// apply changes p by the flags that were given.
func (pf *policyFlags) apply(c *cobra.Command, p *cpapi.KeyPolicy) error {
	fl := c.Flags()
	var err error
	if fl.Changed("rotation-period") {
		if p.RotationPeriod, err = policyDuration("rotation-period", pf.rotation); err != nil {
			return err
		}
		if p.RotationPeriod == "" {
			return cli.Usagef("--rotation-period: give a duration, or off")
		}
	}
	if fl.Changed("install-grace") {
		if p.InstallGrace, err = policyDuration("install-grace", pf.installGrace); err != nil {
			return err
		}
	}
	if fl.Changed("remove-grace") {
		if p.RemoveGrace, err = policyDuration("remove-grace", pf.removeGrace); err != nil {
			return err
		}
	}
	if fl.Changed("min-version") {
		p.MinDecryptVersion = pf.minVersion
	}
	if fl.Changed("all-agents") {
		p.AllAgents = pf.allAgents
	}
	if fl.Changed("agents") {
		p.AllowedAgents = cli.SplitList(pf.agents)
		for _, id := range p.AllowedAgents {
			if err := checkID("agent", id); err != nil {
				return err
			}
		}
	}
	if fl.Changed("labels") {
		l, err := cli.ParseLabels(pf.labels)
		if err != nil {
			return cli.UsageError{Err: err}
		}
		p.AllowedLabels = l
	}
	return nil
}

func checkKeyName(name string) error {
	if name == "" || len(name) > 128 || strings.ContainsAny(name, "/?#% \\") {
		return cli.Usagef("key name %q: want 1..128 letters, digits, '.', '_', '-'", name)
	}
	return nil
}

func (a *app) newKeysCreateCmd() *cobra.Command {
	var (
		out     cli.OutputFlags
		purpose string
		pf      policyFlags
	)
	c := &cobra.Command{
		Use:   "create NAME [--purpose data|gossip] [--all-agents | --agents IDS | --labels K=V]",
		Short: "Create a key; version 1 becomes its primary (operator)",
		Long: `create makes a key. A data key seals data in envelopes; a gossip key is the
agents' gossip keyring. Without --all-agents, --agents or --labels the key
stays on the control plane (rewrap, server-side use). --rotation-period
defaults to the server's (--key-rotation-period of 'edgectl controlplane').`,
		Example: `  edgectl keys create telemetry --all-agents
  edgectl keys create berlin-data --labels site=berlin --rotation-period 7d
  edgectl keys create gossip --purpose gossip --all-agents --rotation-period 1d`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if err := checkKeyName(args[0]); err != nil {
				return err
			}
			if purpose != "data" && purpose != "gossip" {
				return cli.Usagef("--purpose %q: want data or gossip", purpose)
			}
			var p cpapi.KeyPolicy
			if err := pf.apply(c, &p); err != nil {
				return err
			}
			k, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.Key, error) {
				return cl.CreateKey(ctx, cpapi.CreateKeyRequest{Name: args[0], Purpose: purpose, Policy: &p})
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, k, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Key %s created (%s, v1 primary, rotation %s, recipients: %s).\n", k.Name, k.Purpose, durationShort(k.Policy.RotationPeriod), recipientsText(k.Policy))
				return err
			})
		},
	}
	out.Register(c)
	c.Flags().StringVar(&purpose, "purpose", "data", "data (envelope encryption) or gossip (agents' gossip keyring)")
	pf.register(c, true)
	return c
}

func (a *app) newKeysRotateCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   "rotate NAME",
		Short: "Create a new primary version of a key; the previous one becomes decrypt-only (operator)",
		Long: `rotate makes a new version the primary: new data is sealed under it, the
previous primary keeps opening existing data (decrypt-only). Agents receive
the new version with their next key fetch. To stop old data from opening,
rewrap it, raise the minimum decryption version ('keys policy
--min-version'), then retire and destroy the old versions.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if err := checkKeyName(args[0]); err != nil {
				return err
			}
			k, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.Key, error) {
				return cl.RotateKey(ctx, args[0])
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, k, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Key %s rotated: v%d is primary; older versions: %s.\n", k.Name, k.PrimaryVersion, statesText(k))
				return err
			})
		},
	}
	out.Register(c)
	return c
}

func (a *app) newKeysRewrapCmd() *cobra.Command {
	var (
		out         cli.OutputFlags
		in, outFile string
		aad         string
	)
	c := &cobra.Command{
		Use:   "rewrap NAME [--in FILE] [--out FILE] [--aad TEXT]",
		Short: "Re-encrypt a data-key envelope under the key's primary version (operator)",
		Long: `rewrap sends a data-key envelope sealed under a version of NAME to the
control plane, which re-encrypts it under the primary version; the
plaintext never leaves the server. The envelope is read from --in or stdin
and the new one written to --out (mode 0600) or stdout, in binary; a
binary envelope is not written to a terminal. --aad must be the associated
data the envelope was sealed with, if any. With --json the answer (key,
from_version, version, envelope in base64) is printed instead.`,
		Example: `  edgectl keys rewrap telemetry --in reading.env --out reading.v3.env
  edgectl keys rewrap telemetry < old.env > new.env`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if err := checkKeyName(args[0]); err != nil {
				return err
			}
			env, err := readInput(c, in, maxEnvelopeInput)
			if err != nil {
				return err
			}
			if len(env) == 0 {
				return cli.Usagef("no envelope: give --in FILE or pipe it on stdin")
			}
			var aadBytes []byte
			if c.Flags().Changed("aad") {
				aadBytes = []byte(aad)
			}
			res, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.RewrapResponse, error) {
				return cl.Rewrap(ctx, args[0], env, aadBytes)
			})
			if err != nil {
				return err
			}
			if format != cli.FormatTable {
				return cli.Print(c.OutOrStdout(), format, res, nil)
			}
			if err := writeOutput(c, outFile, res.Envelope, true); err != nil {
				return err
			}
			fmt.Fprintf(c.ErrOrStderr(), "%s: rewrapped under %s v%d (was v%d)\n", c.Root().Name(), res.Key, res.Version, res.FromVersion)
			return nil
		},
	}
	out.Register(c)
	f := c.Flags()
	f.StringVar(&in, "in", "", "read the envelope from this file (default stdin)")
	f.StringVar(&outFile, "out", "", "write the new envelope to this file, mode 0600 (default stdout)")
	f.StringVar(&aad, "aad", "", "associated data the envelope was sealed with")
	return c
}

// readInput reads --in FILE or stdin, at most limit bytes.
func readInput(c *cobra.Command, path string, limit int64) ([]byte, error) {
	var r io.Reader = c.InOrStdin()
	if path != "" && path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	} else if f, ok := r.(*os.File); ok && isTerminal(f) {
		return nil, cli.Usagef("stdin is a terminal: give --in FILE or pipe the input")
	}
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("reading the input: %w", err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("input larger than %d bytes", limit)
	}
	return data, nil
}

// writeOutput writes data to path (mode 0600, replacing it) or stdout; a
// binary output is not written to a terminal.
func writeOutput(c *cobra.Command, path string, data []byte, binary bool) error {
	if path != "" && path != "-" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		// An existing file keeps its mode on open: restrict it before
		// anything secret is written.
		if err := f.Chmod(0o600); err != nil {
			f.Close()
			return err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	w := c.OutOrStdout()
	if binary && isTerminal(w) {
		return cli.Usagef("refusing to write binary output to a terminal: give --out FILE or redirect stdout")
	}
	_, err := w.Write(data)
	return err
}

func (a *app) newKeysPolicyCmd() *cobra.Command {
	var (
		out cli.OutputFlags
		pf  policyFlags
	)
	c := &cobra.Command{
		Use:   "policy NAME [--rotation-period D|off] [--min-version N] [--all-agents[=false]] [--agents IDS] [--labels K=V]",
		Short: "Show or change a key's policy (operator to change)",
		Long: `policy without flags prints the key's policy. With flags it changes only the
fields given and keeps the others (--agents "" and --labels "" clear those
lists). --min-version makes versions below it refuse to open data (at most
the primary version); agents learn it from their next key fetch. Changing
who receives a key affects later versions: to take a key away from agents,
rotate it.`,
		Example: `  edgectl keys policy telemetry
  edgectl keys policy telemetry --rotation-period 7d --min-version 3
  edgectl keys policy berlin-data --labels site=berlin,tier=edge --all-agents=false`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if err := checkKeyName(args[0]); err != nil {
				return err
			}
			s, err := a.connect(c)
			if err != nil {
				return err
			}
			defer s.client.CloseIdleConnections()
			k, err := a.getKey(c, s, args[0])
			if err != nil {
				return err
			}
			p := k.Policy
			if err := pf.apply(c, &p); err != nil {
				return err
			}
			if policyChanged(c) {
				ctx, cancel := a.ctx(c)
				k, err = s.client.SetKeyPolicy(ctx, k.Name, p)
				cancel()
				if err != nil {
					return s.explain(err)
				}
			}
			return cli.Print(c.OutOrStdout(), format, k.Policy, func(w io.Writer) error {
				tw := cli.NewTable(w)
				fmt.Fprintf(tw, "Key:\t%s\n", k.Name)
				fmt.Fprintf(tw, "Rotation:\t%s, next %s\n", durationShort(k.Policy.RotationPeriod), nextRotationText(k, a.now()))
				fmt.Fprintf(tw, "Min decrypt version:\t%d\n", k.Policy.MinDecryptVersion)
				fmt.Fprintf(tw, "Recipients:\t%s\n", recipientsText(k.Policy))
				if k.Purpose == "gossip" {
					fmt.Fprintf(tw, "Gossip grace:\tinstall %s, remove %s\n", durationShort(k.Policy.InstallGrace), durationShort(k.Policy.RemoveGrace))
				}
				return tw.Flush()
			})
		},
	}
	out.Register(c)
	pf.register(c, false)
	return c
}

// policyChanged reports whether any policy flag was given.
func policyChanged(c *cobra.Command) bool {
	for _, f := range []string{"rotation-period", "min-version", "all-agents", "agents", "labels", "install-grace", "remove-grace"} {
		if c.Flags().Changed(f) {
			return true
		}
	}
	return false
}

func parseVersionArg(s string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimPrefix(s, "v"), 10, 32)
	if err != nil || n == 0 {
		return 0, cli.Usagef("version %q: want a version number such as 2 or v2", s)
	}
	return uint32(n), nil
}

func (a *app) newKeysRetireCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   "retire NAME VERSION",
		Short: "Disable a decrypt-only version: it keeps its material but opens nothing (operator)",
		Args:  cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			return a.changeVersion(c, &out, args, "retire", nil)
		},
	}
	out.Register(c)
	return c
}

func (a *app) newKeysDestroyCmd() *cobra.Command {
	var (
		out cli.OutputFlags
		yes bool
	)
	c := &cobra.Command{
		Use:   "destroy NAME VERSION",
		Short: "Erase a version's material for good; data under it can never be opened again (admin)",
		Long: `destroy erases a non-primary version's key material on the control plane
(and tells agents to erase theirs). Envelopes sealed under it can never be
opened again: rewrap what must survive first. Without --yes the command
asks for confirmation.`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			return a.changeVersion(c, &out, args, "destroy", &yes)
		},
	}
	out.Register(c)
	c.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	return c
}

func (a *app) changeVersion(c *cobra.Command, out *cli.OutputFlags, args []string, op string, yes *bool) error {
	format, err := out.Format()
	if err != nil {
		return err
	}
	if err := checkKeyName(args[0]); err != nil {
		return err
	}
	v, err := parseVersionArg(args[1])
	if err != nil {
		return err
	}
	if yes != nil && !*yes {
		ok, err := confirm(c, fmt.Sprintf("Destroy %s v%d? Data sealed under it can never be opened again. [y/N] ", args[0], v))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("destroy of %s v%d cancelled", args[0], v)
		}
	}
	k, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.Key, error) {
		if op == "destroy" {
			return cl.DestroyKeyVersion(ctx, args[0], v)
		}
		return cl.RetireKeyVersion(ctx, args[0], v)
	})
	if err != nil {
		return err
	}
	return cli.Print(c.OutOrStdout(), format, k, func(w io.Writer) error {
		word := map[string]string{"retire": "retired", "destroy": "destroyed"}[op]
		_, err := fmt.Fprintf(w, "Key %s v%d %s.\n", k.Name, v, word)
		return err
	})
}
