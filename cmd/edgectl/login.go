package main

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/clientconfig"
)

func (a *app) newLoginCmd() *cobra.Command {
	var (
		name      string
		tokenFile string
		noSelect  bool
	)
	c := &cobra.Command{
		Use:   "login --server URL --token TOKEN [--ca FILE] [--name NAME]",
		Short: "Check credentials against a control plane and save them as a context",
		Long: `login calls the control plane with the given URL, API token and CA, and when
the server accepts them stores them as a context in the contexts file and makes
it current, so later commands need no flags. The CA certificate is stored inline
(PEM), so the context keeps working if the file moves.

--server, --token and --ca may also come from EDGEFLEET_SERVER, EDGEFLEET_TOKEN
and EDGEFLEET_CA; --token-file reads the token from a file (such as the control
plane's admin.token), which keeps it out of the process list and shell history.`,
		Example: `  edgectl login --server https://127.0.0.1:8443 --ca data/ca.pem --token-file data/admin.token
  edgectl login --server https://cp.example:8443 --token efp_... --ca ca.pem --name prod`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			env := clientconfig.FromEnv(a.getenv)
			server, _ := firstOf(a.flags.Server, env.Server)
			token, ti := firstOf(a.flags.Token, env.Token)
			caValue, ci := firstOf(a.flags.CA, env.CA)
			tokenFrom := []string{"--token", clientconfig.EnvToken}[max(ti, 0)]
			caFrom := []string{"--ca", clientconfig.EnvCA}[max(ci, 0)]
			if tokenFile != "" {
				if a.flags.Token != "" {
					return cli.Usagef("--token and --token-file contradict each other")
				}
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return fmt.Errorf("login: token file: %w", err)
				}
				token, tokenFrom = strings.TrimSpace(string(b)), "--token-file "+tokenFile
			}
			if server == "" {
				return cli.Usagef("login needs --server (or %s)", clientconfig.EnvServer)
			}
			if token == "" {
				return cli.Usagef("login needs --token or --token-file (or %s)", clientconfig.EnvToken)
			}
			norm, err := clientconfig.NormalizeServer(server)
			if err != nil {
				return cli.Usagef("--server: %v", err)
			}
			var caPEM []byte
			if caValue != "" {
				if caPEM, err = clientconfig.LoadCA(caValue, ""); err != nil {
					return fmt.Errorf("login: CA %s: %w", caValue, err)
				}
			}
			if name == "" {
				u, _ := url.Parse(norm)
				name = u.Host
			}
			ctxDef := clientconfig.Context{Name: name, Server: norm, Token: token, CA: string(caPEM)}
			if err := ctxDef.Validate(); err != nil {
				return cli.UsageError{Err: err}
			}

			conn := clientconfig.Connection{Server: norm, Token: token, CAPEM: caPEM, TokenFrom: tokenFrom, CAFrom: caFrom}
			if caValue == "" {
				conn.CAFrom = ""
			}
			cl, err := newClient(conn, a.timeout)
			if err != nil {
				return err
			}
			defer cl.CloseIdleConnections()
			s := &session{conn: conn, client: cl}
			ctx, cancel := a.ctx(c)
			defer cancel()
			st, err := cl.ServerStatus(ctx)
			if err != nil {
				return fmt.Errorf("login: %w", s.explain(err))
			}

			path, err := a.contextsPath()
			if err != nil {
				return err
			}
			err = clientconfig.Update(path, func(f *clientconfig.File) error {
				if err := f.Set(ctxDef); err != nil {
					return err
				}
				if noSelect {
					return nil
				}
				return f.Use(name)
			})
			if err != nil {
				if errors.Is(err, clientconfig.ErrInvalid) {
					return fmt.Errorf("login: %w (fix or move %s)", err, path)
				}
				return err
			}
			w := c.OutOrStdout()
			fmt.Fprintf(w, "Logged in to %s (control plane %s, %d agents).\n", norm, st.Version, st.TotalAgents)
			if noSelect {
				fmt.Fprintf(w, "Saved context %q in %s.\n", name, path)
			} else {
				fmt.Fprintf(w, "Saved context %q in %s and made it current.\n", name, path)
			}
			return nil
		},
	}
	c.Flags().StringVar(&name, "name", "", "context name (default: the server's host:port)")
	c.Flags().StringVar(&tokenFile, "token-file", "", "read the API token from this file")
	c.Flags().BoolVar(&noSelect, "no-select", false, "save the context without making it current")
	return c
}

func firstOf(vals ...string) (string, int) {
	for i, v := range vals {
		if v != "" {
			return v, i
		}
	}
	return "", -1
}
