package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (s *stateCmd) newListCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:     "list [COLLECTION]",
		Aliases: []string{"ls"},
		Short:   "List the collections, or the keys of one collection with their values",
		Long: `list without an argument lists the collections the agent holds, with their
types and key counts. With a COLLECTION it lists its content: keys and values
(lww), elements (orset), counters and their values (counter), or registers
with each of their concurrent values on a row of its own (mvreg).

--json prints an array: of collections {name, type, keys}; of entries {key,
value, hlc, origin} (lww; binary values with encoding "base64"); of elements
(orset); of {key, value} (counter); of {key, values} (mvreg).`,
		Example: `  edgectl state list
  edgectl state list config
  edgectl state list hits --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			w := c.OutOrStdout()
			if len(args) == 0 {
				colls, err := withAgent(s.a, c, s.agent, func(ctx context.Context, api *agentapi.Client) ([]agentapi.Collection, error) {
					return api.Collections(ctx)
				})
				if err != nil {
					return err
				}
				if colls == nil {
					colls = []agentapi.Collection{}
				}
				return cli.Print(w, format, colls, func(w io.Writer) error { return printCollections(w, colls) })
			}
			if err := checkStateName("collection", args[0]); err != nil {
				return err
			}
			l, err := withAgent(s.a, c, s.agent, func(ctx context.Context, api *agentapi.Client) (agentapi.Listing, error) {
				return api.List(ctx, args[0])
			})
			if err != nil {
				return err
			}
			return cli.Print(w, format, listingItems(l), func(w io.Writer) error { return printListing(w, l) })
		},
	}
	out.Register(c)
	return c
}

// listingItems is the array --json prints for a listing (never null).
func listingItems(l agentapi.Listing) any {
	switch l.Type {
	case agentapi.TypeORSet:
		return nonNil(l.Members)
	case agentapi.TypeCounter:
		return nonNil(l.Counters)
	case agentapi.TypeMVReg:
		return nonNil(l.Registers)
	}
	return nonNil(l.Entries)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func printCollections(w io.Writer, colls []agentapi.Collection) error {
	if len(colls) == 0 {
		_, err := fmt.Fprintln(w, "No collections.")
		return err
	}
	tw := cli.NewTable(w)
	fmt.Fprintln(tw, "COLLECTION\tTYPE\tKEYS")
	for _, c := range colls {
		fmt.Fprintf(tw, "%s\t%s\t%d\n", cell(c.Name, 0), cell(c.Type, 0), c.Keys)
	}
	return tw.Flush()
}

func printListing(w io.Writer, l agentapi.Listing) error {
	if len(l.Entries)+len(l.Members)+len(l.Counters)+len(l.Registers) == 0 {
		_, err := fmt.Fprintf(w, "%s (%s) is empty.\n", cell(l.Collection, 0), l.Type)
		return err
	}
	tw := cli.NewTable(w)
	switch l.Type {
	case agentapi.TypeORSet:
		fmt.Fprintln(tw, "ELEMENT")
		for _, m := range l.Members {
			fmt.Fprintf(tw, "%s\n", cell(m, 0))
		}
	case agentapi.TypeCounter:
		fmt.Fprintln(tw, "KEY\tVALUE")
		for _, c := range l.Counters {
			fmt.Fprintf(tw, "%s\t%d\n", cell(c.Key, 0), c.Value)
		}
	case agentapi.TypeMVReg:
		fmt.Fprintln(tw, "KEY\tSIBLING\tVALUE")
		for _, r := range l.Registers {
			for i, v := range r.Values {
				fmt.Fprintf(tw, "%s\t%d/%d\t%s\n", cell(r.Key, 0), i+1, len(r.Values), showSibling(v, 80))
			}
		}
	default:
		fmt.Fprintln(tw, "KEY\tVALUE\tORIGIN")
		for _, e := range l.Entries {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", cell(e.Key, 0), showValue(e.Value, e.Encoding, 80), cell(e.Origin, 0))
		}
	}
	return tw.Flush()
}
