package controlplane

import (
	"encoding/json"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn/coord"
)

type openAPIDocument struct {
	OpenAPI string                                 `json:"openapi"`
	Paths   map[string]map[string]openAPIOperation `json:"paths"`
	Comps   struct {
		Schemas map[string]struct {
			Properties map[string]json.RawMessage `json:"properties"`
		} `json:"schemas"`
	} `json:"components"`
}

type openAPIOperation struct {
	OperationID string                `json:"operationId"`
	Security    []map[string][]string `json:"security"`
	Responses   map[string]any        `json:"responses"`
}

func loadOpenAPI(t *testing.T, b []byte) openAPIDocument {
	t.Helper()
	var doc openAPIDocument
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	return doc
}

func TestOpenAPIMatchesRoutes(t *testing.T) {
	e := newTestEnv(t, nil)
	served, err := e.client("").OpenAPI(e.ctx())
	if err != nil {
		t.Fatal(err)
	}
	doc := loadOpenAPI(t, served)
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	var documented, registered []string
	ops := map[string]openAPIOperation{}
	for path, methods := range doc.Paths {
		for m, op := range methods {
			if m == "parameters" {
				continue
			}
			k := strings.ToUpper(m) + " " + path
			documented = append(documented, k)
			ops[k] = op
		}
	}
	ids := map[string]bool{}
	for _, rt := range e.srv.routes {
		k := rt.method + " " + rt.path
		registered = append(registered, k)
		op, ok := ops[k]
		if !ok {
			continue
		}
		if op.OperationID == "" || ids[op.OperationID] {
			t.Errorf("%s: missing or duplicate operationId %q", k, op.OperationID)
		}
		ids[op.OperationID] = true
		var want string
		switch rt.access {
		case accessBearer:
			want = "bearerAuth"
		case accessAgent:
			want = "mutualTLS"
		}
		var got string
		if len(op.Security) == 1 {
			for s := range op.Security[0] {
				got = s
			}
		}
		if got != want {
			t.Errorf("%s: documented security %q, served with %q", k, got, want)
		}
		if want != "" {
			if _, ok := op.Responses["401"]; !ok {
				t.Errorf("%s: 401 not documented", k)
			}
		}
		if rt.role == cpapi.RoleOperator || rt.role == cpapi.RoleAdmin {
			if _, ok := op.Responses["403"]; !ok {
				t.Errorf("%s: 403 not documented", k)
			}
		}
	}
	sort.Strings(documented)
	sort.Strings(registered)
	for _, k := range registered {
		if !slices.Contains(documented, k) {
			t.Errorf("route %s is not in openapi.json", k)
		}
	}
	for _, k := range documented {
		if !slices.Contains(registered, k) {
			t.Errorf("openapi.json documents %s, which is not served", k)
		}
	}
}

// checkSchemas checks that each named schema of doc has exactly the JSON
// fields of its Go type.
func checkSchemas(t *testing.T, doc openAPIDocument, types map[string]any) {
	t.Helper()
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

// jsonFields lists the JSON names of a struct's fields, flattening
// embedded structs as encoding/json does.
func jsonFields(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if f.Anonymous && name == "" {
			out = append(out, jsonFields(f.Type)...)
			continue
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func TestOpenAPISchemasMatchGoTypes(t *testing.T) {
	doc := loadOpenAPI(t, OpenAPI())
	types := map[string]any{
		"Error": cpapi.ErrorBody{}, "Health": cpapi.Health{}, "DBIncident": cpapi.DBIncident{}, "Resources": cpapi.Resources{}, "Heartbeat": cpapi.Heartbeat{},
		"HeartbeatResponse": cpapi.HeartbeatResponse{}, "Agent": cpapi.Agent{}, "AgentsResponse": cpapi.AgentsResponse{},
		"LabelsPatch": cpapi.LabelsPatch{}, "EnrollmentToken": cpapi.EnrollmentToken{},
		"CreateEnrollmentTokensRequest": cpapi.CreateEnrollmentTokensRequest{}, "EnrollmentTokensResponse": cpapi.EnrollmentTokensResponse{},
		"EnrollmentTokenList": cpapi.EnrollmentTokenList{}, "EnrollRequest": cpapi.EnrollRequest{}, "EnrollResponse": cpapi.EnrollResponse{},
		"Reading": cpapi.Reading{}, "TelemetryBatch": cpapi.TelemetryBatch{}, "IngestResult": cpapi.IngestResult{}, "Point": cpapi.Point{},
		"Bucket": cpapi.Bucket{}, "Series": cpapi.Series{}, "TelemetryResult": cpapi.TelemetryResult{}, "APIToken": cpapi.APIToken{},
		"CreateAPITokenRequest": cpapi.CreateAPITokenRequest{}, "APITokensResponse": cpapi.APITokensResponse{},
		"AuditRecord": cpapi.AuditRecord{}, "AuditResponse": cpapi.AuditResponse{}, "AuditVerification": cpapi.AuditVerification{},
		"ServerStatus": cpapi.ServerStatus{},
		"FLJobSpec":    coord.Spec{}, "FLJob": cpapi.FLJob{}, "FLPrivacy": cpapi.FLPrivacy{}, "FLRound": cpapi.FLRound{},
		"FLRoundState": cpapi.FLRoundState{}, "FLTask": cpapi.FLTask{}, "FLTaskDP": cpapi.FLTaskDP{},
	}
	checkSchemas(t, doc, types)
	// enrollWire is the server's view of EnrollRequest.
	if a, b := jsonFields(reflect.TypeOf(enrollWire{})), jsonFields(reflect.TypeOf(cpapi.EnrollRequest{})); !slices.Equal(a, b) {
		t.Errorf("enrollWire %v differs from EnrollRequest %v", a, b)
	}
	// Every $ref resolves.
	refs := regexp.MustCompile(`"\$ref":\s*"#/components/schemas/([A-Za-z]+)"`).FindAllSubmatch(openAPIDoc, -1)
	if len(refs) == 0 {
		t.Fatal("no $ref found")
	}
	for _, m := range refs {
		if _, ok := doc.Comps.Schemas[string(m[1])]; !ok {
			t.Errorf("$ref to undefined schema %s", m[1])
		}
	}
}
