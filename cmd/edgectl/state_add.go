package main

import (
	"context"
	"fmt"
	"io"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

// counterAdded is what add prints with --json: the agent's write result
// and the counter's value read after it.
type counterAdded struct {
	agentapi.WriteResult
	Added int64 `json:"added"`
	Value int64 `json:"value"`
}

func (s *stateCmd) newAddCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   "add COLLECTION KEY N",
		Short: "Add N to a counter (negative N subtracts; put it after --)",
		Long: `add adds N to the counter KEY of a counter collection and prints its value
afterwards, as this agent sees it (other agents' additions arrive by gossip).
A negative N must follow -- so it is not taken for a flag. --json prints
{collection, key, type, origin, seq, added, value}.`,
		Example: `  edgectl state add hits total 5
  edgectl state add hits total -- -2`,
		Args: cobra.ExactArgs(3),
		RunE: func(c *cobra.Command, args []string) error {
			format, coll, key, err := keyArgs(&out, args)
			if err != nil {
				return err
			}
			n, err := strconv.ParseInt(args[2], 10, 64)
			if err != nil {
				return cli.Usagef("N %q: want an integer", args[2])
			}
			ac, err := s.a.agentConn(c, s.agent)
			if err != nil {
				return err
			}
			defer ac.close()
			get := func(ctx context.Context, api *agentapi.Client) (agentapi.Item, error) { return api.Get(ctx, coll, key) }
			// The agent would store {"add": N} as the value of an lww or
			// mvreg key: make sure it is a counter first (a counter's key
			// reads as a bare number, 0 before any add).
			it, err := agentCall(c.Context(), ac, get)
			if _, isCounter := counterValue(it); agentapi.StatusCode(err) == 404 || (err == nil && !isCounter) {
				return cli.Usagef("add: %s is not a counter collection (see state.collections of the agent's config)", cell(coll, 0))
			}
			if err != nil {
				return err
			}
			res, err := agentCall(c.Context(), ac, func(ctx context.Context, api *agentapi.Client) (agentapi.WriteResult, error) {
				return api.CounterAdd(ctx, coll, key, n)
			})
			if err != nil {
				return err
			}
			if it, err = agentCall(c.Context(), ac, get); err != nil {
				return err
			}
			v, ok := counterValue(it)
			if !ok {
				return fmt.Errorf("counter %s: the agent answered the value %q", statePath(coll, key), it.Value)
			}
			added := counterAdded{WriteResult: res, Added: n, Value: v}
			return cli.Print(c.OutOrStdout(), format, added, func(w io.Writer) error {
				_, err := fmt.Fprintf(w, "Added %d to %s: now %d (op %d of %s).\n", n, statePath(coll, key), v, res.Seq, cell(res.Origin, 0))
				return err
			})
		},
	}
	out.Register(c)
	return c
}

// counterValue is the value of a counter as the agent answers a read of
// it: a bare integer, without the origin and clock of an lww value.
func counterValue(it agentapi.Item) (int64, bool) {
	if it.HLC != "" || it.Values != nil || it.Present != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(string(it.Value), 10, 64)
	return v, err == nil
}
