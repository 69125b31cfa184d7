package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/clientconfig"
)

func (a *app) newConfigCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "config",
		Short: "Show and select contexts (control planes with their credentials)",
		Long: `Contexts are kept in $XDG_CONFIG_HOME/edgefleet/config.yaml (default
~/.config/edgefleet/config.yaml, mode 0600; --config or EDGEFLEET_CONFIG choose
another file). 'edgectl login' adds one and selects it.

Every command takes the control plane URL, API token and CA from, in order:
--server/--token/--ca, EDGEFLEET_SERVER/EDGEFLEET_TOKEN/EDGEFLEET_CA, then the
selected context (--context, EDGEFLEET_CONTEXT, or current-context). A
context's token and CA are only used with its own server.`,
		RunE: cli.GroupRunE,
	}
	c.AddCommand(a.newUseContextCmd(), a.newGetContextsCmd(), a.newCurrentContextCmd(), a.newDeleteContextCmd())
	return c
}

func (a *app) completeContexts(c *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
	path, err := a.contextsPath()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	f, err := clientconfig.Load(path)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	for _, ctx := range f.Contexts {
		names = append(names, ctx.Name)
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

func (a *app) completeOneContext(c *cobra.Command, args []string, s string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return a.completeContexts(c, args, s)
}

func (a *app) newUseContextCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "use-context NAME",
		Short:             "Make NAME the current context",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeOneContext,
		RunE: func(c *cobra.Command, args []string) error {
			path, err := a.contextsPath()
			if err != nil {
				return err
			}
			err = clientconfig.Update(path, func(f *clientconfig.File) error { return f.Use(args[0]) })
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(c.OutOrStdout(), "Switched to context %q.\n", args[0])
			return err
		},
	}
}

func (a *app) newCurrentContextCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "current-context",
		Short: "Print the name of the current context",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			f, path, err := a.loadContexts(c)
			if err != nil {
				return err
			}
			if f.CurrentContext == "" {
				return fmt.Errorf("no current context in %s (run 'edgectl login' or 'edgectl config use-context NAME')", path)
			}
			_, err = fmt.Fprintln(c.OutOrStdout(), f.CurrentContext)
			return err
		},
	}
}

func (a *app) newDeleteContextCmd() *cobra.Command {
	return &cobra.Command{
		Use:               "delete-context NAME",
		Short:             "Remove a context (its token stays valid on the server; revoke it with 'edgectl tokens revoke')",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: a.completeOneContext,
		RunE: func(c *cobra.Command, args []string) error {
			path, err := a.contextsPath()
			if err != nil {
				return err
			}
			if err := clientconfig.Update(path, func(f *clientconfig.File) error { return f.Delete(args[0]) }); err != nil {
				return err
			}
			_, err = fmt.Fprintf(c.OutOrStdout(), "Deleted context %q.\n", args[0])
			return err
		},
	}
}

// contextView is a context as listed: secrets are never printed.
type contextView struct {
	Name    string `json:"name"`
	Current bool   `json:"current"`
	Server  string `json:"server"`
	// HasToken tells whether a token is stored.
	HasToken bool `json:"has_token"`
	// CA is the CA file's path, "inline" for stored PEM, or "" for the
	// system roots.
	CA string `json:"ca"`
}

func (a *app) newGetContextsCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   "get-contexts",
		Short: "List the contexts (tokens are not shown)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			f, _, err := a.loadContexts(c)
			if err != nil {
				return err
			}
			views := make([]contextView, 0, len(f.Contexts))
			for _, ctx := range f.Contexts {
				v := contextView{Name: ctx.Name, Current: ctx.Name == f.CurrentContext, Server: ctx.Server, HasToken: ctx.Token != "", CA: ctx.CA}
				if clientconfig.IsPEM(ctx.CA) {
					v.CA = "inline"
				}
				views = append(views, v)
			}
			return cli.Print(c.OutOrStdout(), format, views, func(w io.Writer) error {
				tw := cli.NewTable(w)
				fmt.Fprintln(tw, "CURRENT\tNAME\tSERVER\tTOKEN\tCA")
				for _, v := range views {
					cur, tok, ca := "", "no", v.CA
					if v.Current {
						cur = "*"
					}
					if v.HasToken {
						tok = "yes"
					}
					if ca == "" {
						ca = "system roots"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", cur, v.Name, v.Server, tok, ca)
				}
				return tw.Flush()
			})
		},
	}
	out.Register(c)
	return c
}
