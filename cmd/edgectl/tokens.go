package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

var roles = []string{string(cpapi.RoleViewer), string(cpapi.RoleOperator), string(cpapi.RoleAdmin)}

func (a *app) newTokensCmd() *cobra.Command {
	c := &cobra.Command{
		Use:     "tokens",
		Aliases: []string{"token"},
		Short:   "Create and list API and enrollment tokens; revoke API tokens",
		Long: `Two kinds of token exist:

  API tokens        credentials of operators and scripts, with a role
                    (viewer < operator < admin); long-lived, revocable.
  enrollment tokens single-use, expiring secrets that let one agent enroll,
                    optionally giving it labels.

'tokens create --role ROLE' makes an API token; 'tokens create' with --ttl,
--labels or --count (and no --role) makes enrollment tokens. 'tokens list'
lists API tokens, 'tokens list --enrollment' enrollment tokens. 'tokens
revoke' revokes an API token (an enrollment token expires, or is used up).`,
		RunE: cli.GroupRunE,
	}
	c.AddCommand(a.newTokensCreateCmd(), a.newTokensListCmd(), a.newTokensRevokeCmd())
	return c
}

func (a *app) newTokensCreateCmd() *cobra.Command {
	var (
		out    cli.OutputFlags
		role   string
		name   string
		ttl    string
		labels []string
		count  int
	)
	c := &cobra.Command{
		Use:   "create (--role ROLE --name N [--ttl D] | --ttl D [--labels k=v,...] [--count N])",
		Short: "Make an API token (--role) or enrollment tokens (--ttl/--labels/--count)",
		Long: `With --role, create makes an API token for an operator or a script; --name
(required) says who uses it and --ttl (optional) makes it expire. Requires
the admin role.

Without --role, create makes single-use enrollment tokens: --ttl is how long
they stay valid (default 1h; units s, m, h, d), --labels are given to the
agent that enrolls with one, --count makes several. Requires the operator role.

--labels and --count belong to enrollment tokens and --name to API tokens;
mixing them is refused. Nothing at all is refused too: say which kind.

The secret is printed once; the server keeps only its SHA-256 digest. With
--json an API token, or a single enrollment token, prints as one object; with
--count, enrollment tokens print as an array.`,
		Example: `  edgectl tokens create --ttl 1h --labels site=berlin
  edgectl tokens create --ttl 30m --labels site=berlin,rack=4 --count 10 --json
  edgectl tokens create --role viewer --name grafana
  edgectl tokens create --role operator --name ci --ttl 90d`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			fl := c.Flags()
			enrollOnly := fl.Changed("labels") || fl.Changed("count")
			switch {
			case role != "" && enrollOnly:
				return cli.Usagef("--role makes an API token; --labels and --count are for enrollment tokens (omit --role): pick one kind")
			case role == "" && fl.Changed("name"):
				return cli.Usagef("--name is for API tokens: add --role viewer|operator|admin")
			case role == "" && !fl.Changed("ttl") && !enrollOnly:
				return cli.Usagef("say which token: --role viewer|operator|admin for an API token, or --ttl/--labels/--count for an enrollment token")
			}
			var d time.Duration
			if ttl != "" {
				if d, err = cli.ParseDuration(ttl); err != nil || d == 0 {
					return cli.Usagef("--ttl %q: want a positive duration such as 1h, 30m or 7d", ttl)
				}
			}
			if role != "" {
				if !contains(roles, role) {
					return cli.Usagef("--role %q: want one of %s", role, strings.Join(roles, ", "))
				}
				if strings.TrimSpace(name) == "" {
					return cli.Usagef("API tokens need --name, saying who or what uses the token")
				}
				return a.createAPIToken(c, format, name, cpapi.Role(role), d)
			}
			return a.createEnrollmentTokens(c, format, d, labels, count)
		},
	}
	out.Register(c)
	f := c.Flags()
	f.StringVar(&role, "role", "", "API token role: viewer, operator or admin (makes an API token)")
	f.StringVar(&name, "name", "", "API token: who or what uses it (required with --role)")
	f.StringVar(&ttl, "ttl", "", "validity: enrollment tokens default 1h; API tokens default no expiry")
	f.StringArrayVar(&labels, "labels", nil, "enrollment token: labels key=value for the enrolled agent (comma-separated or repeated)")
	f.IntVar(&count, "count", 1, "enrollment token: how many single-use tokens to make")
	c.RegisterFlagCompletionFunc("role", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return roles, cobra.ShellCompDirectiveNoFileComp
	})
	return c
}

func (a *app) createAPIToken(c *cobra.Command, format, name string, role cpapi.Role, ttl time.Duration) error {
	tok, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.NewAPIToken, error) {
		return cl.CreateAPIToken(ctx, name, role, ttl)
	})
	if err != nil {
		return err
	}
	return cli.Print(c.OutOrStdout(), format, tok, func(w io.Writer) error {
		fmt.Fprintf(w, "API token %s (role %s", tok.ID, tok.Role)
		if tok.Name != "" {
			fmt.Fprintf(w, ", name %q", tok.Name)
		}
		if tok.ExpiresAt != nil {
			fmt.Fprintf(w, ", expires %s", tok.ExpiresAt.Local().Format(time.RFC3339))
		}
		fmt.Fprintf(w, "):\n%s\n", tok.Token)
		_, err := fmt.Fprintln(w, "Store it now: it is not shown again.")
		return err
	})
}

