package ingest

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

type fakeMsg struct {
	topic   string
	payload []byte
	dup     bool
	acked   atomic.Int32
}

func (m *fakeMsg) Topic() string     { return m.topic }
func (m *fakeMsg) Payload() []byte   { return m.payload }
func (m *fakeMsg) Duplicate() bool   { return m.dup }
func (m *fakeMsg) MessageID() uint16 { return 1 }
func (m *fakeMsg) Ack()              { m.acked.Add(1) }

func TestSmoke(t *testing.T) {
	in, err := New(Config{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	now := time.Now().Unix()
	msgs := []*fakeMsg{
		{topic: "devices/d1/telemetry", payload: []byte(`{"temp": 21.5, "hum": 40}`)},
		{topic: "devices/d1/telemetry", payload: []byte(`[{"bn":"urn:dev:1:","bt":` + itoa(now) + `,"n":"temp","u":"Cel","v":22},{"n":"on","vb":true},{"n":"s","vs":"hi"}]`)},
		{topic: "devices/d2/telemetry", payload: []byte(`{"temp": "x"}`)},
	}
	for _, m := range msgs {
		in.Handle(m)
	}
	time.Sleep(100 * time.Millisecond)
	for i, m := range msgs {
		if m.acked.Load() != 1 {
			t.Errorf("msg %d not acked", i)
		}
	}
	st, _ := in.Store().Stats(context.Background())
	t.Logf("%+v", st)
	rs, _ := in.Store().Readings(context.Background(), ReadingQuery{})
	for _, r := range rs {
		t.Logf("%+v", r)
	}
	dl, _ := in.Store().DeadLetters(context.Background(), DeadLetterQuery{})
	t.Logf("%+v", dl)
	bs, err := in.Store().ClaimOutbox(context.Background(), 10, time.Minute)
	t.Logf("%+v %v", bs, err)
	in.Stop()
}

func itoa(n int64) string { return fmtInt(n) }

func fmtInt(n int64) string { return strconv.FormatInt(n, 10) }
