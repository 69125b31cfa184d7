package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"
)

// Output formats.
const (
	FormatTable = "table"
	FormatJSON  = "json"
	FormatYAML  = "yaml"
)

// OutputFlags are the --json and -o/--output flags of a listing command.
type OutputFlags struct {
	JSON   bool
	Output string
}

// Register adds --json and -o/--output to c.
func (o *OutputFlags) Register(c *cobra.Command) {
	c.Flags().BoolVar(&o.JSON, "json", false, "print JSON (same as -o json)")
	c.Flags().StringVarP(&o.Output, "output", "o", FormatTable, "output format: table, json or yaml")
	c.RegisterFlagCompletionFunc("output", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{FormatTable, FormatJSON, FormatYAML}, cobra.ShellCompDirectiveNoFileComp
	})
}

// Format returns the chosen format; an unknown -o value, or --json beside
// another -o, is a UsageError.
func (o *OutputFlags) Format() (string, error) {
	f := strings.ToLower(o.Output)
	if f == "" {
		f = FormatTable
	}
	switch f {
	case FormatTable, FormatJSON, FormatYAML:
	default:
		return "", Usagef("-o %q: want table, json or yaml", o.Output)
	}
	if o.JSON {
		if f != FormatTable && f != FormatJSON {
			return "", Usagef("--json and -o %s contradict each other", f)
		}
		return FormatJSON, nil
	}
	return f, nil
}

// Print writes v in format: JSON, YAML, or the table drawn by table.
func Print(w io.Writer, format string, v any, table func(w io.Writer) error) error {
	switch format {
	case FormatJSON:
		return PrintJSON(w, v)
	case FormatYAML:
		return PrintYAML(w, v)
	}
	return table(w)
}

// PrintYAML writes v as YAML with the field names and order of its JSON
// form (the API's types carry JSON tags only).
func PrintYAML(w io.Writer, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("cli: encode: %w", err)
	}
	// JSON is YAML; decoding it into a node keeps key order, and clearing
	// the flow and quoting styles lets the encoder choose block style.
	var n yaml.Node
	if err := yaml.Unmarshal(data, &n); err != nil {
		return fmt.Errorf("cli: encode: %w", err)
	}
	blockStyle(&n)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return fmt.Errorf("cli: encode: %w", err)
	}
	if err := enc.Close(); err != nil {
		return fmt.Errorf("cli: encode: %w", err)
	}
	_, err = w.Write(buf.Bytes())
	return err
}

func blockStyle(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// NewTable returns a tabwriter for aligned columns; call Flush when done.
func NewTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}
