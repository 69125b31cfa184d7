package controlplane

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// TestFLTaskGzip: an agent that accepts gzip gets its round task
// compressed (the same task as in clear, less than half the bytes, and the
// job's bytes down count what was sent); one that does not, or refuses it
// with q=0, gets it in clear; the cpapi client, which asks for gzip, reads
// it unchanged.
func TestFLTaskGzip(t *testing.T) {
	e := newKeyEnv(t, func(c *Config) { c.Keys.DevUnseal = true; c.FL.Tick = time.Hour })
	ctx := e.ctx()
	agents := flTestAgents(t, e, "flgz", 3, 90)
	sp := flTestSpec("fl-gz", 200)
	for i := range sp.Schema.Features {
		sp.Schema.Features[i].Std = 1
	}
	job, err := e.admin.CreateFLJob(ctx, sp)
	if err != nil {
		t.Fatal(err)
	}
	e.srv.FLTick()
	bytesDown := func() int64 {
		e.srv.fl.mu.Lock()
		defer e.srv.fl.mu.Unlock()
		return e.srv.fl.jobs[job.ID].bytesDown
	}
	a := agents[0]
	tconf, err := cpapi.ClientTLSConfig([]byte(a.resp.CABundle), &a.cert)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tconf, DisableCompression: true}, Timeout: 20 * time.Second}
	t.Cleanup(hc.CloseIdleConnections)
	get := func(acceptEncoding string) (cpapi.FLTaskResponse, int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, "GET", e.srv.URL()+"/v1/agent/fl/task", nil)
		if err != nil {
			t.Fatal(err)
		}
		if acceptEncoding != "" {
			req.Header.Set("Accept-Encoding", acceptEncoding)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s %v", resp.StatusCode, raw, err)
		}
		body := raw
		enc := resp.Header.Get("Content-Encoding")
		if enc == "gzip" {
			zr, err := gzip.NewReader(bytes.NewReader(raw))
			if err != nil {
				t.Fatal(err)
			}
			if body, err = io.ReadAll(zr); err != nil {
				t.Fatal(err)
			}
		}
		var tr cpapi.FLTaskResponse
		if err := json.Unmarshal(body, &tr); err != nil || tr.Task == nil {
			t.Fatalf("task answer %q: %v", body, err)
		}
		return tr, len(raw), enc
	}
	clear, clearLen, enc := get("")
	if enc != "" {
		t.Fatalf("Content-Encoding %q without Accept-Encoding", enc)
	}
	if _, _, enc := get("gzip;q=0, identity"); enc != "" {
		t.Fatalf("Content-Encoding %q though gzip was refused", enc)
	}
	before := bytesDown()
	zipped, zLen, enc := get("br, gzip")
	if enc != "gzip" {
		t.Fatalf("Content-Encoding %q, want gzip", enc)
	}
	if zLen*2 > clearLen {
		t.Fatalf("compressed task %d bytes, in clear %d", zLen, clearLen)
	}
	if got := bytesDown() - before; got != int64(zLen) {
		t.Fatalf("bytes down grew by %d, the answer was %d bytes", got, zLen)
	}
	cb, _ := json.Marshal(clear)
	zb, _ := json.Marshal(zipped)
	if string(cb) != string(zb) {
		t.Fatal("the compressed task differs from the one in clear")
	}
	viaClient, err := a.client.WatchFLTask(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if vb, _ := json.Marshal(viaClient); string(vb) != string(cb) {
		t.Fatal("the cpapi client read another task")
	}
	t.Logf("task answer: %d bytes in clear, %d gzip", clearLen, zLen)
}

func TestAcceptsGzip(t *testing.T) {
	for v, want := range map[string]bool{
		"": false, "gzip": true, "GZIP": true, "br, gzip": true, "gzip;q=0": false, "gzip; q=0.5": true,
		"identity": false, "*": false, "deflate, gzip;q=0": false, "x-gzip": false,
	} {
		if got := acceptsGzip([]string{v}); got != want {
			t.Errorf("%q: %v, want %v", v, got, want)
		}
	}
}
