package controlplane

import (
	"encoding/json"
	"slices"
	"sort"
	"testing"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// TestOpenAPIKeySchemasMatchGoTypes extends TestOpenAPISchemasMatchGoTypes
// to the key service's wire types.
func TestOpenAPIKeySchemasMatchGoTypes(t *testing.T) {
	doc := loadOpenAPI(t, OpenAPI())
	types := map[string]any{
		"KeyServiceStatus": cpapi.KeyServiceStatus{}, "UnsealRequest": cpapi.UnsealRequest{}, "KeyPolicy": cpapi.KeyPolicy{},
		"KeyVersion": cpapi.KeyVersion{}, "Key": cpapi.Key{}, "KeysResponse": cpapi.KeysResponse{}, "CreateKeyRequest": cpapi.CreateKeyRequest{},
		"RewrapRequest": cpapi.RewrapRequest{}, "RewrapResponse": cpapi.RewrapResponse{}, "VerifyingKeyResponse": cpapi.VerifyingKeyResponse{},
		"AgentKeysResponse": cpapi.AgentKeysResponse{}, "AgentKeysRelayResponse": cpapi.AgentKeysRelayResponse{}, "AgentKeysRelayEntry": cpapi.AgentKeysRelayEntry{},
		"RotateKEKResponse": cpapi.RotateKEKResponse{}, "RekeyRootRequest": cpapi.RekeyRootRequest{}, "RekeyRootResponse": cpapi.RekeyRootResponse{},
	}
	checkSchemas(t, doc, types)
}

// TestOpenAPIAgentKeysParameters keeps the documented query parameters of
// GET /v1/agent/keys in step with the ones the handler accepts.
func TestOpenAPIAgentKeysParameters(t *testing.T) {
	var doc struct {
		Paths map[string]map[string]struct {
			Parameters []struct {
				Name string `json:"name"`
				In   string `json:"in"`
			} `json:"parameters"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(OpenAPI(), &doc); err != nil {
		t.Fatal(err)
	}
	var documented []string
	for _, p := range doc.Paths["/v1/agent/keys"]["get"].Parameters {
		if p.In == "query" {
			documented = append(documented, p.Name)
		}
	}
	sort.Strings(documented)
	accepted := slices.Clone(agentKeysParams)
	sort.Strings(accepted)
	if !slices.Equal(documented, accepted) {
		t.Fatalf("openapi.json documents %v for GET /v1/agent/keys, the handler accepts %v", documented, accepted)
	}
}
