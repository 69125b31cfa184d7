package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/cli"
)

func (a *app) newModelsPushCmd() *cobra.Command {
	var out cli.OutputFlags
	c := &cobra.Command{
		Use:   "push FILE",
		Short: "Upload a model file to the registry, where it is checked and signed",
		Long: `push uploads a model file (- reads it from stdin). The control plane refuses
a file that is truncated, corrupted (digest mismatch), of an unknown format
version, or whose architecture, weights (NaN or Inf), feature schema or labels
are invalid, naming the reason; nothing is stored then. A file it accepts is
signed with its ML-DSA-65 key and stored under its name and version. Pushing
the same file again changes nothing; another file under a stored version is
refused (push it as a new version). Requires the admin role.`,
		Example: `  edgectl models push occupancy-lr.model
  edgectl models push - --json < wisdm-mlp.model`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			var r io.Reader = c.InOrStdin()
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return cli.Usagef("model file: %v", err)
				}
				defer f.Close()
				r = f
			}
			b, err := io.ReadAll(io.LimitReader(r, maxModelFile+1))
			if err != nil {
				return fmt.Errorf("read the model file: %w", err)
			}
			if len(b) > maxModelFile {
				return cli.Usagef("model file is larger than %d bytes", maxModelFile)
			}
			m, err := fetch(a, c, func(ctx context.Context, cl *cpapi.Client) (cpapi.Model, error) {
				return cl.PushModel(ctx, b)
			})
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, m, func(w io.Writer) error {
				fmt.Fprintf(w, "Pushed %s version %s, signed by the control plane.\n", cell(m.Name, 0), cell(m.Version, 0))
				return printModel(w, m)
			})
		},
	}
	out.Register(c)
	return c
}
