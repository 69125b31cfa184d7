package keys

// Gossip keyring rotation.
//
// memberlist encrypts every packet and stream with the primary key of its
// keyring and decrypts with whichever installed key opens the message. The
// fleet's gossip key is the dkms key "gossip" (PurposeGossip): the control
// plane creates versions, and key messages deliver each version with its
// schedule to every agent. A Rotator turns that schedule into
// memberlist keyring operations, always in the order install → make
// primary → remove, so the keyring never lacks its primary and never goes
// empty.
//
// # Timing rules
//
// A key must be installed on every agent before any agent encrypts with it,
// and stay installed on every agent until no agent encrypts with it any
// more. dkms fixes one schedule per version N, created at T, for the whole
// fleet (see the dkms package documentation, "Gossip keyring"):
//
//   - install at once: as soon as the agent holds N (at T, or when it
//     catches up), N is added as a decrypt-only key;
//   - make primary at ActivateAt = T + InstallGrace (dkms Policy, default
//     1 minute): by then every online agent has installed N, so whoever
//     switches first is understood by everyone;
//   - remove the versions before N at PrevRemoveAt = ActivateAt +
//     RemoveGrace (default 1 hour): by then every agent has switched to N,
//     and packets still in flight under the old key have long arrived.
//
// So InstallGrace must exceed the time a key message takes to reach the
// online agents plus the clock skew between agents (an agent whose clock
// runs ahead switches early), and RemoveGrace must exceed the skew (an
// agent whose clock runs behind switches late). Every instant is read from
// the clock the key messages' times are in (the uplink's).
//
// The rotator re-plans at each of these instants (Next, for a timer) and
// whenever a key message arrives (a wake of Run). Apply is idempotent, so
// extra wakes cost nothing.
//
// # The bootstrap key and its grace period
//
// Before the first dkms version reaches it, an agent gossips under its
// bootstrap key (gossip.key, gossip.key_file, or DataDir/gossip.key), which
// must be the same on every agent. dkms activates version 1 the moment it
// creates it, since there is nothing to install it beside, so agents would
// switch to it at different moments (whenever each receives it). The
// rotator therefore keeps the bootstrap key primary until the first dkms
// primary's ActivateAt plus FirstActivation (default 1 minute, dkms's
// default InstallGrace) when that primary is version 1, and until its
// ActivateAt for later versions (they had their own install period). That
// instant, computed from the schedule, is the same on every agent: the
// takeover.
//
// After the takeover the bootstrap key, and any other key in memberlist's
// keyring that dkms did not deliver, stays installed decrypt-only for the
// grace period Grace (default 1 hour, dkms's default RemoveGrace) and is
// then removed. Agents that have not received the gossip key yet (not
// enrolled, or unable to reach the control plane) keep gossiping under the
// bootstrap key, and the fleet still understands them during that hour.
// A restarted agent takes over again at once, from the version it holds,
// so it may keep the bootstrap key up to Grace longer than its peers.
//
// # Agents that were offline
//
// An agent that was down while a rotation happened comes back with the keys
// it had. Until the rotation's PrevRemoveAt (RemoveGrace after the new key
// became primary) its peers still accept its old key, so its traffic gets
// through; but their answers are under the new key, so its join fails with
// "no installed keys could decrypt the message" until it fetches its
// pending key messages (the control plane's catch-up, dkms CatchUp) and
// the rotator installs them. After the grace period its peers have removed
// every key it holds and refuse its traffic too. Either way the recovery is
// the same: fetch the pending key messages from the control plane over the
// uplink, or re-enroll the agent when its keyring is lost or it was
// revoked. JoinFailed recognizes the failure and says so
// (ErrGossipKeyStale).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// ErrGossipKeyStale reports a join that failed because this agent holds no
// gossip key its peers encrypt with: it was offline during a key rotation
// (or has not received the fleet's gossip key yet). Fetch the agent's
// pending key messages from the control plane; re-enroll it if its keyring
// is lost or it was revoked.
var ErrGossipKeyStale = errors.New("keys: gossip keys out of date")

