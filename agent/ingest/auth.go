package ingest

import (
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/agent/devcred"
)

// Identity is a client the embedded broker admits with BrokerConfig.Auth:
// a device of the registry, or a service user (the agent's own).
type Identity struct {
	// Name is the MQTT user name: the device id.
	Name string
	// Hash is the secret's "$7$" hash (package devcred).
	Hash string
	// Publish and Subscribe are the topic filters the client may publish
	// to, and subscribe to and receive from.
	Publish, Subscribe []string
	// Disabled refuses the client's connections.
	Disabled bool
	// AnyClientID lets the client use any MQTT client id; otherwise the
	// client id must be Name, or start with Name + "/".
	AnyClientID bool
}

// AuthConfig makes the embedded broker authenticate every client against
// the identities given to Broker.SetIdentities and confine each to its
// topics.
type AuthConfig struct {
	// AllowAnonymous admits clients that send no user name, with access
	// to every topic (a development setting). They cannot use a
	// registered device's client id.
	AllowAnonymous bool
	// CacheEntries bounds the cache of verified secrets (a hash of the
	// secret per identity), which spares reconnecting devices the PBKDF2
	// derivation. Default 4096; -1 turns the cache off.
	CacheEntries int
	// Registry receives the auth metrics; nil registers none.
	Registry *prometheus.Registry
	// Identities are admitted from the start (Broker.SetIdentities
	// replaces them).
	Identities []Identity
}

// Refusal reasons, the "reason" label of
// edgefleet_broker_auth_refused_total.
const (
	RefuseAnonymous = "anonymous"        // no user name, anonymous clients not allowed
	RefuseUnknown   = "unknown_user"     // no such identity
	RefuseDisabled  = "disabled"         // the identity is disabled
	RefuseSecret    = "bad_secret"       // wrong secret
	RefuseClientID  = "client_id"        // the client id belongs to another identity
	RefusePublish   = "publish_denied"   // publish outside the identity's topics
	RefuseSubscribe = "subscribe_denied" // subscribe or delivery outside its topics
)

// defaultAuthCache is AuthConfig.CacheEntries' default.
const defaultAuthCache = 4096

// authHook authenticates connections and checks topics (mochi hooks
// OnConnectAuthenticate and OnACLCheck).
type authHook struct {
	mochi.HookBase
	anon bool
	log  *slog.Logger
	ids  atomic.Pointer[map[string]*authID]

	cmu      sync.Mutex
	cache    map[string]cached // user name -> verified secret
	order    []string          // cache keys, oldest first
	maxCache int

	refused  *prometheus.CounterVec
	accepted *prometheus.CounterVec
	kicked   *prometheus.CounterVec
}

// authID is an Identity with its hash parsed (nil when malformed: the
// identity then cannot log in).
type authID struct {
	Identity
	hash *devcred.Hash
}

type cached struct {
	hash   string   // the identity's hash the secret was verified against
	secret [32]byte // SHA-256 of the secret
}

