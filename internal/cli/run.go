package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
)

// Prepare sets root up for Run: errors are returned, not printed by
// cobra, flag and argument errors become UsageErrors.
func Prepare(root *cobra.Command) {
	root.SilenceErrors = true
	root.SilenceUsage = true
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return UsageError{fmt.Errorf("%w\nSee '%s --help'.", err, c.CommandPath())}
	})
	markArgs(root)
}

// Run executes root with args, its output going to stdout and stderr, and
// returns the process exit code (see ExitCode). An error is printed once
// to stderr, prefixed with the binary's name. Unlike Execute it does not
// exit, so commands can be driven in-process by tests.
func Run(ctx context.Context, root *cobra.Command, args []string, stdout, stderr io.Writer) int {
	Prepare(root)
	if args == nil {
		args = []string{}
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", root.Name(), err)
	}
	return ExitCode(err)
}

// usagePrefixes are the starts of cobra's own messages about how a command
// was called, which do not pass through the flag error function.
var usagePrefixes = []string{
	"unknown command",
	"required flag(s)",
	"if any flags in the group",
	"at least one of the flags in the group",
	"none of the others can be",
	"unknown flag",
	"unknown shorthand flag",
	"invalid argument",
	"accepts ",
	"requires at least",
	"requires at most",
	"flag needs an argument",
}

// ExitCode maps an error returned by a command to the process exit code:
// ExitOK for nil, ExitUsage for a UsageError or cobra's usage messages,
// ExitError for everything else (including errors answered by a server).
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	var ue UsageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	msg := err.Error()
	for _, p := range usagePrefixes {
		if strings.HasPrefix(msg, p) {
			return ExitUsage
		}
	}
	return ExitError
}

// GroupRunE is the RunE of a command that only groups subcommands: with no
// arguments it prints help, with any it reports an unknown subcommand as a
// usage error (cobra would otherwise print help and exit 0).
func GroupRunE(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return c.Help()
	}
	var names []string
	for _, s := range c.Commands() {
		if s.IsAvailableCommand() {
			names = append(names, s.Name())
		}
	}
	return Usagef("unknown command %q for %q (available: %s)", args[0], c.CommandPath(), strings.Join(names, ", "))
}