// createEnrollmentTokens makes enrollment tokens for 'tokens create'
// (without --role) and its hidden alias 'enrollment-tokens create'. A zero ttl takes the server default (1h).
// With --json a single token prints as an object, and as an array when
// --count was given.
func (a *app) createEnrollmentTokens(c *cobra.Command, format string, ttl time.Duration, labelArgs []string, count int) error {
	if count < 1 {
		return cli.Usagef("--count must be at least 1")
	}
	labels, err := cli.ParseLabels(labelArgs)
	if err != nil {
		return cli.Usagef("--labels: %v", err)
	}
	toks, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) ([]cpapi.NewEnrollmentToken, error) {
		return cl.CreateEnrollmentTokens(ctx, ttl, labels, count)
	})
	if err != nil {
		return err
	}
	for i := range toks {
		if toks[i].Labels == nil {
			toks[i].Labels = map[string]string{}
		}
	}
	var v any = toks
	if !c.Flags().Changed("count") && len(toks) == 1 {
		v = toks[0]
	}
	return cli.Print(c.OutOrStdout(), format, v, func(w io.Writer) error {
		for _, t := range toks {
			fmt.Fprintf(w, "Enrollment token %s (expires %s, labels %s):\n%s\n", t.ID, t.ExpiresAt.Local().Format(time.RFC3339), cli.FormatLabels(t.Labels), t.Token)
		}
		_, err := fmt.Fprintln(w, "Single use; not shown again. Start an agent with it to enroll.")
		return err
	})
}

// listEnrollmentTokens lists enrollment tokens for 'tokens list
// --enrollment' and its hidden alias 'enrollment-tokens list': the unused
// ones, or all of them.
func (a *app) listEnrollmentTokens(c *cobra.Command, format string, all bool) error {
	toks, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) ([]cpapi.EnrollmentToken, error) {
		return cl.ListEnrollmentTokens(ctx)
	})
	if err != nil {
		return err
	}
	shown := []cpapi.EnrollmentToken{}
	for _, t := range toks {
		if all || t.State == "unused" {
			if t.Labels == nil {
				t.Labels = map[string]string{}
			}
			shown = append(shown, t)
		}
	}
	now := a.now()
	return cli.Print(c.OutOrStdout(), format, shown, func(w io.Writer) error {
		tw := cli.NewTable(w)
		fmt.Fprintln(tw, "ID\tSTATE\tCREATED\tEXPIRES\tLABELS\tUSED BY")
		for _, t := range shown {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.State, cli.Age(now, t.CreatedAt), t.ExpiresAt.Local().Format(time.RFC3339), cli.FormatLabels(t.Labels), dash(t.UsedBy))
		}
		return tw.Flush()
	})
}

func (a *app) newTokensListCmd() *cobra.Command {
	var (
		out                  cli.OutputFlags
		revoked, enroll, all bool
	)
	c := &cobra.Command{
		Use:     "list [--revoked | --enrollment [--all]]",
		Aliases: []string{"ls"},
		Short:   "List API tokens (admin role), or enrollment tokens with --enrollment (viewer role); never their secrets",
		Example: `  edgectl tokens list
  edgectl tokens list --enrollment --all --json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			switch {
			case enroll && revoked:
				return cli.Usagef("--revoked is for API tokens; enrollment tokens are not revoked (--all shows used and expired ones)")
			case all && !enroll:
				return cli.Usagef("--all is for enrollment tokens: add --enrollment (API tokens: --revoked)")
			case enroll:
				return a.listEnrollmentTokens(c, format, all)
			}
			toks, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) ([]cpapi.APIToken, error) {
				return cl.ListAPITokens(ctx)
			})
			if err != nil {
				return err
			}
			shown := []cpapi.APIToken{}
			for _, t := range toks {
				if t.RevokedAt == nil || revoked {
					shown = append(shown, t)
				}
			}
			now := a.now()
			return cli.Print(c.OutOrStdout(), format, shown, func(w io.Writer) error {
				tw := cli.NewTable(w)
				fmt.Fprintln(tw, "ID\tNAME\tROLE\tCREATED\tCREATED BY\tEXPIRES\tSTATUS")
				for _, t := range shown {
					status, expires := "active", "never"
					if t.ExpiresAt != nil {
						expires = t.ExpiresAt.Local().Format(time.RFC3339)
						if !t.ExpiresAt.After(now) {
							status = "expired"
						}
					}
					if t.RevokedAt != nil {
						status = "revoked " + cli.Age(now, *t.RevokedAt)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, dash(t.Name), t.Role, cli.Age(now, t.CreatedAt), dash(t.CreatedBy), expires, status)
				}
				return tw.Flush()
			})
		},
	}
	out.Register(c)
	f := c.Flags()
	f.BoolVar(&revoked, "revoked", false, "API tokens: include revoked tokens")
	f.BoolVar(&enroll, "enrollment", false, "list enrollment tokens instead of API tokens (unused ones, unless --all)")
	f.BoolVarP(&all, "all", "a", false, "enrollment tokens: include used and expired tokens")
	return c
}

func (a *app) newTokensRevokeCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:               "revoke ID",
		Short:             "Revoke an API token; requests carrying it are refused from now on",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeTokenIDs,
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if err := checkID("token", args[0]); err != nil {
				return err
			}
			tok, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.APIToken, error) {
				return cl.RevokeAPIToken(ctx, args[0])
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, tok, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "API token %s (%s, role %s) revoked.\n", tok.ID, dash(tok.Name), tok.Role)
				return err
			})
		},
	}
	out.Register(c)
	return c
}

func (a *app) completeTokenIDs(c *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
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
	toks, err := cl.ListAPITokens(c.Context())
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var out []string
	for _, t := range toks {
		if t.RevokedAt == nil {
			out = append(out, t.ID+"\t"+t.Name+" ("+string(t.Role)+")")
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
