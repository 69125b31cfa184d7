package ingest

import (
	"log/slog"
	"testing"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// BenchmarkAuthConnect measures one login's check: with the PBKDF2
// derivation (cache off), from the cache of verified secrets, and a
// wrong secret (always derived).
func BenchmarkAuthConnect(b *testing.B) {
	id, secret := testIdentity(&testing.T{}, "d1")
	for _, c := range []struct {
		name  string
		cache int
		pass  string
		ok    bool
	}{
		{"pbkdf2", -1, secret, true},
		{"cached", 0, secret, true},
		{"wrong_secret", 0, secret + "x", false},
	} {
		b.Run(c.name, func(b *testing.B) {
			h, err := newAuthHook(&AuthConfig{CacheEntries: c.cache, Identities: []Identity{id}}, slog.New(slog.DiscardHandler))
			if err != nil {
				b.Fatal(err)
			}
			cl := &mochi.Client{ID: "d1"}
			pk := packets.Packet{Connect: packets.ConnectParams{UsernameFlag: true, Username: []byte("d1"), PasswordFlag: true, Password: []byte(c.pass)}}
			for b.Loop() {
				if h.OnConnectAuthenticate(cl, pk) != c.ok {
					b.Fatal("unexpected result")
				}
			}
		})
	}
}

// BenchmarkACLPublish measures the topic check of one publish.
func BenchmarkACLPublish(b *testing.B) {
	id, _ := testIdentity(&testing.T{}, "d1")
	h, err := newAuthHook(&AuthConfig{Identities: []Identity{id}}, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	cl := &mochi.Client{ID: "d1"}
	cl.Properties.Username = []byte("d1")
	for b.Loop() {
		if !h.OnACLCheck(cl, "devices/d1/telemetry", true) {
			b.Fatal("refused")
		}
	}
}