// Gossip keyring rotation defaults.
const (
	// defaultGossipGrace is how long the bootstrap key stays installed
	// decrypt-only after the takeover by a dkms version.
	defaultGossipGrace = dkms.DefaultGossipRemoveGrace
	// defaultGossipFirstActivation delays the takeover of version 1 (which
	// dkms activates at its creation) so every agent installs it first.
	defaultGossipFirstActivation = dkms.DefaultGossipInstallGrace
	// defaultGossipRecheck bounds how long Run sleeps without a wake.
	defaultGossipRecheck = time.Minute
	// gossipRetryDelay is how soon Run retries after a failed Apply.
	gossipRetryDelay = 5 * time.Second
	// gossipStaleLogEvery rate-limits JoinFailed's error log.
	gossipStaleLogEvery = time.Minute
)

// RotatorConfig configures a Rotator. Keyring, Source and
// Bootstrap are required.
type RotatorConfig struct {
	// Keyring is the running memberlist's keyring (memberlist.Config.Keyring).
	Keyring *memberlist.Keyring
	// Source returns the keyring dkms plans for now, e.g.
	// agentKeys.GossipKeyring("gossip", now). dkms.ErrUnknownKey before the
	// takeover means the agent has no gossip key yet.
	Source func(now time.Time) (dkms.GossipKeyring, error)
	// Bootstrap is the agent's configured or generated gossip key, primary
	// until a dkms version takes over. It is added to Keyring if missing.
	Bootstrap []byte
	// Grace is how long the bootstrap key (and any other key dkms did not
	// deliver) stays installed decrypt-only after the takeover; zero means
	// defaultGossipGrace (1 hour).
	Grace time.Duration
	// FirstActivation is how long after its ActivateAt dkms version 1 takes
	// over from the bootstrap key; zero means
	// defaultGossipFirstActivation (1 minute).
	FirstActivation time.Duration
	// Recheck bounds Run's sleep when nothing is scheduled; zero means
	// defaultGossipRecheck (1 minute).
	Recheck time.Duration
	// Clock is the clock the key messages' times are in (the uplink's);
	// nil means clock.Real().
	Clock clock.Clock
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
	// Registry receives the edgefleet_gossip_keyring_* metrics; nil leaves
	// them unregistered.
	Registry *prometheus.Registry
}

// Rotator applies the fleet's gossip key versions (delivered by dkms
// key messages) to memberlist's keyring. Safe for concurrent use.
type Rotator struct {
	kr        *memberlist.Keyring
	source    func(time.Time) (dkms.GossipKeyring, error)
	bootstrap []byte
	grace     time.Duration
	first     time.Duration
	recheck   time.Duration
	clock     clock.Clock
	log       *slog.Logger
	m         gossipKeyringMetrics

	mu       sync.Mutex
	versions map[uint32][]byte  // dkms versions this rotator installed
	plan     dkms.GossipKeyring // the last plan applied
	takeover time.Time          // when a dkms version took over from the bootstrap key; zero before
	staleLog time.Time          // last ErrGossipKeyStale log
	// graceEnded: EndGrace shortened the bootstrap key's grace period.
	graceEnded bool
}

type gossipKeyringMetrics struct {
	keys      prometheus.Gauge
	primary   prometheus.Gauge
	rotations prometheus.Counter
	steps     *prometheus.CounterVec
	failures  prometheus.Counter
}

