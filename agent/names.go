package agent

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/internal/buildinfo"
)

// Version is the agent version advertised in node metadata and in
// heartbeats: the binary's build version (internal/buildinfo; release
// builds set it with -ldflags, see the Makefile).
var Version = buildinfo.Get().Version

// Name limits for collections and keys accepted by the API: the store's.
const (
	maxCollectionLen = crdt.MaxCollectionLen
	maxKeyLen        = crdt.MaxKeyLen
)

// validateName checks a collection or key name given by a user: non-empty,
// bounded, valid UTF-8, no control characters; collection names are further
// restricted to letters, digits, '.', '_' and '-'.
func validateName(what, s string) error {
	limit := maxKeyLen
	if what == "collection" {
		limit = maxCollectionLen
	}
	if s == "" {
		return fmt.Errorf("%s name is empty", what)
	}
	if len(s) > limit {
		return fmt.Errorf("%s name is %d bytes, at most %d", what, len(s), limit)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s name is not valid UTF-8", what)
	}
	for _, r := range s {
		if r < ' ' || r == 0x7f {
			return fmt.Errorf("%s name %q contains a control character", what, s)
		}
		if what == "collection" && !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-", r)) {
			return fmt.Errorf("collection name %q may only contain letters, digits, '.', '_' and '-'", s)
		}
	}
	return nil
}
