package controlplane

import (
	"context"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// benchEnroll enrolls one agent with the server's admin token and returns
// its client.
func benchEnroll(b *testing.B, srv *Server) *cpapi.Client {
	b.Helper()
	ctx := context.Background()
	tok, err := srv.AdminToken()
	if err != nil {
		b.Fatal(err)
	}
	admin, err := cpapi.NewClient(cpapi.ClientConfig{URL: srv.URL(), Token: tok, CAPEM: srv.CAPEM()})
	if err != nil {
		b.Fatal(err)
	}
	toks, err := admin.CreateEnrollmentTokens(ctx, time.Hour, nil, 1)
	if err != nil {
		b.Fatal(err)
	}
	key, csr, err := cpapi.GenerateAgentKey("bench")
	if err != nil {
		b.Fatal(err)
	}
	resp, err := admin.Enroll(ctx, cpapi.EnrollRequest{Token: toks[0].Token, CSR: csr})
	if err != nil {
		b.Fatal(err)
	}
	cert, err := cpapi.AgentCertificate(resp.Certificate, key)
	if err != nil {
		b.Fatal(err)
	}
	c, err := cpapi.NewClient(cpapi.ClientConfig{URL: srv.URL(), CAPEM: srv.CAPEM(), Certificate: &cert})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

// BenchmarkHeartbeat measures one agent's heartbeat over its kept-alive
// mutual-TLS connection, client and server in this process.
func BenchmarkHeartbeat(b *testing.B) {
	srv, err := New(Config{DataDir: b.TempDir(), Listen: "127.0.0.1:0", Logger: discardLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	agent := benchEnroll(b, srv)
	hb := cpapi.Heartbeat{Version: "1", Health: &cpapi.Health{Status: "ok"}, Resources: &cpapi.Resources{CPUPercent: 5, MemUsedBytes: 1, MemTotalBytes: 2}}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := agent.Heartbeat(ctx, hb); err != nil {
			b.Fatal(err)
		}
	}
}