// NewRotator validates cfg, adds the bootstrap key to the keyring
// when it is missing, and registers the metrics. It changes nothing else:
// call Apply (before memberlist starts, so it gossips under the right key
// from its first packet), then Run.
func NewRotator(cfg RotatorConfig) (*Rotator, error) {
	if cfg.Keyring == nil {
		return nil, errors.New("keys: gossip rotator: no memberlist keyring")
	}
	if cfg.Source == nil {
		return nil, errors.New("keys: gossip rotator: no key source")
	}
	if err := memberlist.ValidateKey(cfg.Bootstrap); err != nil {
		return nil, fmt.Errorf("keys: gossip rotator: bootstrap key: %w", err)
	}
	if cfg.Grace < 0 || cfg.FirstActivation < 0 || cfg.Recheck < 0 {
		return nil, fmt.Errorf("keys: gossip rotator: negative duration (grace %v, first activation %v, recheck %v)",
			cfg.Grace, cfg.FirstActivation, cfg.Recheck)
	}
	r := &Rotator{
		kr:        cfg.Keyring,
		source:    cfg.Source,
		bootstrap: slices.Clone(cfg.Bootstrap),
		grace:     gossipDurationOr(cfg.Grace, defaultGossipGrace),
		first:     gossipDurationOr(cfg.FirstActivation, defaultGossipFirstActivation),
		recheck:   gossipDurationOr(cfg.Recheck, defaultGossipRecheck),
		clock:     clock.Or(cfg.Clock),
		log:       cfg.Logger,
		versions:  map[uint32][]byte{},
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	r.log = r.log.With("component", "gossip-keyring")
	r.m = gossipKeyringMetrics{
		keys: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgefleet_gossip_keyring_keys",
			Help: "Keys installed in memberlist's gossip keyring.",
		}),
		primary: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "edgefleet_gossip_keyring_primary_version",
			Help: "dkms version of the gossip keyring's primary key; 0 while the bootstrap key is primary.",
		}),
		rotations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_gossip_keyring_rotations_total",
			Help: "Primary gossip key changes applied.",
		}),
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgefleet_gossip_keyring_steps_total",
			Help: "Gossip keyring operations applied, by step (install, use, remove).",
		}, []string{"step"}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "edgefleet_gossip_keyring_failures_total",
			Help: "Gossip keyring updates that failed (key source errors, unusable plans, keyring refusals).",
		}),
	}
	if cfg.Registry != nil {
		for _, c := range []prometheus.Collector{r.m.keys, r.m.primary, r.m.rotations, r.m.steps, r.m.failures} {
			if err := cfg.Registry.Register(c); err != nil {
				return nil, fmt.Errorf("keys: gossip rotator metrics: %w", err)
			}
		}
	}
	if err := r.kr.AddKey(r.bootstrap); err != nil {
		return nil, fmt.Errorf("keys: gossip rotator: installing the bootstrap key: %w", err)
	}
	r.updateGauges()
	return r, nil
}

func gossipDurationOr(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// Apply brings the keyring to what the schedule asks for at Now(): it
// installs the versions it lacks, switches the primary, then removes the
// versions the schedule dropped and, Grace after the takeover, the
// bootstrap key. It is idempotent, never removes the primary and never
// empties the keyring; when the source fails or gives nothing usable it
// leaves the keyring as it is and returns the error.
func (r *Rotator) Apply() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.applyLocked(r.clock.Now()); err != nil {
		r.m.failures.Inc()
		r.log.Error("gossip keyring not updated; keeping the installed keys", "err", err, "keys", r.describeLocked())
		return err
	}
	return nil
}

