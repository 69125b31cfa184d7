package test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestKill9DuringWriteBurst kills an agent with SIGKILL while clients are
// writing to it. After restart on the same data dir, every write the API
// acknowledged must be there, and the agent must catch up with what its peers
// wrote while it was down.
func TestKill9DuringWriteBurst(t *testing.T) {
	if testing.Short() {
		t.Skip("scenario test: skipped with -short")
	}
	a := newProc(t, "agent-a")
	a.start()
	b := newProc(t, "agent-b", a.gossip)
	b.start()
	c := newProc(t, "agent-c", a.gossip)
	c.start()
	for _, p := range []*proc{a, b, c} {
		eventually(t, 20*time.Second, p.name+" sees 3 members", func() error {
			n, err := p.aliveMembers()
			if err == nil && n != 3 {
				err = fmt.Errorf("%d alive", n)
			}
			return err
		})
	}

	// Four writers hammer agent A; A is killed mid-burst.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu    sync.Mutex
		acked = map[string]string{}
		count atomic.Int64
		wg    sync.WaitGroup
	)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				key := fmt.Sprintf("w%d-%05d", w, i)
				val := fmt.Sprintf(`{"writer":%d,"i":%d}`, w, i)
				if err := a.put(ctx, "burst", key, val); err != nil {
					return // the agent is gone; unacknowledged writes may be lost
				}
				mu.Lock()
				acked[key] = val
				mu.Unlock()
				count.Add(1)
			}
		}(w)
	}
	eventually(t, 20*time.Second, "burst under way", func() error {
		if n := count.Load(); n < 200 {
			return fmt.Errorf("%d writes acknowledged", n)
		}
		return nil
	})
	a.kill9()
	cancel()
	wg.Wait()
	t.Logf("acknowledged %d writes before kill -9", len(acked))

	// Peers keep writing while A is down.
	for i := 0; i < 50; i++ {
		if err := b.put(context.Background(), "while-down", fmt.Sprintf("k%03d", i), fmt.Sprintf(`%d`, i)); err != nil {
			t.Fatal(err)
		}
	}

	a.start()
	for key, val := range acked {
		got, ok, err := a.get("burst", key)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Fatalf("acknowledged write %s lost after kill -9", key)
		}
		if string(got) != val {
			t.Fatalf("write %s: got %s, want %s", key, got, val)
		}
	}
	eventually(t, 30*time.Second, "restarted agent caught up with its peers", func() error {
		for i := 0; i < 50; i++ {
			_, ok, err := a.get("while-down", fmt.Sprintf("k%03d", i))
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("k%03d missing", i)
			}
		}
		return nil
	})
	// And the peers hold everything A acknowledged.
	eventually(t, 30*time.Second, "peers hold every acknowledged write", func() error {
		for key := range acked {
			for _, p := range []*proc{b, c} {
				_, ok, err := p.get("burst", key)
				if err != nil {
					return err
				}
				if !ok {
					return fmt.Errorf("%s lacks %s", p.name, key)
				}
			}
		}
		return nil
	})
}
