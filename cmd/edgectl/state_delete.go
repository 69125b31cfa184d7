package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (s *stateCmd) newDeleteCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:     "delete COLLECTION KEY",
		Aliases: []string{"rm"},
		Short:   "Delete a key (lww), clear a register (mvreg) or remove an element from a set (orset)",
		Long: `delete deletes KEY of an lww collection, clears an mvreg key (every sibling
this agent has seen), or removes the element KEY from an orset. Counters
cannot be deleted: add the opposite amount. --json prints {collection, key,
type, origin, seq}.`,
		Example: `  edgectl state delete config site
  edgectl state delete tags blue`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			format, coll, key, err := keyArgs(&out, args)
			if err != nil {
				return err
			}
			res, err := withAgent(s.a, c, s.agent, func(ctx context.Context, api *agentapi.Client) (agentapi.WriteResult, error) {
				return api.Delete(ctx, coll, key)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, res, func(w io.Writer) error {
				what := "Deleted"
				switch res.Type {
				case agentapi.TypeORSet:
					what = "Removed"
				case agentapi.TypeMVReg:
					what = "Cleared"
				}
				_, err := fmt.Fprintf(w, "%s %s (%s, op %d of %s).\n", what, statePath(coll, key), res.Type, res.Seq, cell(res.Origin, 0))
				return err
			})
		},
	}
	out.Register(c)
	return c
}
