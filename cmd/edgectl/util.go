package main

import (
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/edgefleet/edgefleet/internal/cli"
)

func contains(list []string, s string) bool { return slices.Contains(list, s) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// bytesIEC renders a byte count in binary units.
func bytesIEC(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// checkID refuses identifiers that would change the request path when put
// into a URL (the controlplane client inserts them as path segments).
func checkID(kind, id string) error {
	if id == "" || id == "." || id == ".." || strings.ContainsAny(id, "/?#%\\") ||
		strings.ContainsFunc(id, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return cli.Usagef("%s id %q: want an id as printed by the listings (no '/', '?', '#', '%%', spaces)", kind, id)
	}
	return nil
}
