package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (s *stateCmd) newGetCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   "get COLLECTION KEY",
		Short: "Read one key: its value (lww, counter), its concurrent values (mvreg), or whether it is in the set (orset)",
		Long: `get reads one key of a collection. A missing key of an lww or mvreg
collection is an error (the agent answers 404); an orset answers whether the
element is present, a counter that was never added to is 0.

--json prints the agent's answer: {key, value, hlc, origin} (lww), {key,
value} (counter), {key, values} (mvreg), {key, present} (orset).`,
		Example: `  edgectl state get config site
  edgectl state get conf mode --json`,
		Args: cobra.ExactArgs(2),
		RunE: func(c *cobra.Command, args []string) error {
			format, coll, key, err := keyArgs(&out, args)
			if err != nil {
				return err
			}
			it, err := withAgent(s.a, c, s.agent, func(ctx context.Context, api *agentapi.Client) (agentapi.Item, error) {
				return api.Get(ctx, coll, key)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, it, func(w io.Writer) error { return printItem(w, coll, it) })
		},
	}
	out.Register(c)
	return c
}

// printItem prints one key: the value alone on a line for lww and
// counters, one line per sibling for registers, and a sentence for sets.
func printItem(w io.Writer, coll string, it agentapi.Item) error {
	var err error
	switch {
	case it.Present != nil:
		verb := "is not"
		if *it.Present {
			verb = "is"
		}
		_, err = fmt.Fprintf(w, "%s %s in %s.\n", cell(it.Key, 0), verb, cell(coll, 0))
	case it.Values != nil:
		if len(it.Values) > 1 {
			if _, err := fmt.Fprintf(w, "%d concurrent values (siblings):\n", len(it.Values)); err != nil {
				return err
			}
		}
		for _, v := range it.Values {
			if _, err := fmt.Fprintln(w, showSibling(v, 0)); err != nil {
				return err
			}
		}
	default:
		_, err = fmt.Fprintln(w, showValue(it.Value, it.Encoding, 0))
	}
	return err
}
