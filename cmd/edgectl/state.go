package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/internal/clientconfig"
)

// maxStateValue bounds a value read from stdin (the agent's default
// api.max_body_bytes is 1 MiB; the agent answers 413 above its own).
const maxStateValue = 16 << 20

// stateCmd holds the flag the state commands share.
type stateCmd struct {
	a *app
	// agent is --agent.
	agent string
}

func (a *app) newStateCmd() *cobra.Command {
	s := &stateCmd{a: a}
	c := &cobra.Command{
		Use:   "state",
		Short: "Read and write the replicated state (CRDT collections) through an agent's local API",
		Long: `state reads and writes the state the agents replicate among themselves, through
one agent's local HTTP API. A collection's type comes from the agent's
state.collections (lww unless configured):

  lww      last-writer-wins map: put KEY VALUE, get, delete, list
  mvreg    multi-value register: put KEY VALUE; concurrent writes are kept as
           siblings, which get and list show as separate values; delete clears
  orset    observed-remove set: put ELEMENT adds it, delete ELEMENT removes it
  counter  PN-counter: add KEY N (negative N after --: add hits k -- -2)

VALUE is a JSON document ('"text"' for a string), or - to read it from stdin.
The agent API is taken from --agent, else EDGEFLEET_AGENT, else the 'agent'
field of the selected context, else ` + clientconfig.DefaultAgent + `.`,
		Example: `  edgectl state put config site '{"name":"berlin","floors":3}'
  edgectl state get config site
  edgectl state list config --json
  edgectl state add hits total 5
  edgectl state put tags blue && edgectl state delete tags blue`,
		RunE: cli.GroupRunE,
	}
	c.PersistentFlags().StringVar(&s.agent, "agent", "", agentFlagUsage)
	c.AddCommand(s.newListCmd(), s.newGetCmd(), s.newPutCmd(), s.newDeleteCmd(), s.newAddCmd())
	return c
}

// readValue is the VALUE argument, or stdin for "-": it must be one JSON
// document.
func readValue(c *cobra.Command, arg string) ([]byte, error) {
	value := []byte(arg)
	from := "VALUE"
	if arg == "-" {
		b, err := io.ReadAll(io.LimitReader(c.InOrStdin(), maxStateValue+1))
		if err != nil {
			return nil, fmt.Errorf("read the value from stdin: %w", err)
		}
		if len(b) > maxStateValue {
			return nil, cli.Usagef("the value on stdin is larger than %d bytes", maxStateValue)
		}
		value, from = bytes.TrimSpace(b), "the value on stdin"
	}
	if len(value) == 0 {
		return nil, cli.Usagef("%s is empty: want a JSON document", from)
	}
	if !json.Valid(value) {
		var v any
		err := json.Unmarshal(value, &v)
		return nil, cli.Usagef("%s is not a JSON document (%v); quote text as JSON, e.g. '\"on\"'", from, err)
	}
	return value, nil
}

// showValue renders a value as the agent returns it for a terminal: JSON
// as is, base64-encoded binary values marked as such; cut at max runes (0:
// no limit).
func showValue(raw json.RawMessage, encoding string, max int) string {
	s := string(raw)
	if encoding == "base64" {
		var b64 string
		if json.Unmarshal(raw, &b64) == nil {
			if b, err := base64.StdEncoding.DecodeString(b64); err == nil {
				s = fmt.Sprintf("(binary, %d bytes) base64:%s", len(b), b64)
			}
		}
	}
	return cell(s, max)
}

// showSibling renders one value of a multi-value register: binary values
// come as {"value": base64, "encoding": "base64"}.
func showSibling(raw json.RawMessage, max int) string {
	var bin struct {
		Value    string `json:"value"`
		Encoding string `json:"encoding"`
	}
	if bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) && json.Unmarshal(raw, &bin) == nil && bin.Encoding == "base64" {
		if q, err := json.Marshal(bin.Value); err == nil {
			return showValue(q, bin.Encoding, max)
		}
	}
	return showValue(raw, "", max)
}

// statePath names a key for messages.
func statePath(coll, key string) string {
	return cell(coll, 0) + "/" + cell(key, 0)
}

// checkStateName refuses names the agent would refuse, before asking it.
func checkStateName(what, s string) error {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return cli.Usagef("%s %q: want a non-empty name without control characters", what, s)
	}
	return nil
}

// keyArgs checks the output flags and the COLLECTION KEY arguments of a
// command on one key.
func keyArgs(out *cli.OutputFlags, args []string) (format, coll, key string, err error) {
	if format, err = out.Format(); err != nil {
		return "", "", "", err
	}
	coll, key = args[0], args[1]
	if err := checkStateName("collection", coll); err != nil {
		return "", "", "", err
	}
	if err := checkStateName("key", key); err != nil {
		return "", "", "", err
	}
	return format, coll, key, nil
}