func (r *Rotator) applyLocked(now time.Time) error {
	plan, err := r.source(now)
	switch {
	case err == nil:
	case errors.Is(err, dkms.ErrUnknownKey) && r.takeover.IsZero():
		plan = dkms.GossipKeyring{} // no gossip key delivered yet: the bootstrap key serves
	default:
		return fmt.Errorf("keys: gossip keyring: key source: %w", err)
	}
	if err := checkGossipPlan(plan); err != nil {
		return err
	}
	if len(plan.Keys) == 0 && !r.takeover.IsZero() {
		return fmt.Errorf("keys: gossip keyring: dkms plans no gossip key (all versions retired, destroyed or below the minimum) after version %d took over", r.plan.Primary)
	}
	r.plan = plan

	ring := slices.Clone(r.kr.GetKeys())
	installed := map[uint32][]byte{}
	for v, k := range r.versions {
		if ringHasKey(ring, k) {
			installed[v] = k
		} else {
			delete(r.versions, v) // removed behind the rotator's back
		}
	}
	var primary uint32
	if len(ring) > 0 {
		primary = gossipVersionOf(installed, ring[0])
	}

	if r.takeover.IsZero() && len(plan.Keys) > 0 {
		if at := r.takeoverAt(plan); !now.Before(at) {
			r.takeover = at
			r.log.Info("dkms gossip key takes over from the bootstrap key",
				"version", plan.Primary, "takeover", at, "bootstrap_removed_at", at.Add(r.graceLocked()))
		}
	}
	target := plan
	if r.takeover.IsZero() {
		target.Primary = 0 // install ahead; the bootstrap key stays primary
	}

	steps := dkms.GossipSteps(installed, primary, target)
	var removals [][]byte
	for _, s := range steps {
		switch s.Kind {
		case dkms.GossipInstall:
			if err := r.kr.AddKey(s.Key); err != nil {
				return fmt.Errorf("keys: gossip keyring: installing version %d: %w", s.Version, err)
			}
			r.versions[s.Version] = slices.Clone(s.Key)
			r.m.steps.WithLabelValues("install").Inc()
			r.log.Info("gossip key installed", "version", s.Version, "fingerprint", Fingerprint(s.Key),
				"primary_at", gossipActivation(plan, s.Version))
		case dkms.GossipUse:
			if err := r.kr.UseKey(s.Key); err != nil {
				return fmt.Errorf("keys: gossip keyring: making version %d primary: %w", s.Version, err)
			}
			r.m.steps.WithLabelValues("use").Inc()
			r.m.rotations.Inc()
			r.log.Info("gossip key is primary", "version", s.Version, "previous", primary, "fingerprint", Fingerprint(s.Key))
		case dkms.GossipRemove:
			removals = append(removals, s.Key)
		}
	}
	if !r.takeover.IsZero() && !now.Before(r.takeover.Add(r.graceLocked())) {
		for _, k := range r.kr.GetKeys() {
			if gossipVersionOf(r.versions, k) == 0 && !gossipPlanHasKey(plan, k) {
				removals = append(removals, slices.Clone(k))
			}
		}
	}
	if err := r.removeKeys(removals); err != nil {
		return err
	}
	r.updateGauges()
	return nil
}

// takeoverAt is when plan's primary may take over from the bootstrap key.
func (r *Rotator) takeoverAt(plan dkms.GossipKeyring) time.Time {
	for _, k := range plan.Keys {
		if k.Version == plan.Primary {
			if k.Version == 1 {
				return k.ActivateAt.Add(r.first)
			}
			return k.ActivateAt
		}
	}
	return time.Time{}
}

// removeKeys removes keys from the keyring, never its primary.
//
// memberlist's RemoveKey of a key that others follow shifts them down in
// place, inside the very slice GetKeys has handed to the goroutines
// decrypting at that moment (a data race). Removing the last key shifts
// nothing, so removeKeys takes keys off the end of the keyring, from the
// last one down to the first key to remove, and puts back those that
// stay, in their order. Keys that follow one being removed are keys
// installed ahead of their activation, which nobody encrypts with yet, or
// the bootstrap key during its grace period; each is missing for the
// microseconds between its removal and its return.
func (r *Rotator) removeKeys(keys [][]byte) error {
	ring := slices.Clone(r.kr.GetKeys())
	first := slices.IndexFunc(ring, func(k []byte) bool { return ringHasKey(keys, k) })
	switch {
	case first < 0:
		return nil // none installed
	case first == 0:
		return fmt.Errorf("keys: gossip keyring: refusing to remove the primary key %s", Fingerprint(ring[0]))
	}
	var keep [][]byte
	for i := len(ring) - 1; i >= first; i-- {
		k := ring[i]
		if err := r.kr.RemoveKey(k); err != nil {
			return fmt.Errorf("keys: gossip keyring: removing key %s: %w", Fingerprint(k), err)
		}
		if !ringHasKey(keys, k) {
			keep = append(keep, k)
			continue
		}
		v := gossipVersionOf(r.versions, k)
		delete(r.versions, v)
		r.m.steps.WithLabelValues("remove").Inc()
		if v == 0 {
			r.log.Info("bootstrap gossip key removed (grace period over)", "fingerprint", Fingerprint(k))
		} else {
			r.log.Info("gossip key removed", "version", v, "fingerprint", Fingerprint(k))
		}
	}
	for i := len(keep) - 1; i >= 0; i-- {
		if err := r.kr.AddKey(keep[i]); err != nil {
			return fmt.Errorf("keys: gossip keyring: reinstalling key %s: %w", Fingerprint(keep[i]), err)
		}
	}
	return nil
}

