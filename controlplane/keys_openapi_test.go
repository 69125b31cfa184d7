package controlplane

import (
	"reflect"
	"slices"
	"sort"
	"testing"
)

// TestOpenAPIKeySchemasMatchGoTypes extends TestOpenAPISchemasMatchGoTypes
// to the key service's wire types.
func TestOpenAPIKeySchemasMatchGoTypes(t *testing.T) {
	doc := loadOpenAPI(t, OpenAPI())
	types := map[string]any{
		"KeyServiceStatus": KeyServiceStatus{}, "UnsealRequest": UnsealRequest{}, "KeyPolicy": KeyPolicy{},
		"KeyVersion": KeyVersion{}, "Key": Key{}, "KeysResponse": KeysResponse{}, "CreateKeyRequest": CreateKeyRequest{},
		"RewrapRequest": RewrapRequest{}, "RewrapResponse": RewrapResponse{}, "VerifyingKeyResponse": VerifyingKeyResponse{},
		"AgentKeysResponse": AgentKeysResponse{}, "AgentKeysRelayResponse": AgentKeysRelayResponse{}, "AgentKeysRelayEntry": AgentKeysRelayEntry{},
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
