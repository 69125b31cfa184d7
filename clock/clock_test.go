package clock

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestManualTimers(t *testing.T) {
	start := time.Unix(1e9, 0)
	c := NewManual(start)
	t1, t2, t3 := c.NewTimer(2*time.Second), c.NewTimer(time.Second), c.NewTimer(5*time.Second)
	if c.Waiters() != 3 {
		t.Fatalf("waiters %d", c.Waiters())
	}
	if at, ok := c.NextDeadline(); !ok || !at.Equal(start.Add(time.Second)) {
		t.Fatalf("next deadline %s %v", at, ok)
	}
	if !t3.Stop() || t3.Stop() {
		t.Fatal("Stop of a pending timer")
	}
	c.Advance(2 * time.Second)
	for _, f := range []struct {
		tm   Timer
		want time.Duration
	}{{t2, time.Second}, {t1, 2 * time.Second}} {
		select {
		case at := <-f.tm.C():
			if !at.Equal(start.Add(f.want)) {
				t.Errorf("timer of %s fired with %s", f.want, at.Sub(start))
			}
		default:
			t.Fatalf("timer of %s did not fire", f.want)
		}
	}
	if c.Waiters() != 0 || t1.Stop() {
		t.Error("fired timers still pending")
	}
	select {
	case <-c.NewTimer(0).C():
	default:
		t.Error("zero timer did not fire at once")
	}
	c.Set(start) // never backwards
	if !c.Now().Equal(start.Add(2 * time.Second)) {
		t.Errorf("Set moved the clock back to %s", c.Now())
	}
}

func TestManualTicker(t *testing.T) {
	start := time.Unix(1e9, 0)
	c := NewManual(start)
	tk := c.NewTicker(time.Second)
	recv := func() (time.Time, bool) {
		select {
		case at := <-tk.C():
			return at, true
		default:
			return time.Time{}, false
		}
	}
	if _, ok := recv(); ok {
		t.Fatal("tick before the first period")
	}
	c.Advance(time.Second)
	if at, ok := recv(); !ok || !at.Equal(start.Add(time.Second)) {
		t.Fatalf("first tick %s %v", at, ok)
	}
	c.Advance(3 * time.Second) // three periods pass: one pending tick, like time.Ticker
	if at, ok := recv(); !ok || !at.Equal(start.Add(2*time.Second)) {
		t.Fatalf("tick after three periods %s %v", at, ok)
	}
	if _, ok := recv(); ok {
		t.Fatal("ticks were queued, not dropped")
	}
	if c.Waiters() != 1 {
		t.Fatalf("ticker not pending after ticking: %d waiters", c.Waiters())
	}
	tk.Reset(10 * time.Second)
	c.Advance(9 * time.Second)
	if _, ok := recv(); ok {
		t.Fatal("tick before the reset period")
	}
	c.Advance(time.Second)
	if _, ok := recv(); !ok {
		t.Fatal("no tick after the reset period")
	}
	tk.Stop()
	c.Advance(time.Minute)
	if _, ok := recv(); ok || c.Waiters() != 0 {
		t.Fatal("stopped ticker ticked or stayed pending")
	}
}

func TestSleep(t *testing.T) {
	c := NewManual(time.Unix(1e9, 0))
	done := make(chan error, 1)
	go func() { done <- Sleep(context.Background(), c, time.Hour) }()
	for c.Waiters() == 0 {
		time.Sleep(time.Millisecond)
	}
	c.Advance(time.Hour)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Sleep(ctx, c, time.Hour); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sleep on a cancelled context: %v", err)
	}
	if Or(nil) == nil || Or(c) != Clock(c) {
		t.Fatal("Or")
	}
}

func TestScaledRunsFaster(t *testing.T) {
	start := time.Unix(1e9, 0)
	c := NewScaled(start, 3600)   // an hour per real second
	tm := c.NewTimer(time.Minute) // about 17ms of real time
	select {
	case at := <-tm.C():
		if at.Sub(start) < time.Minute {
			t.Errorf("timer fired at clock %s, before its minute", at.Sub(start))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("scaled timer did not fire")
	}
	if c.Now().Sub(start) < time.Minute {
		t.Errorf("clock at %s after a scaled minute", c.Now().Sub(start))
	}
	if s := c.NewTimer(time.Hour); !s.Stop() {
		t.Error("Stop of a pending scaled timer")
	}
	tk := c.NewTicker(time.Minute)
	for i := 0; i < 2; i++ {
		select {
		case <-tk.C():
		case <-time.After(10 * time.Second):
			t.Fatal("scaled ticker did not tick")
		}
	}
	tk.Stop()
	defer func() {
		if recover() == nil {
			t.Error("factor 0 accepted")
		}
	}()
	NewScaled(start, 0)
}
