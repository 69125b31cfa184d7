package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (s *stateCmd) newPutCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   "put COLLECTION KEY [VALUE|-]",
		Short: "Write a value (lww, mvreg) or add an element to a set (orset)",
		Long: `put writes VALUE to KEY: the value of an lww key, or the value of an mvreg key
(replacing the siblings this agent has seen). VALUE is one JSON document, or -
to read it from stdin. For an orset, put KEY adds the element KEY and takes no
VALUE. Counters are changed with 'edgectl state add'.

The agent answers once the write is durable; put prints the origin and
sequence number of the op (--json: {collection, key, type, origin, seq}).`,
		Example: `  edgectl state put config site '{"name":"berlin"}'
  edgectl state put conf mode '"eco"'
  cat site.json | edgectl state put config site -
  edgectl state put tags blue`,
		Args: cobra.RangeArgs(2, 3),
		RunE: func(c *cobra.Command, args []string) error {
			format, coll, key, err := keyArgs(&out, args)
			if err != nil {
				return err
			}
			var value []byte
			if len(args) == 3 {
				if value, err = readValue(c, args[2]); err != nil {
					return err
				}
			}
			ac, err := s.a.agentConn(c, s.agent)
			if err != nil {
				return err
			}
			defer ac.close()
			if value == nil {
				// Only an OR-set element goes without a value: its
				// answer to a read says whether it is present.
				it, err := agentCall(c.Context(), ac, func(ctx context.Context, api *agentapi.Client) (agentapi.Item, error) {
					return api.Get(ctx, coll, key)
				})
				if err != nil && agentapi.StatusCode(err) != 404 {
					return err
				}
				if err != nil || it.Present == nil {
					return cli.Usagef("put %s needs a VALUE (a JSON document, or - for stdin): %s is not an orset collection", statePath(coll, key), cell(coll, 0))
				}
			}
			res, err := agentCall(c.Context(), ac, func(ctx context.Context, api *agentapi.Client) (agentapi.WriteResult, error) {
				return api.Put(ctx, coll, key, value)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, res, func(w io.Writer) error {
				what := "Wrote"
				if res.Type == agentapi.TypeORSet {
					what = "Added"
				}
				_, err := fmt.Fprintf(w, "%s %s (%s, op %d of %s).\n", what, statePath(coll, key), res.Type, res.Seq, cell(res.Origin, 0))
				return err
			})
		},
	}
	out.Register(c)
	return c
}
