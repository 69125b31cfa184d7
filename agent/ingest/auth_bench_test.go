package ingest

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

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

// BenchmarkEmbeddedDrainAuth is the durable drain through the embedded
// broker (Ingestor attached, QoS 1, acknowledged after commit) from 4
// device connections, without authentication ("open": anonymous) and
// with it ("auth": each device logged in with its identity and every
// publish checked against its topics). Compare msg/s of the two in one
// run.
func BenchmarkEmbeddedDrainAuth(b *testing.B) {
	for _, auth := range []bool{false, true} {
		name := "open"
		if auth {
			name = "auth"
		}
		b.Run(name, func(b *testing.B) {
			cfg := BrokerConfig{Addr: "127.0.0.1:0", Ingest: true}
			const devs = 4
			ids := make([]Identity, devs)
			secrets := make([]string, devs)
			for i := range ids {
				ids[i], secrets[i] = testIdentity(&testing.T{}, fmt.Sprintf("bench-%d", i))
			}
			if auth {
				cfg.Auth = &AuthConfig{Identities: ids}
			}
			br, err := StartBroker(cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer br.Stop()
			in, err := New(Config{DataDir: b.TempDir(), Embedded: br, Limits: Limits{MaxPast: 30 * 24 * time.Hour}})
			if err != nil {
				b.Fatal(err)
			}
			if err := in.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			defer in.Stop()
			clients := make([]mqtt.Client, devs)
			for i := range clients {
				user, pass := "", ""
				if auth {
					user, pass = ids[i].Name, secrets[i]
				}
				if clients[i], err = dial(br, ids[i].Name, user, pass, nil); err != nil {
					b.Fatal(err)
				}
				defer clients[i].Disconnect(0)
			}
			base := time.Now().Add(-time.Hour).UnixMicro()
			b.ResetTimer()
			var wg sync.WaitGroup
			for i, c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					topic := "devices/" + ids[i].Name + "/telemetry"
					window := make([]mqtt.Token, 0, 500)
					for j := i; j < b.N; j += devs {
						window = append(window, c.Publish(topic, 1, false, fmt.Sprintf(`{"ts":%d,"v":%d}`, base+int64(j), j)))
						if len(window) == cap(window) {
							for _, t := range window {
								t.Wait()
							}
							window = window[:0]
						}
					}
					for _, t := range window {
						t.Wait()
					}
				}()
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
		})
	}
}
