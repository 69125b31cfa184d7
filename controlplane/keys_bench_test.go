package controlplane

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// benchKeyServer is a dev-unsealed server with five all-agents keys of four
// versions each and one registered agent.
func benchKeyServer(b *testing.B) (*Server, *call) {
	b.Helper()
	s, err := New(Config{DataDir: b.TempDir(), Listen: "127.0.0.1:0", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		SQLite: SQLiteOptions{Synchronous: "NORMAL"}, Keys: KeyConfig{DevUnseal: true}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	ctx := context.Background()
	svc := s.KeyService()
	for i := range 5 {
		name := fmt.Sprintf("k%d", i)
		if _, err := svc.CreateKey(ctx, name, dkms.PurposeData, dkms.Policy{AllAgents: true}); err != nil {
			b.Fatal(err)
		}
		for range 3 {
			if _, err := svc.Rotate(ctx, name); err != nil {
				b.Fatal(err)
			}
		}
	}
	sk, err := pqcrypto.GenerateXWingKey(nil)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := svc.RegisterAgent(ctx, "ag_bench", sk.Public(), nil); err != nil {
		b.Fatal(err)
	}
	return s, &call{agentID: "ag_bench", actor: "agent:ag_bench"}
}

func fetchKeys(b *testing.B, s *Server, c *call, after string) cpapi.AgentKeysResponse {
	r := httptest.NewRequest("GET", "/v1/agent/keys?after="+url.QueryEscape(after), nil)
	w := httptest.NewRecorder()
	if err := s.handleAgentKeys(w, r, c); err != nil {
		b.Fatal(err)
	}
	var resp cpapi.AgentKeysResponse
	if err := json.Unmarshal(w.Body.Bytes(), &resp); err != nil {
		b.Fatal(err)
	}
	return resp
}

// BenchmarkAgentKeysUnchanged is the server's work for an agent's key poll
// when nothing changed, the common case (TLS and HTTP not included).
func BenchmarkAgentKeysUnchanged(b *testing.B) {
	s, c := benchKeyServer(b)
	cursor := fetchKeys(b, s, c, "").Cursor
	b.ResetTimer()
	for range b.N {
		if r := fetchKeys(b, s, c, cursor); len(r.Messages) != 0 {
			b.Fatalf("%d messages", len(r.Messages))
		}
	}
}

// BenchmarkAgentKeysFull is a full catch-up of 20 key versions: one
// X-Wing seal and one ML-DSA-65 signature per version.
func BenchmarkAgentKeysFull(b *testing.B) {
	s, c := benchKeyServer(b)
	b.ResetTimer()
	for range b.N {
		if r := fetchKeys(b, s, c, ""); len(r.Messages) != 20 {
			b.Fatalf("%d messages", len(r.Messages))
		}
	}
}
