package membership

import (
	"encoding/json"
	"fmt"

	"github.com/hashicorp/memberlist"
)

// MaxMetaBytes is memberlist's limit on node metadata.
const MaxMetaBytes = memberlist.MetaMaxSize

// NodeMeta is the metadata an agent advertises to its peers.
type NodeMeta struct {
	ID      string            `json:"id"`
	Version string            `json:"version"`
	Labels  map[string]string `json:"labels,omitempty"`
}

// EncodeMeta encodes m for memberlist.
func EncodeMeta(m NodeMeta) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("membership: encoding node metadata: %w", err)
	}
	return b, nil
}

// DecodeMeta decodes a peer's metadata (outside data).
func DecodeMeta(b []byte) (NodeMeta, error) {
	var m NodeMeta
	if len(b) == 0 {
		return m, nil
	}
	if len(b) > MaxMetaBytes {
		return NodeMeta{}, fmt.Errorf("membership: node metadata is %d bytes, limit %d", len(b), MaxMetaBytes)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return NodeMeta{}, fmt.Errorf("membership: node metadata: %w", err)
	}
	return m, nil
}
