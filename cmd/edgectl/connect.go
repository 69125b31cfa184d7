package main

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/buildinfo"
	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/clientconfig"
)

// app holds what every command shares: the global flags and the process
// environment, injected so that tests can drive the commands in-process.
type app struct {
	// flags are --server, --token, --ca and --context.
	flags clientconfig.Settings
	// configPath is --config.
	configPath string
	// timeout bounds each API call (--timeout).
	timeout time.Duration

	getenv func(string) string
	now    func() time.Time
	// selfExec returns the program and environment that run edgectl
	// again (bench starts the server as a child process with it).
	selfExec func() (exe string, env []string)
}

func newApp() *app {
	return &app{getenv: os.Getenv, now: time.Now, selfExec: func() (string, []string) {
		exe, err := os.Executable()
		if err != nil {
			return "", nil
		}
		return exe, os.Environ()
	}}
}

// registerGlobalFlags adds the connection flags to root.
func (a *app) registerGlobalFlags(root *cobra.Command) {
	pf := root.PersistentFlags()
	pf.StringVar(&a.flags.Server, "server", "", "control plane URL, https://host:port (env "+clientconfig.EnvServer+")")
	pf.StringVar(&a.flags.Token, "token", "", "API token (env "+clientconfig.EnvToken+")")
	pf.StringVar(&a.flags.CA, "ca", "", "path of the control plane's CA certificate, ca.pem (env "+clientconfig.EnvCA+", a path or PEM text)")
	pf.StringVar(&a.flags.Context, "context", "", "context of the contexts file to use (env "+clientconfig.EnvContext+"; default: its current-context)")
	pf.StringVar(&a.configPath, "config", "", "contexts file (env "+clientconfig.EnvConfig+"; default $XDG_CONFIG_HOME/edgefleet/config.yaml or ~/.config/edgefleet/config.yaml)")
	pf.DurationVar(&a.timeout, "timeout", 30*time.Second, "bound on each API call")
	root.RegisterFlagCompletionFunc("context", a.completeContexts)
}

// contextsPath is where the contexts file is.
func (a *app) contextsPath() (string, error) {
	if a.configPath != "" {
		return a.configPath, nil
	}
	return clientconfig.PathFrom(a.getenv)
}

// loadContexts reads the contexts file, warning on stderr when it is
// readable by others.
func (a *app) loadContexts(c *cobra.Command) (*clientconfig.File, string, error) {
	path, err := a.contextsPath()
	if err != nil {
		return nil, "", err
	}
	if err := clientconfig.CheckMode(path); err != nil {
		fmt.Fprintf(c.ErrOrStderr(), "%s: warning: %v\n", c.Root().Name(), err)
	}
	f, err := clientconfig.Load(path)
	if err != nil {
		return nil, path, err
	}
	return f, path, nil
}

// resolve works out server, token and CA from flags, environment and the
// contexts file.
func (a *app) resolve(c *cobra.Command) (clientconfig.Connection, error) {
	f, _, err := a.loadContexts(c)
	if err != nil {
		return clientconfig.Connection{}, err
	}
	conn, err := clientconfig.Resolve(f, a.flags, clientconfig.FromEnv(a.getenv))
	if err != nil {
		if errors.Is(err, clientconfig.ErrNoContext) && a.flags.Context != "" {
			return conn, cli.UsageError{Err: err}
		}
		return conn, err
	}
	return conn, nil
}

// session is a resolved connection and its client.
type session struct {
	conn   clientconfig.Connection
	client *cpapi.Client
}

// connect resolves the connection and builds a client.
func (a *app) connect(c *cobra.Command) (*session, error) {
	conn, err := a.resolve(c)
	if err != nil {
		return nil, err
	}
	cl, err := newClient(conn, a.timeout)
	if err != nil {
		return nil, err
	}
	return &session{conn: conn, client: cl}, nil
}

// fetch connects, makes one call with a context bounded by --timeout, and
// explains an error the server answered. Commands that make a single call
// use it; those that make several hold a session from connect.
func fetch[T any](a *app, c *cobra.Command, call func(context.Context, *cpapi.Client) (T, error)) (T, error) {
	var zero T
	s, err := a.connect(c)
	if err != nil {
		return zero, err
	}
	defer s.client.CloseIdleConnections()
	ctx, cancel := a.ctx(c)
	defer cancel()
	v, err := call(ctx, s.client)
	if err != nil {
		return zero, s.explain(err)
	}
	return v, nil
}

func newClient(conn clientconfig.Connection, timeout time.Duration) (*cpapi.Client, error) {
	return cpapi.NewClient(cpapi.ClientConfig{
		URL:       conn.Server,
		Token:     conn.Token,
		CAPEM:     conn.CAPEM,
		Timeout:   timeout,
		UserAgent: "edgectl/" + buildinfo.Get().Version,
	})
}

// explain adds what the operator can do about a failed API call.
func (s *session) explain(err error) error {
	if err == nil {
		return nil
	}
	tokenFrom := s.conn.TokenFrom
	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
	)
	switch {
	case errors.Is(err, context.Canceled):
		return err
	case errors.Is(err, cpapi.ErrUnauthorized):
		return fmt.Errorf("%w (the API token from %s was refused: it is unknown, expired or revoked; pass --token or run 'edgectl login')", err, tokenFrom)
	case errors.Is(err, cpapi.ErrForbidden):
		return fmt.Errorf("%w (the API token from %s lacks the role for this call)", err, tokenFrom)
	case errors.As(err, &unknownCA):
		src := s.conn.CAFrom
		if src == "" {
			src = "the system roots"
		}
		return fmt.Errorf("%w (the server's certificate is not signed by the CA from %s; pass --ca with the control plane's ca.pem)", err, src)
	case errors.As(err, &hostname):
		return fmt.Errorf("%w (start the control plane with --host naming the address you use)", err)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w (is the control plane running at %s?)", err, s.conn.Server)
	}
	return err
}

// ctx returns the command's context bounded by the call timeout.
func (a *app) ctx(c *cobra.Command) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.Context(), a.timeout)
}
