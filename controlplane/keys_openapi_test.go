package controlplane

import (
	"encoding/json"
	"reflect"
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
	for name, v := range types {
		s, ok := doc.Comps.Schemas[name]
		if !ok {
			t.Errorf("schema %s missing", name)
			continue
		}
		var props []string
		for p := range s.Properties {
			props = append(props, p)
		}
		sort.Strings(props)
		if want := jsonFields(reflect.TypeOf(v)); !slices.Equal(props, want) {
			t.Errorf("schema %s has properties %v, Go type has %v", name, props, want)
		}
	}
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
