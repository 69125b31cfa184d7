package ingest

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// BenchmarkCommit measures the store's group commit of decoded
// messages (1000 messages of three readings per commit), without MQTT.
func BenchmarkCommit(b *testing.B) {
	st, err := OpenStore(StoreConfig{Path: filepath.Join(b.TempDir(), "b.db")})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	dec, _ := NewDecoder(Limits{}, nil)
	ctx := context.Background()
	base := time.Now().Add(-time.Hour).UnixMicro()
	const batch = 1000
	envs := make([]*envelope, batch)
	n := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range envs {
			us := base + int64(n)
			n++
			p := []byte(`{"temperature":21.5,"humidity":40.25,"co2":455,"ts":` + strconv.FormatInt(us/1e6, 10) + "." + pad6(us%1e6) + `}`)
			topic := "devices/dev-" + strconv.Itoa(n%10) + "/telemetry"
			e := &envelope{topic: topic, payload: p, recv: time.Now(), device: "dev-" + strconv.Itoa(n%10)}
			e.hash = messageHash(topic, p)
			e.readings, e.received, e.err = dec.appendDecode(nil, e.device, p, e.recv)
			if e.err != nil {
				b.Fatal(e.err)
			}
			envs[j] = e
		}
		if _, err := st.commit(ctx, envs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "msgs/s")
	if st, err := st.Stats(ctx); err == nil && st.OutboxPending > 0 {
		b.ReportMetric(float64(st.OutboxPendingBytes)/float64(st.OutboxPending), "outbox-B/reading")
		b.ReportMetric(float64(st.UsedBytes)/float64(st.Readings), "db-B/reading")
	}
}

func pad6(v int64) string {
	s := strconv.FormatInt(v, 10)
	for len(s) < 6 {
		s = "0" + s
	}
	return s
}
