package keys

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/dkms"
)

// Revocation list carriage. The control plane's signed revocation list
// (dkms.RevocationList) reaches each agent with its key answers (the
// uplink's Deps.Revocations) and travels between agents in the replicated
// LWW collection RevocationCollection, key RevocationKey, so agents that
// cannot reach the control plane learn it from peers. Every list is
// checked against the control plane's pinned key before it is used: a
// malformed list, a bad signature, or an older version than the one held
// is refused, logged and counted, and the list held stays in force. When
// the replicated entry holds something worse than the list held (refused,
// or older), the agent writes its own again, so a bad write cannot hide a
// revocation from the fleet.

// RevocationCollection is the replicated LWW collection of the revocation
// list; RevocationKey its only key.
const (
	RevocationCollection = "keys.revocations"
	RevocationKey        = "list"
)

// RevocationsConfig configures Revocations. State and Keys are required.
type RevocationsConfig struct {
	State State
	// Keys returns the agent's keyring (its pinned control-plane key
	// verifies lists); nil before it is enrolled.
	Keys func() *dkms.AgentKeys
	// Changed runs with the revoked node names whenever a newer list is
	// adopted.
	Changed func(names map[string]bool)
	// Interval is how often Run reads the replicated list.
	Interval time.Duration
	// Clock ticks Run; nil means clock.Real().
	Clock clock.Clock
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
	// Registry receives the agent_revocation_* metrics; nil leaves them
	// unregistered.
	Registry *prometheus.Registry
}

// Revocations holds the newest verified revocation list of an agent.
type Revocations struct {
	cfg RevocationsConfig
	log *slog.Logger

	mu    sync.Mutex
	list  *dkms.RevocationList
	raw   []byte
	names map[string]bool

	version  prometheus.Gauge
	refused  *prometheus.CounterVec
	adopted  *prometheus.CounterVec
	rewrites prometheus.Counter
}

// NewRevocations returns an empty holder and registers its metrics.
func NewRevocations(cfg RevocationsConfig) (*Revocations, error) {
	if cfg.State == nil || cfg.Keys == nil {
		return nil, errors.New("keys: revocations: State and Keys are required")
	}
	if cfg.Interval <= 0 {
		return nil, errors.New("keys: revocations: interval is not positive")
	}
	r := &Revocations{cfg: cfg, log: cfg.Logger, names: map[string]bool{}}
	if r.log == nil {
		r.log = slog.Default()
	}
	if r.cfg.Changed == nil {
		r.cfg.Changed = func(map[string]bool) {}
	}
	r.version = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "agent_revocation_list_version",
		Help: "Version (number of revoked agents) of the revocation list this agent enforces.",
	})
	r.adopted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agent_revocation_lists_adopted_total",
		Help: "Newer revocation lists adopted, by source (control_plane, peers).",
	}, []string{"source"})
	r.refused = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "agent_revocation_lists_refused_total",
		Help: "Revocation lists refused, by reason (malformed, bad_signature, older).",
	}, []string{"reason"})
	r.rewrites = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "agent_revocation_list_rewrites_total",
		Help: "Times this agent wrote its revocation list into replicated state.",
	})
	if cfg.Registry != nil {
		for _, c := range []prometheus.Collector{r.version, r.adopted, r.refused, r.rewrites} {
			if err := cfg.Registry.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

// Revoked reports whether the node name is on the list held.
func (r *Revocations) Revoked(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.names[name]
}

// Version is the version of the list held (0: none).
func (r *Revocations) Version() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.list == nil {
		return 0
	}
	return r.list.Version
}

// errNoKey: the keyring is not open yet, so nothing can be verified.
var errNoKey = errors.New("keys: revocation list: no control-plane key yet (agent not enrolled)")

// Offer checks a list (from the control plane or from peers) and adopts
// it when it is newer than the list held. It reports whether it adopted
// it; an error says why it refused it (errors wrap dkms.ErrMalformed or
// dkms.ErrBadSignature).
func (r *Revocations) Offer(ctx context.Context, raw []byte, source string) (bool, error) {
	ak := r.cfg.Keys()
	if ak == nil {
		return false, errNoKey
	}
	r.mu.Lock()
	held := bytes.Equal(raw, r.raw)
	r.mu.Unlock()
	if held {
		return false, nil
	}
	l, err := dkms.ParseRevocationList(raw)
	if err != nil {
		r.refused.WithLabelValues("malformed").Inc()
		r.log.Warn("revocation list refused: malformed; the list held stays in force", "source", source, "reason", "malformed", "err", err)
		return false, err
	}
	if err := l.Verify(ak.ControlPlaneKey()); err != nil {
		r.refused.WithLabelValues("bad_signature").Inc()
		r.log.Warn("revocation list refused: bad signature; the list held stays in force", "source", source, "reason", "bad_signature", "version", l.Version, "err", err)
		return false, err
	}
	r.mu.Lock()
	if r.list != nil && l.Version <= r.list.Version {
		r.mu.Unlock()
		if l.Version < r.list.Version {
			r.refused.WithLabelValues("older").Inc()
		}
		return false, nil
	}
	r.list, r.raw, r.names = l, bytes.Clone(raw), l.Names()
	names := r.names
	r.mu.Unlock()
	r.version.Set(float64(l.Version))
	r.adopted.WithLabelValues(source).Inc()
	r.log.Info("revocation list adopted", "source", source, "version", l.Version, "revoked", len(l.Agents))
	r.cfg.Changed(names)
	r.publish(ctx)
	return true, nil
}

// publish writes the list held into replicated state unless the entry
// there is the same list.
func (r *Revocations) publish(ctx context.Context) {
	r.mu.Lock()
	raw := r.raw
	r.mu.Unlock()
	if raw == nil {
		return
	}
	s, err := r.cfg.State.LiveStore()
	if err != nil {
		return
	}
	if cur, ok, err := s.Get(ctx, RevocationCollection, RevocationKey); err == nil && ok && bytes.Equal(cur.Value, raw) {
		return
	}
	d, err := s.Put(ctx, RevocationCollection, RevocationKey, raw)
	if err != nil {
		r.log.Warn("revocation list: writing it into replicated state failed", "err", err)
		return
	}
	r.rewrites.Inc()
	r.cfg.State.Broadcast(d)
}

// Scan reads the replicated list, adopts it when it is newer, and writes
// the list held back when the entry is refused or older.
func (r *Revocations) Scan(ctx context.Context) {
	s, err := r.cfg.State.LiveStore()
	if err != nil {
		return
	}
	e, ok, err := s.Get(ctx, RevocationCollection, RevocationKey)
	if err != nil {
		r.log.Warn("revocation list: reading replicated state failed", "err", err)
		return
	}
	if ok && len(e.Value) > 0 {
		r.mu.Lock()
		same := bytes.Equal(e.Value, r.raw)
		r.mu.Unlock()
		if same {
			return
		}
		_, err := r.Offer(ctx, e.Value, "peers")
		switch {
		case errors.Is(err, errNoKey):
			return
		case err == nil && !r.newerHeld(e.Value):
			return // the same version (perhaps signed again), or adopted
		}
	}
	r.publish(ctx)
}

// newerHeld reports whether the list held is newer than the valid list raw.
func (r *Revocations) newerHeld(raw []byte) bool {
	l, err := dkms.ParseRevocationList(raw)
	if err != nil {
		return true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.list != nil && r.list.Version > l.Version
}

// Run scans every interval until ctx ends.
func (r *Revocations) Run(ctx context.Context) {
	r.Scan(ctx)
	t := clock.Or(r.cfg.Clock).NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
			r.Scan(ctx)
		}
	}
}