func (r *Rotator) updateGauges() {
	ring := r.kr.GetKeys()
	r.m.keys.Set(float64(len(ring)))
	if len(ring) > 0 {
		r.m.primary.Set(float64(gossipVersionOf(r.versions, ring[0])))
	}
}

// Next is when the schedule changes next (a version becomes primary, old
// versions or the bootstrap key leave), as of the last Apply and Now(); the
// zero time when nothing is scheduled.
func (r *Rotator) Next() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.clock.Now()
	next := dkms.NextGossipChange(r.plan.Keys, now)
	consider := func(t time.Time) {
		if t.After(now) && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if r.takeover.IsZero() {
		if len(r.plan.Keys) > 0 {
			consider(r.takeoverAt(r.plan))
		}
	} else if r.hasForeignLocked() {
		consider(r.takeover.Add(r.graceLocked()))
	}
	return next
}

func (r *Rotator) hasForeignLocked() bool {
	for _, k := range r.kr.GetKeys() {
		if gossipVersionOf(r.versions, k) == 0 {
			return true
		}
	}
	return false
}

// Run applies the schedule until ctx ends: at once, whenever wake fires (a
// key message was accepted), at Next, and at least every Recheck; after a
// failure it retries within gossipRetryDelay.
func (r *Rotator) Run(ctx context.Context, wake <-chan struct{}) {
	for {
		delay := r.recheck
		if err := r.Apply(); err != nil {
			delay = min(delay, gossipRetryDelay)
		} else if next := r.Next(); !next.IsZero() {
			delay = min(delay, max(next.Sub(r.clock.Now()), 0))
		}
		t := r.clock.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-wake:
		case <-t.C():
		}
		t.Stop()
	}
}

