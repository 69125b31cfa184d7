package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newEnrollmentTokensCmd() *cobra.Command {
	c := &cobra.Command{
		Use:     "enrollment-tokens",
		Aliases: []string{"enrollment-token"},
		Short:   "Create and list single-use, expiring enrollment tokens for agents",
		RunE:    cli.GroupRunE,
	}
	c.AddCommand(a.newEnrollmentTokensCreateCmd(), a.newEnrollmentTokensListCmd())
	return c
}

func (a *app) newEnrollmentTokensCreateCmd() *cobra.Command {
	var (
		out    cli.OutputFlags
		ttl    string
		labels []string
		count  int
	)
	c := &cobra.Command{
		Use:   "create [--ttl 1h] [--labels k=v,...] [--count N]",
		Short: "Make single-use enrollment tokens (operator role)",
		Long: `create makes --count single-use tokens, each valid for --ttl, that let one
agent enroll and give it --labels. The secrets are printed once. With --json
the answer is the token object, or an array of them when --count is given.`,
		Example: `  edgectl enrollment-tokens create --ttl 1h --labels site=berlin
  edgectl enrollment-tokens create --count 50 --labels site=lab --json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			var d time.Duration
			if ttl != "" {
				if d, err = cli.ParseDuration(ttl); err != nil || d == 0 {
					return cli.Usagef("--ttl %q: want a positive duration such as 1h, 30m or 7d", ttl)
				}
			}
			return a.createEnrollmentTokens(c, format, d, labels, count)
		},
	}
	out.Register(c)
	f := c.Flags()
	f.StringVar(&ttl, "ttl", "1h", "how long the tokens stay valid")
	f.StringArrayVar(&labels, "labels", nil, "labels key=value given to the enrolled agent (comma-separated or repeated)")
	f.IntVar(&count, "count", 1, "how many single-use tokens to make")
	return c
}

// createEnrollmentTokens is shared by 'tokens create' (without --role) and
// 'enrollment-tokens create'. A zero ttl takes the server default (1h).
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

func (a *app) newEnrollmentTokensListCmd() *cobra.Command {
	var (
		out cli.OutputFlags
		all bool
	)
	c := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List enrollment tokens (without secrets): unused, used or expired",
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
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
		},
	}
	out.Register(c)
	c.Flags().BoolVarP(&all, "all", "a", false, "include used and expired tokens")
	return c
}
