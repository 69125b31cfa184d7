package main

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
)

// newEnrollmentTokensCmd is 'enrollment-tokens', a hidden alias kept for
// scripts written against it: 'enrollment-tokens create' is 'tokens create'
// without --role, 'enrollment-tokens list' is 'tokens list --enrollment'.
func (a *app) newEnrollmentTokensCmd() *cobra.Command {
	c := &cobra.Command{
		Use:     "enrollment-tokens",
		Aliases: []string{"enrollment-token"},
		Short:   "Same as 'tokens create' (without --role) and 'tokens list --enrollment'",
		Hidden:  true,
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
		Short: "Same as 'tokens create --ttl 1h [--labels ...] [--count N]'",
		Args:  cobra.NoArgs,
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

func (a *app) newEnrollmentTokensListCmd() *cobra.Command {
	var (
		out cli.OutputFlags
		all bool
	)
	c := &cobra.Command{
		Use:     "list [--all]",
		Aliases: []string{"ls"},
		Short:   "Same as 'tokens list --enrollment [--all]'",
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			return a.listEnrollmentTokens(c, format, all)
		},
	}
	out.Register(c)
	c.Flags().BoolVarP(&all, "all", "a", false, "include used and expired tokens")
	return c
}
