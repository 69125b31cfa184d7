package controlplane

import (
	"bytes"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// FuzzDecodeRequestBodies feeds arbitrary bytes to the JSON body decoder
// and the validators of every request type: no panic, and every refusal is
// a 400 or 413 with a message.
func FuzzDecodeRequestBodies(f *testing.F) {
	f.Add([]byte(`{"version":"1","health":{"status":"ok","checks":{"mqtt":"ok"}},"resources":{"cpu_percent":3,"mem_used_bytes":1,"mem_total_bytes":2}}`))
	f.Add([]byte(`{"token":"efe_x","csr":"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n","xwing_public":"AAAA"}`))
	f.Add([]byte(`{"set":{"site":"berlin"},"remove":["old"]}`))
	f.Add([]byte(`{"ttl":"1h","labels":{"a":"b"},"count":3}`))
	f.Add([]byte(`{"name":"ci","role":"viewer","ttl":"24h"}`))
	f.Add([]byte(`{"resources":{"cpu_percent":-1e308}}`))
	f.Add([]byte(`{"resources":{"energy":{"zone":"DE","intensity":312.5,"intensity_at":"2026-01-01T00:00:00Z","battery":{"present":true,"level":0.4,"charging":true}}}}`))
	f.Add([]byte(`{"resources":{"energy":{"intensity":-1,"battery":{"level":2}}}}`))
	f.Add([]byte(`{} {}`))
	f.Add([]byte(`[`))
	s := &Server{cfg: Config{MaxBodyBytes: 4096}}
	f.Fuzz(func(t *testing.T, body []byte) {
		decode := func(v any) error {
			r := httptest.NewRequest("POST", "/", bytes.NewReader(body))
			r.Header.Set("Content-Type", "application/json")
			return s.decodeJSON(httptest.NewRecorder(), r, v)
		}
		check := func(err error) {
			if err == nil {
				return
			}
			var he *httpError
			if !errors.As(err, &he) || (he.status != http.StatusBadRequest && he.status != http.StatusRequestEntityTooLarge) || he.msg == "" {
				t.Fatalf("refusal %v is not a 400/413 with a message", err)
			}
		}
		var hb cpapi.Heartbeat
		if err := decode(&hb); err == nil {
			check(validHeartbeat(&hb))
		} else {
			check(err)
		}
		var ew enrollWire
		if err := decode(&ew); err == nil {
			if _, err := decodeKey("xwing_public", ew.XWingPublic); err != nil {
				check(err)
			}
			if ew.CSR != "" {
				parseCSR(ew.CSR)
			}
		} else {
			check(err)
		}
		var lp cpapi.LabelsPatch
		if err := decode(&lp); err == nil {
			check(validLabels("set", lp.Set))
		} else {
			check(err)
		}
		var et cpapi.CreateEnrollmentTokensRequest
		if err := decode(&et); err == nil {
			check(validLabels("labels", et.Labels))
			_, err := parseTTL("ttl", et.TTL, 0, 1<<62)
			check(err)
		} else {
			check(err)
		}
	})
}

// FuzzParseCSR checks that arbitrary PEM input never panics the CSR parser
// and that anything accepted has a verified signature.
func FuzzParseCSR(f *testing.F) {
	_, csr, err := cpapi.GenerateAgentKey("seed")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(csr)
	f.Add("-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n")
	f.Add("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, in string) {
		c, err := parseCSR(in)
		if err != nil {
			return
		}
		if c.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
	})
}
