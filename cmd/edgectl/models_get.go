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

// modelDetail is what get prints: the version and the model's deployment
// history.
type modelDetail struct {
	cpapi.Model
	Deployments []cpapi.ModelDeployment `json:"deployments"`
	// File is where --out wrote the signed file.
	File string `json:"file,omitempty"`
}

func (a *app) newModelsGetCmd() *cobra.Command {
	var (
		out     cli.OutputFlags
		version string
		file    string
	)
	c := &cobra.Command{
		Use:   "get NAME [--version V] [--out FILE]",
		Short: "Describe a model version and its deployments; download its signed file with --out",
		Long: `get describes a model version (default: the newest pushed) and lists the
model's deployment history. --out FILE writes the version's file, signed by
the control plane, to FILE (- for stdout, which then carries only the file).`,
		Example: `  edgectl models get occupancy-lr
  edgectl models get occupancy-lr --version 3 --out occupancy-lr-3.model
  edgectl models get occupancy-lr --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			name := args[0]
			s, err := a.connect(c)
			if err != nil {
				return err
			}
			defer s.client.CloseIdleConnections()
			ctx, cancel := a.ctx(c)
			defer cancel()
			d, signed, err := getModel(ctx, s.client, name, version, file != "")
			if err != nil {
				return s.explain(err)
			}
			w := c.OutOrStdout()
			if file == "-" {
				_, err := w.Write(signed)
				return err
			}
			if file != "" {
				if err := os.WriteFile(file, signed, 0o644); err != nil {
					return fmt.Errorf("write the model file: %w", err)
				}
				d.File = file
			}
			return cli.Print(w, format, d, func(w io.Writer) error {
				if err := printModel(w, d.Model); err != nil {
					return err
				}
				if d.File != "" {
					fmt.Fprintf(w, "\nWrote the signed file (%s) to %s.\n", bytesIEC(uint64(len(signed))), d.File)
				}
				if len(d.Deployments) == 0 {
					_, err := fmt.Fprintln(w, "\nNot deployed.")
					return err
				}
				fmt.Fprintln(w)
				return printDeployments(w, d.Deployments)
			})
		},
	}
	out.Register(c)
	c.Flags().StringVar(&version, "version", "", "model version (default: the newest pushed)")
	c.Flags().StringVar(&file, "out", "", "write the signed model file here (- for stdout)")
	return c
}

// getModel fetches a version's description (the newest when version is
// empty), the model's deployments and, with download, the signed file.
func getModel(ctx context.Context, cl *cpapi.Client, name, version string, download bool) (modelDetail, []byte, error) {
	vs, err := cl.ModelVersions(ctx, name)
	if err != nil {
		return modelDetail{}, nil, err
	}
	d := modelDetail{Deployments: vs.Deployments}
	if version == "" {
		d.Model = vs.Versions[len(vs.Versions)-1]
	} else if d.Model, err = cl.GetModel(ctx, name, version); err != nil {
		return d, nil, err
	}
	if !download {
		return d, nil, nil
	}
	signed, err := cl.DownloadModel(ctx, name, d.Version)
	return d, signed, err
}