func newAuthHook(cfg *AuthConfig, log *slog.Logger) (*authHook, error) {
	h := &authHook{anon: cfg.AllowAnonymous, log: log, cache: map[string]cached{}, maxCache: cfg.CacheEntries,
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgefleet_broker_auth_refused_total",
			Help: "Connections, publishes and subscriptions the embedded broker refused, by reason."}, []string{"reason"}),
		accepted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgefleet_broker_auth_accepted_total",
			Help: "Connections the embedded broker admitted, by how: secret (PBKDF2 derived), cached (secret verified before), anonymous."}, []string{"how"}),
		kicked: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgefleet_broker_auth_disconnects_total",
			Help: "Live connections the embedded broker closed because their identity changed, by reason: disabled, removed, rotated."}, []string{"reason"}),
	}
	switch {
	case h.maxCache == 0:
		h.maxCache = defaultAuthCache
	case h.maxCache < 0:
		h.maxCache = 0
	}
	for _, r := range []string{RefuseAnonymous, RefuseUnknown, RefuseDisabled, RefuseSecret, RefuseClientID, RefusePublish, RefuseSubscribe} {
		h.refused.WithLabelValues(r)
	}
	for _, r := range []string{"secret", "cached", "anonymous"} {
		h.accepted.WithLabelValues(r)
	}
	for _, r := range []string{"disabled", "removed", "rotated"} {
		h.kicked.WithLabelValues(r)
	}
	empty := map[string]*authID{}
	h.ids.Store(&empty)
	h.set(cfg.Identities)
	if cfg.Registry != nil {
		for _, c := range []prometheus.Collector{h.refused, h.accepted, h.kicked} {
			if err := cfg.Registry.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return h, nil
}

// authHookID names the hook.
const authHookID = "edgefleet-auth"

func (h *authHook) ID() string { return authHookID }

func (h *authHook) Provides(e byte) bool {
	return e == mochi.OnConnectAuthenticate || e == mochi.OnACLCheck
}

func (h *authHook) refuse(reason string, cl *mochi.Client) bool {
	h.refused.WithLabelValues(reason).Inc()
	h.log.Debug("refused", "reason", reason, "client", cl.ID, "user", string(cl.Properties.Username), "remote", cl.Net.Remote)
	return false
}

// OnConnectAuthenticate admits a client whose user name is an active
// identity and whose password is its secret.
func (h *authHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	ids := *h.ids.Load()
	user := string(pk.Connect.Username)
	if user == "" && !pk.Connect.UsernameFlag {
		if !h.anon {
			return h.refuse(RefuseAnonymous, cl)
		}
		if owner(ids, cl.ID) != nil {
			return h.refuse(RefuseClientID, cl)
		}
		h.accepted.WithLabelValues("anonymous").Inc()
		return true
	}
	id := ids[user]
	switch {
	case id == nil:
		return h.refuse(RefuseUnknown, cl)
	case id.Disabled:
		return h.refuse(RefuseDisabled, cl)
	case !id.AnyClientID && cl.ID != user && !strings.HasPrefix(cl.ID, user+"/"):
		return h.refuse(RefuseClientID, cl)
	case id.AnyClientID && owner(ids, cl.ID) != nil:
		return h.refuse(RefuseClientID, cl)
	case id.hash == nil:
		return h.refuse(RefuseSecret, cl)
	}
	secret := pk.Connect.Password
	sum := sha256.Sum256(secret)
	h.cmu.Lock()
	c, ok := h.cache[user]
	h.cmu.Unlock()
	if ok && c.hash == id.Hash && subtle.ConstantTimeCompare(c.secret[:], sum[:]) == 1 {
		h.accepted.WithLabelValues("cached").Inc()
		return true
	}
	if !id.hash.Verify(string(secret)) {
		return h.refuse(RefuseSecret, cl)
	}
	h.remember(user, cached{hash: id.Hash, secret: sum})
	h.accepted.WithLabelValues("secret").Inc()
	return true
}

// owner is the device identity whose client ids include clientID (id,
// or id/...); nil when none.
func owner(ids map[string]*authID, clientID string) *authID {
	if id := ids[clientID]; id != nil && !id.AnyClientID {
		return id
	}
	if i := strings.IndexByte(clientID, '/'); i > 0 {
		if id := ids[clientID[:i]]; id != nil && !id.AnyClientID {
			return id
		}
	}
	return nil
}

// remember caches a verified secret, evicting the oldest entry when full.
func (h *authHook) remember(user string, c cached) {
	if h.maxCache == 0 {
		return
	}
	h.cmu.Lock()
	defer h.cmu.Unlock()
	if _, ok := h.cache[user]; !ok {
		if len(h.order) >= h.maxCache {
			delete(h.cache, h.order[0])
			h.order = h.order[1:]
		}
		h.order = append(h.order, user)
	}
	h.cache[user] = c
}

// OnACLCheck allows a publish (write) on a topic the client's identity
// may publish to, and a subscription or delivery (read) within the
// filters it may subscribe to. The identity is read at each check, so
// changed topics apply to live connections.
func (h *authHook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	if cl.Net.Inline {
		return true
	}
	if len(cl.Properties.Username) == 0 {
		return h.anon // admitted only when anonymous clients are
	}
	id := (*h.ids.Load())[string(cl.Properties.Username)]
	if id != nil && !id.Disabled {
		if write {
			for _, f := range id.Publish {
				if devcred.Matches(f, topic) {
					return true
				}
			}
		} else {
			for _, f := range id.Subscribe {
				if devcred.Covers(f, topic) {
					return true
				}
			}
		}
	}
	if write {
		return h.refuse(RefusePublish, cl)
	}
	return h.refuse(RefuseSubscribe, cl)
}

// set replaces the identities and returns, for each live connection to
// close, why: its identity was removed, disabled, or given a new secret.
func (h *authHook) set(list []Identity) map[string]string {
	next := make(map[string]*authID, len(list))
	for _, id := range list {
		a := &authID{Identity: id}
		if hh, err := devcred.ParseHash(id.Hash); err == nil {
			a.hash = &hh
		} else {
			h.log.Warn("identity has a malformed secret hash; it cannot log in", "user", id.Name, "err", err)
		}
		next[id.Name] = a
	}
	prev := *h.ids.Swap(&next)
	gone := map[string]string{}
	for name, old := range prev {
		cur := next[name]
		switch {
		case cur == nil:
			gone[name] = "removed"
		case cur.Disabled && !old.Disabled:
			gone[name] = "disabled"
		case cur.Hash != old.Hash:
			gone[name] = "rotated"
		}
	}
	if len(gone) > 0 {
		h.cmu.Lock()
		for name := range gone {
			delete(h.cache, name) // order keeps the key until it ages out
		}
		h.cmu.Unlock()
	}
	return gone
}

// SetIdentities replaces the identities the broker admits (BrokerConfig.Auth
// set; otherwise it does nothing) and closes the live connections of
// identities that were removed, disabled or given a new secret, with
// reason code 0x87 (not authorized) for MQTT 5 clients. It returns how
// many connections it closed.
func (b *Broker) SetIdentities(ids []Identity) int {
	if b.auth == nil {
		return 0
	}
	gone := b.auth.set(ids)
	if len(gone) == 0 {
		return 0
	}
	n := 0
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Inline || cl.Closed() || len(cl.Properties.Username) == 0 {
			continue
		}
		why, ok := gone[string(cl.Properties.Username)]
		if !ok {
			continue
		}
		b.log.Info("closing the connection of a changed identity", "user", string(cl.Properties.Username), "client", cl.ID, "reason", why)
		_ = b.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
		b.auth.kicked.WithLabelValues(why).Inc()
		n++
	}
	return n
}