// JoinFailed returns err, or, when err shows that the peers' gossip is
// under a key this agent does not hold, an error wrapping both
// ErrGossipKeyStale and err that names the recovery, logged at error level
// (at most once a minute). A nil rotator (gossip encryption off) returns
// err.
func (r *Rotator) JoinFailed(err error) error {
	if r == nil || err == nil || !strings.Contains(strings.ToLower(err.Error()), "no installed keys could decrypt") {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	keys := r.describeLocked()
	err = fmt.Errorf("%w: the cluster gossips under a key this agent does not hold (installed: %s); "+
		"it was offline during a gossip key rotation or has not received the fleet's gossip key: "+
		"fetch its pending key messages from the control plane (its peers still accept its keys until the rotation's grace period ends), "+
		"or re-enroll it if its keyring is lost or it was revoked: %w", ErrGossipKeyStale, keys, err)
	if now := r.clock.Now(); r.staleLog.IsZero() || now.Sub(r.staleLog) >= gossipStaleLogEvery {
		r.staleLog = now
		r.log.Error("cannot rejoin the cluster: gossip keys out of date; fetch the pending key messages from the control plane or re-enroll this agent",
			"keys", keys, "err", err)
	}
	return err
}

// RingState describes the gossip keyring without its key material.
type RingState struct {
	Primary   uint32   // dkms version of the primary; 0 for the bootstrap key
	Versions  []uint32 // dkms versions installed, ascending
	Bootstrap bool     // the bootstrap key (or another key dkms did not deliver) is installed
}

// endedGrace is the bootstrap key's grace period after EndGrace: the
// clock skew between agents switching from it at the same scheduled
// instant.
const endedGrace = 5 * time.Second

// EndGrace shortens the grace period of the bootstrap key (and of any
// other key dkms did not deliver) to endedGrace after the takeover by a
// dkms version: at once when that is past, else endedGrace after the
// takeover. An agent revoked from the fleet knows the bootstrap key, which
// every agent shares, so a revocation must not leave it installed for the
// rest of the hour. Agents that have not taken over by then (not
// enrolled, or cut off from the control plane since before their first
// gossip key) lose their peers until they receive the fleet's gossip key.
func (r *Rotator) EndGrace() {
	r.mu.Lock()
	if r.graceEnded {
		r.mu.Unlock()
		return
	}
	r.graceEnded = true
	r.log.Info("bootstrap gossip key grace shortened (a peer was revoked)", "grace", endedGrace, "takeover", r.takeover)
	r.mu.Unlock()
	r.Apply() //nolint:errcheck // logged; Run retries
}

// graceLocked is the bootstrap key's grace period after the takeover.
func (r *Rotator) graceLocked() time.Duration {
	if r.graceEnded {
		return min(r.grace, endedGrace)
	}
	return r.grace
}

// State describes the keyring now.
func (r *Rotator) State() RingState {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stateLocked()
}

func (r *Rotator) stateLocked() RingState {
	var st RingState
	ring := r.kr.GetKeys()
	for i, k := range ring {
		v := gossipVersionOf(r.versions, k)
		if v == 0 {
			st.Bootstrap = true
		} else {
			st.Versions = append(st.Versions, v)
		}
		if i == 0 {
			st.Primary = v
		}
	}
	slices.Sort(st.Versions)
	return st
}

func (r *Rotator) describeLocked() string {
	st := r.stateLocked()
	var parts []string
	for _, v := range st.Versions {
		s := "v" + strconv.FormatUint(uint64(v), 10)
		if v == st.Primary {
			s += " (primary)"
		}
		parts = append(parts, s)
	}
	if st.Bootstrap {
		s := "bootstrap key"
		if st.Primary == 0 {
			s += " (primary)"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ", ")
}

// checkGossipPlan rejects a plan memberlist cannot hold: a key of the wrong
// size, a version or key listed twice, or a primary not among the keys.
func checkGossipPlan(p dkms.GossipKeyring) error {
	if len(p.Keys) == 0 {
		return nil
	}
	seen := map[uint32]bool{}
	for i, k := range p.Keys {
		if err := memberlist.ValidateKey(k.Key); err != nil {
			return fmt.Errorf("keys: gossip keyring: version %d: %w", k.Version, err)
		}
		if k.Version == 0 || seen[k.Version] {
			return fmt.Errorf("keys: gossip keyring: version %d is invalid or listed twice", k.Version)
		}
		seen[k.Version] = true
		for _, o := range p.Keys[:i] {
			if bytes.Equal(o.Key, k.Key) {
				return fmt.Errorf("keys: gossip keyring: versions %d and %d have the same key", o.Version, k.Version)
			}
		}
	}
	if p.PrimaryKey() == nil {
		return fmt.Errorf("keys: gossip keyring: primary version %d is not among the planned versions %v", p.Primary, p.Versions())
	}
	return nil
}

func ringHasKey(ring [][]byte, key []byte) bool {
	return slices.ContainsFunc(ring, func(k []byte) bool { return bytes.Equal(k, key) })
}

// versionOfKey is the version whose key is key, or 0.
func gossipVersionOf(vs map[uint32][]byte, key []byte) uint32 {
	for v, k := range vs {
		if bytes.Equal(k, key) {
			return v
		}
	}
	return 0
}

func gossipPlanHasKey(p dkms.GossipKeyring, key []byte) bool {
	return slices.ContainsFunc(p.Keys, func(k dkms.GossipKeyVersion) bool { return bytes.Equal(k.Key, key) })
}

func gossipActivation(p dkms.GossipKeyring, v uint32) time.Time {
	for _, k := range p.Keys {
		if k.Version == v {
			return k.ActivateAt
		}
	}
	return time.Time{}
}

// GossipKeySource plans the gossip keyring from the versions of the key
// cpapi.GossipKeyName (created by the control plane at its first
// unseal) in the keyring keys returns. No keyring (nil until the agent is
// enrolled and its keyring open) counts as holding no gossip key.
func GossipKeySource(keys func() *dkms.AgentKeys) func(time.Time) (dkms.GossipKeyring, error) {
	return func(now time.Time) (dkms.GossipKeyring, error) {
		ak := keys()
		if ak == nil {
			return dkms.GossipKeyring{}, fmt.Errorf("keys: no dkms keyring yet (not enrolled): %w", dkms.ErrUnknownKey)
		}
		return ak.GossipKeyring(cpapi.GossipKeyName, now)
	}
}
