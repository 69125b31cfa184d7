package controlplane

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// Long poll of GET /v1/agent/keys: with "wait", a request whose cursor is
// the agent's current key state is held until the key state changes (a
// rotation, a policy change, a new, retired or destroyed version, an agent
// registered, relabeled or revoked, an unseal) or the wait ends, so agents
// receive new key versions within a round trip of the change instead of at
// their next poll. Every change the key service makes reports an audit
// event (auditKeyEvent); the ones that change key state close the current
// broadcast channel and replace it, which wakes every held request to
// compare the agent's state with its cursor again.

const (
	// KeyWatchDeadlineMargin is added to "wait" for the read and write
	// deadlines of a held request's connection, which replace the
	// server's 60 s ReadTimeout and WriteTimeout for that request: the
	// answer to a held request is computed and written within it.
	KeyWatchDeadlineMargin = 30 * time.Second
)

// keyWatch is the broadcast of key state changes to held requests.
type keyWatch struct {
	mu      sync.Mutex
	ch      chan struct{} // closed and replaced at every change
	closing chan struct{} // closed when the server shuts down
	closed  bool
	held    atomic.Int64 // requests held now
}

func newKeyWatch() *keyWatch {
	return &keyWatch{ch: make(chan struct{}), closing: make(chan struct{})}
}

// changed returns the channel closed at the next change. Take it before
// reading the state it guards, so no change is missed in between.
func (w *keyWatch) changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

// notify wakes every held request.
func (w *keyWatch) notify() {
	w.mu.Lock()
	defer w.mu.Unlock()
	close(w.ch)
	w.ch = make(chan struct{})
}

// close answers every held request, now and later, without waiting: the
// server is shutting down.
func (w *keyWatch) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.closed {
		w.closed = true
		close(w.closing)
	}
}

// parseKeyWait reads the "wait" parameter: a Go duration ("55s", "2m"),
// or "0" (the default) to answer at once.
func parseKeyWait(v string) (time.Duration, error) {
	if v == "" || v == "0" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, badRequest("wait: %q is not a duration (e.g. \"55s\"; at most %s)", v, cpapi.MaxKeyWatchWait)
	}
	switch {
	case d < 0:
		return 0, badRequest("wait: %s is negative", v)
	case d > cpapi.MaxKeyWatchWait:
		return 0, badRequest("wait: %s exceeds the maximum %s", v, cpapi.MaxKeyWatchWait)
	}
	return d, nil
}

// extendDeadlines lets a held request outlive the server's ReadTimeout
// and WriteTimeout: its connection's deadlines move to d from now. The
// read deadline matters too: net/http reads in the background while a
// handler runs, and that read failing at the old deadline would cancel
// the request.
func extendDeadlines(w http.ResponseWriter, d time.Duration) error {
	rc := http.NewResponseController(w)
	at := time.Now().Add(d)
	if err := rc.SetReadDeadline(at); err != nil {
		return err
	}
	return rc.SetWriteDeadline(at)
}

// longPoll holds a request for a change, as GET /v1/agent/{keys,models,
// devices} and /v1/agent/fl/task do. It calls look, which reads the state
// and reports whether to answer now, and again at each change of watch,
// until look says so, the wait ends or the server shuts down (answer:
// true; the caller answers what look saw last), or the client goes away
// (answer: false; nothing to write). what names the request in a log
// line.
func (s *Server) longPoll(w http.ResponseWriter, r *http.Request, watch *keyWatch, wait time.Duration, what, agent string,
	look func() (now bool, err error)) (answer bool, err error) {
	var expired <-chan time.Time
	for {
		changed := watch.changed() // before look: no change is missed in between
		now, err := look()
		if err != nil {
			return false, err
		}
		if now || wait == 0 {
			return true, nil
		}
		if expired == nil {
			if err := extendDeadlines(w, wait+KeyWatchDeadlineMargin); err != nil {
				s.log.Warn("cannot extend the connection deadlines of a held "+what+" request; the server's timeouts apply", "agent", agent, "err", err)
			}
			timer := time.NewTimer(wait)
			defer timer.Stop()
			expired = timer.C
		}
		select {
		case <-changed:
			continue
		case <-expired:
		case <-watch.closing:
		case <-r.Context().Done():
			return false, nil
		}
		return true, nil
	}
}
