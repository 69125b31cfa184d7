package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/internal/buildinfo"
	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/clientconfig"
)

// agentFlagUsage is the help of --agent on the commands that talk to an
// agent's local API.
const agentFlagUsage = "agent API URL, http://host:port (env " + clientconfig.EnvAgent + "; default: the context's agent, else " + clientconfig.DefaultAgent + ")"

// agentConn is a resolved agent API and its client.
type agentConn struct {
	target clientconfig.AgentTarget
	client *agentapi.Client
	// timeout bounds each call (--timeout).
	timeout time.Duration
}

// agentConn resolves the agent API from --agent (flag), EDGEFLEET_AGENT,
// the selected context, else the default, and returns a client for it.
func (a *app) agentConn(c *cobra.Command, flag string) (*agentConn, error) {
	if flag != "" {
		if _, err := clientconfig.NormalizeAgent(flag); err != nil {
			return nil, cli.Usagef("--agent: %v", err)
		}
	}
	env := clientconfig.FromEnv(a.getenv)
	flags := clientconfig.Settings{Agent: flag, Context: a.flags.Context}
	// The contexts file only matters when neither the flag nor the
	// environment names the agent, or a context is named explicitly.
	var f *clientconfig.File
	if (flags.Agent == "" && env.Agent == "") || flags.Context != "" {
		var err error
		if f, _, err = a.loadContexts(c); err != nil {
			return nil, err
		}
	}
	target, err := clientconfig.ResolveAgent(f, flags, env)
	if err != nil {
		if errors.Is(err, clientconfig.ErrNoContext) && flags.Context != "" {
			return nil, cli.UsageError{Err: err}
		}
		return nil, err
	}
	client := agentapi.New(target.URL, nil)
	client.UserAgent = "edgectl/" + buildinfo.Get().Version
	return &agentConn{target: target, client: client, timeout: a.timeout}, nil
}

func (ac *agentConn) close() { ac.client.CloseIdleConnections() }

// explain turns a request that got no answer into advice: the address
// and where it came from (when not --agent or the default).
func (ac *agentConn) explain(err error) error {
	var ue *agentapi.UnreachableError
	if !errors.As(err, &ue) {
		return err
	}
	from := ""
	if f := ac.target.From; f != "default" && f != "--agent" {
		from = " (address from " + f + ")"
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("agent API at %s did not answer within %s (--timeout)%s", ac.target.URL, ac.timeout, from)
	}
	if errors.Is(err, context.Canceled) {
		return context.Canceled
	}
	return fmt.Errorf("cannot reach agent API at %s: %w (is edge-agent running? set --agent or %s)%s", ac.target.URL, ue.Err, clientconfig.EnvAgent, from)
}

// agentCall makes one call of the agent API, bounded by --timeout, and
// explains a missing answer.
func agentCall[T any](ctx context.Context, ac *agentConn, call func(context.Context, *agentapi.Client) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, ac.timeout)
	defer cancel()
	v, err := call(ctx, ac.client)
	return v, ac.explain(err)
}

// withAgent resolves the agent API from flag and makes one call of it.
func withAgent[T any](a *app, c *cobra.Command, flag string, call func(context.Context, *agentapi.Client) (T, error)) (T, error) {
	var zero T
	ac, err := a.agentConn(c, flag)
	if err != nil {
		return zero, err
	}
	defer ac.close()
	v, err := agentCall(c.Context(), ac, call)
	if err != nil {
		return zero, err
	}
	return v, nil
}
