package controlplane

import (
	"bytes"
	"compress/gzip"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

func gzipBytes(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func TestBadInputTable(t *testing.T) {
	e := newTestEnv(t, func(c *Config) { c.MaxBodyBytes = 64 << 10 })
	a := e.enroll("bad", nil)
	now := e.clock.Now()
	jsonH := map[string]string{"Content-Type": "application/json"}
	gzH := map[string]string{"Content-Type": "application/json", "Content-Encoding": "gzip"}
	reading := func(ts string) string {
		return fmt.Sprintf(`{"batch_seq":5,"epoch":"e1","readings":[{"device":"d","metric":"m","ts":%q,"value":1}]}`, ts)
	}
	huge := []byte(`{"name":"` + strings.Repeat("x", 70<<10) + `"}`)
	cases := []struct {
		name        string
		method      string
		path        string
		agent       bool
		body        []byte
		header      map[string]string
		status      int
		wantMessage string
	}{
		{"malformed JSON", "POST", "/v1/tokens", false, []byte(`{"name":"x",`), jsonH, 400, "unexpected end"},
		{"syntax error", "POST", "/v1/tokens", false, []byte(`{"name" "x"}`), jsonH, 400, "malformed JSON at byte"},
		{"unknown field", "POST", "/v1/tokens", false, []byte(`{"name":"x","role":"viewer","admin":true}`), jsonH, 400, `unknown field "admin"`},
		{"wrong type", "POST", "/v1/tokens", false, []byte(`{"name":5,"role":"viewer"}`), jsonH, 400, `field "name"`},
		{"trailing data", "POST", "/v1/tokens", false, []byte(`{"name":"x","role":"viewer"} {}`), jsonH, 400, "after the JSON object"},
		{"empty body", "POST", "/v1/tokens", false, nil, jsonH, 400, "empty body"},
		{"bad role", "POST", "/v1/tokens", false, []byte(`{"name":"x","role":"root"}`), jsonH, 400, "role"},
		{"bad ttl", "POST", "/v1/tokens", false, []byte(`{"name":"x","role":"viewer","ttl":"forever"}`), jsonH, 400, "ttl"},
		{"oversized body", "POST", "/v1/tokens", false, huge, jsonH, 413, "limit"},
		{"wrong content type", "POST", "/v1/tokens", false, []byte(`{}`), map[string]string{"Content-Type": "text/plain"}, 415, "Content-Type"},
		{"enrollment ttl too long", "POST", "/v1/enrollment-tokens", false, []byte(`{"ttl":"9000h"}`), jsonH, 400, "ttl"},
		{"enrollment negative ttl", "POST", "/v1/enrollment-tokens", false, []byte(`{"ttl":"-1h"}`), jsonH, 400, "ttl"},
		{"enrollment count", "POST", "/v1/enrollment-tokens", false, []byte(`{"count":5000}`), jsonH, 400, "count"},
		{"enrollment label key", "POST", "/v1/enrollment-tokens", false, []byte(`{"labels":{"a b":"c"}}`), jsonH, 400, "label key"},
		{"heartbeat unknown field", "POST", "/v1/agents/self/heartbeat", true, []byte(`{"cpu":1}`), jsonH, 400, `unknown field "cpu"`},
		{"heartbeat bad health", "POST", "/v1/agents/self/heartbeat", true, []byte(`{"health":{"status":"great"}}`), jsonH, 400, "health.status"},
		{"heartbeat negative cpu", "POST", "/v1/agents/self/heartbeat", true, []byte(`{"resources":{"cpu_percent":-1}}`), jsonH, 400, "cpu_percent"},
		{"heartbeat negative intensity", "POST", "/v1/agents/self/heartbeat", true, []byte(`{"resources":{"cpu_percent":1,"energy":{"zone":"DE","intensity":-3}}}`), jsonH, 400, "resources.energy.intensity"},
		{"heartbeat battery level", "POST", "/v1/agents/self/heartbeat", true, []byte(`{"resources":{"cpu_percent":1,"energy":{"battery":{"present":true,"level":1.5,"charging":false}}}}`), jsonH, 400, "resources.energy.battery.level"},
		{"heartbeat energy unknown field", "POST", "/v1/agents/self/heartbeat", true, []byte(`{"resources":{"energy":{"soc":1}}}`), jsonH, 400, `unknown field "soc"`},
		{"telemetry malformed", "POST", "/v1/agents/self/telemetry", true, []byte(`{"batch_seq":`), jsonH, 400, "unexpected end"},
		{"telemetry unknown field", "POST", "/v1/agents/self/telemetry", true, gzipBytes([]byte(`{"batch_seq":1,"epoch":"e1","readings":[],"x":1}`)), gzH, 400, `unknown field "x"`},
		{"telemetry not gzip", "POST", "/v1/agents/self/telemetry", true, []byte(`{}`), gzH, 400, "gzip"},
		{"telemetry bad encoding", "POST", "/v1/agents/self/telemetry", true, []byte(`{}`), map[string]string{"Content-Encoding": "br"}, 415, "Content-Encoding"},
		{"telemetry future ts", "POST", "/v1/agents/self/telemetry", true, []byte(reading(now.Add(2 * time.Hour).Format(time.RFC3339))), jsonH, 400, "readings[0].ts"},
		{"telemetry ancient ts", "POST", "/v1/agents/self/telemetry", true, []byte(reading("1970-01-01T00:00:00Z")), jsonH, 400, "before 2000"},
		{"telemetry year 10000", "POST", "/v1/agents/self/telemetry", true, []byte(reading("10000-01-01T00:00:00Z")), jsonH, 400, "time"},
		{"telemetry oversized", "POST", "/v1/agents/self/telemetry", true, bytes.Repeat([]byte(" "), 65<<10), jsonH, 413, "limit"},
		{"telemetry bomb", "POST", "/v1/agents/self/telemetry", true, gzipBytes(append([]byte(`{"batch_seq":1,"epoch":"e1","readings":[{"device":"`), bytes.Repeat([]byte("x"), 17<<20)...)), gzH, 413, "decompressed"},
		{"query from after to", "GET", "/v1/telemetry?from=2024-05-02T00:00:00Z&to=2024-05-01T00:00:00Z", false, nil, nil, 400, "before to"},
		{"query bad from", "GET", "/v1/telemetry?from=yesterday", false, nil, nil, 400, "from"},
		{"query from 1900", "GET", "/v1/telemetry?from=1900-01-01T00:00:00Z", false, nil, nil, 400, "out of range"},
		{"query to 2500", "GET", "/v1/telemetry?to=2500-01-01T00:00:00Z", false, nil, nil, 400, "out of range"},
		{"query unix out of range", "GET", "/v1/telemetry?from=-5", false, nil, nil, 400, "from"},
		{"query too many buckets", "GET", "/v1/telemetry?from=2020-01-01T00:00:00Z&to=2024-01-01T00:00:00Z&bucket=1s", false, nil, nil, 400, "buckets"},
		{"query bad bucket", "GET", "/v1/telemetry?bucket=often", false, nil, nil, 400, "bucket"},
		{"query unknown param", "GET", "/v1/telemetry?sensor=x", false, nil, nil, 400, `"sensor"`},
		{"query bad limit", "GET", "/v1/telemetry?limit=0", false, nil, nil, 400, "limit"},
		{"agents bad state", "GET", "/v1/agents?state=sleepy", false, nil, nil, 400, "state"},
		{"audit bad after", "GET", "/v1/audit?after=-1", false, nil, nil, 400, "after"},
		{"audit bad limit", "GET", "/v1/audit?limit=100000", false, nil, nil, 400, "limit"},
		{"labels malformed", "PATCH", "/v1/agents/" + a.id + "/labels", false, []byte(`{"set":{"a":1}}`), jsonH, 400, "set"},
		{"enroll malformed", "POST", "/v1/enroll", false, []byte(`{"token":`), jsonH, 400, "unexpected end"},
		{"enroll unknown field", "POST", "/v1/enroll", false, []byte(`{"token":"x","role":"admin"}`), jsonH, 400, `unknown field "role"`},
		{"enroll bad base64", "POST", "/v1/enroll", false, nil, jsonH, 400, "xwing_public: not standard base64"},
	}
	// The base64 case needs a real token so that validation reaches the key.
	toks, err := e.admin.CreateEnrollmentTokens(e.ctx(), time.Hour, nil, 1)
	if err != nil {
		t.Fatal(err)
	}
	_, csr, _ := cpapi.GenerateAgentKey("b64")
	b64body, _ := json.Marshal(map[string]string{"token": toks[0].Token, "csr": csr, "xwing_public": "!!!"})
	cases[len(cases)-1].body = b64body

	auditBefore, _ := e.admin.ListAudit(e.ctx(), 0, 1000)
	agentsBefore, _ := e.admin.ListAgents(e.ctx(), cpapi.AgentFilter{})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var cert *tls.Certificate
			token := e.adminToken
			if c.agent {
				cert, token = &a.cert, ""
			}
			status, body := e.rawRequest(c.method, c.path, token, c.body, c.header, cert)
			if status != c.status {
				t.Fatalf("status %d, want %d: %s", status, c.status, body)
			}
			var eb cpapi.ErrorBody
			if err := json.Unmarshal([]byte(body), &eb); err != nil || eb.Error == "" {
				t.Fatalf("body is not {\"error\": ...}: %s", body)
			}
			if !strings.Contains(eb.Error, c.wantMessage) {
				t.Errorf("message %q does not contain %q", eb.Error, c.wantMessage)
			}
		})
	}
	// Nothing was half-written: no tokens, agents, labels or telemetry.
	toksAfter, _ := e.admin.ListAPITokens(e.ctx())
	if len(toksAfter) != 1 {
		t.Errorf("%d API tokens after bad input, want 1", len(toksAfter))
	}
	agentsAfter, _ := e.admin.ListAgents(e.ctx(), cpapi.AgentFilter{})
	if len(agentsAfter) != len(agentsBefore) || len(agentsAfter[0].Labels) != 0 {
		t.Errorf("agents changed: %+v", agentsAfter)
	}
	enr, _ := e.admin.ListEnrollmentTokens(e.ctx())
	if len(enr) != 2 {
		t.Errorf("%d enrollment tokens, want 2", len(enr))
	}
	res, err := e.admin.QueryTelemetry(e.ctx(), cpapi.TelemetryQuery{From: now.Add(-24 * time.Hour), To: now.Add(24 * time.Hour)})
	if err != nil || len(res.Series) != 0 {
		t.Errorf("telemetry after bad input: %+v %v", res, err)
	}
	// Refused changes are audited as errors; the chain still verifies.
	auditAfter, _ := e.admin.ListAudit(e.ctx(), 0, 1000)
	for _, r := range auditAfter.Records[len(auditBefore.Records):] {
		if r.Result == "ok" && r.Action != "enrollment-token.create" {
			t.Errorf("bad input audited as ok: %+v", r)
		}
	}
	if v, err := e.admin.VerifyAudit(e.ctx()); err != nil || !v.OK {
		t.Errorf("audit verify: %+v %v", v, err)
	}
}
