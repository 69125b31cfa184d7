package dkms

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgefleet/edgefleet/internal/testutil"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// fuzzFleet builds a key service with one agent and returns a few genuine
// key messages for it and the agent's keyring.
func fuzzFleet(f *testing.F) ([][]byte, *AgentKeys) {
	dir := f.TempDir()
	st, err := OpenSQLite(filepath.Join(dir, "keys.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	signer, _ := pqcrypto.GenerateSigningKey(testRand(1))
	clk := newClock()
	svc, err := Open(ctxb(), Config{Store: st, SigningKey: signer, DevMode: true, Rand: testRand(2), Clock: clk, Logger: quietLogger(&testutil.SyncBuffer{})})
	if err != nil {
		f.Fatal(err)
	}
	sk, _ := pqcrypto.GenerateXWingKey(testRand(3))
	svc.RegisterAgent(ctxb(), "agent-1", sk.Public(), nil)
	svc.CreateKey(ctxb(), "telemetry", PurposeData, Policy{AllAgents: true})
	svc.CreateKey(ctxb(), "gossip", PurposeGossip, Policy{AllAgents: true})
	svc.Rotate(ctxb(), "telemetry")
	svc.Retire(ctxb(), "telemetry", 1)
	var out [][]byte
	for _, kv := range []struct {
		name string
		v    uint32
	}{{"telemetry", 1}, {"telemetry", 2}, {"gossip", 1}} {
		m, err := svc.MessageFor(ctxb(), "agent-1", kv.name, kv.v)
		if err != nil {
			f.Fatal(err)
		}
		b, _ := m.MarshalBinary()
		out = append(out, b)
	}
	dev, _ := NewDeviceKey(bytes.Repeat([]byte{9}, 32))
	keys, err := OpenAgentKeys(ctxb(), AgentConfig{AgentID: "agent-1", PrivateKey: sk, ControlPlaneKey: signer.Public(), DeviceKey: dev, Clock: clk, Logger: quietLogger(&testutil.SyncBuffer{})})
	if err != nil {
		f.Fatal(err)
	}
	return out, keys
}

// FuzzParseKeyMessage feeds arbitrary bytes to the key message parser and
// to an agent keyring: no panic; whatever parses re-encodes to the same
// bytes; nothing but the genuine messages is ever accepted.
func FuzzParseKeyMessage(f *testing.F) {
	genuine, keys := fuzzFleet(f)
	for _, g := range genuine {
		f.Add(g)
		f.Add(g[:len(g)/2])
		f.Add(g[:len(g)-pqcrypto.SignatureSize])
		hdr := bytes.Clone(g)
		hdr[40] ^= 0xff
		f.Add(hdr)
	}
	f.Add([]byte{})
	f.Add([]byte("EFKM"))
	f.Add([]byte("EFKM\x02"))
	f.Add(append([]byte("EFKM\x01"), bytes.Repeat([]byte{0xff}, 120)...))
	// The signed content of the genuine messages is the same in every fuzz
	// worker (all randomness but ML-DSA's hedge is injected), so it tells
	// what the control plane signed even for seeds sealed in another worker.
	var signed [][]byte
	for _, g := range genuine {
		m, err := ParseKeyMessage(g)
		if err != nil {
			f.Fatal(err)
		}
		signed = append(signed, m.signedBytes())
	}
	isGenuine := func(m *KeyMessage) bool {
		for _, s := range signed {
			if bytes.Equal(m.signedBytes(), s) {
				return true
			}
		}
		return false
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseKeyMessage(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || !strings.HasPrefix(err.Error(), "dkms: ") {
				t.Fatalf("parse error not named: %v", err)
			}
			return
		}
		again, err := m.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("parsed message does not re-encode to its input: %v", err)
		}
		if _, err := keys.AcceptMessage(ctxb(), m); err == nil && !isGenuine(m) {
			t.Fatalf("accepted a message the control plane never signed: %x", b)
		}
	})
}

// FuzzParseShare feeds arbitrary text to the share parser: no panic; every
// rejection is ErrBadShare; whatever parses re-encodes to the same text.
func FuzzParseShare(f *testing.F) {
	_, shares, err := splitRoot(testRand(1), 1, 3, 5)
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range shares[:2] {
		text := s.Text()
		f.Add(text)
		f.Add(" " + text + "\n")
		f.Add(text[:len(text)-4])
		f.Add(strings.ToUpper(text))
	}
	f.Add("")
	f.Add(ShareTextPrefix)
	f.Add(ShareTextPrefix + strings.Repeat("A", 75))
	f.Add(ShareTextPrefix + strings.Repeat("_", 75))
	f.Add(encodeRaw(Share{RootVersion: 1, Threshold: 2, Total: 1, Index: 1}))
	f.Fuzz(func(t *testing.T, text string) {
		s, err := ParseShare(text)
		if err != nil {
			if !errors.Is(err, ErrBadShare) || !strings.HasPrefix(err.Error(), "dkms: ") {
				t.Fatalf("parse error not named: %v", err)
			}
			return
		}
		if s.Text() != strings.TrimSpace(text) {
			t.Fatalf("share does not re-encode to its input")
		}
		if s.Index == 0 || s.Index > s.Total || s.Threshold == 0 || s.Threshold > s.Total {
			t.Fatalf("parsed share out of range: %v", s)
		}
		_ = s.digest()
	})
}
