package controlplane

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// keyRoutes are the key service's endpoints; buildRoutes appends them.
func (s *Server) keyRoutes() []route {
	return []route{
		{method: "GET", path: "/v1/keys", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleListKeys},
		{method: "POST", path: "/v1/keys", access: accessBearer, role: cpapi.RoleOperator, action: "key." + dkms.ActionCreateKey, handle: s.handleCreateKey},
		{method: "GET", path: "/v1/keys/status", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleKeyStatus},
		{method: "POST", path: "/v1/keys/unseal", access: accessBearer, role: cpapi.RoleAdmin, action: "key." + dkms.ActionUnseal, handle: s.handleUnseal},
		{method: "POST", path: "/v1/keys/seal", access: accessBearer, role: cpapi.RoleAdmin, action: "key." + dkms.ActionSeal, handle: s.handleSeal},
		{method: "POST", path: "/v1/keys/rotate-kek", access: accessBearer, role: cpapi.RoleAdmin, action: "key." + dkms.ActionRotateKEK, handle: s.handleRotateKEK},
		{method: "POST", path: "/v1/keys/rekey-root", access: accessBearer, role: cpapi.RoleAdmin, action: "key." + dkms.ActionRekeyRoot, handle: s.handleRekeyRoot},
		{method: "GET", path: "/v1/keys/verifying-key", access: accessAgent, handle: s.handleVerifyingKey},
		{method: "POST", path: "/v1/keys/{name}/rotate", access: accessBearer, role: cpapi.RoleOperator, action: "key." + dkms.ActionRotate, handle: s.handleRotateKey},
		{method: "POST", path: "/v1/keys/{name}/rewrap", access: accessBearer, role: cpapi.RoleOperator, action: "key." + dkms.ActionRewrap, handle: s.handleRewrap},
		{method: "PUT", path: "/v1/keys/{name}/policy", access: accessBearer, role: cpapi.RoleOperator, action: "key." + dkms.ActionSetPolicy, handle: s.handleSetKeyPolicy},
		{method: "POST", path: "/v1/keys/{name}/versions/{version}/retire", access: accessBearer, role: cpapi.RoleOperator, action: "key." + dkms.ActionRetire, handle: s.handleRetireKeyVersion},
		{method: "POST", path: "/v1/keys/{name}/versions/{version}/destroy", access: accessBearer, role: cpapi.RoleAdmin, action: "key." + dkms.ActionDestroy, handle: s.handleDestroyKeyVersion},
		{method: "GET", path: "/v1/agent/keys", access: accessAgent, handle: s.handleAgentKeys},
		{method: "GET", path: "/v1/agent/keys/relay", access: accessAgent, handle: s.handleAgentKeysRelay},
	}
}

// requireUnsealed answers 503 while sealed, before any work is done.
func (s *Server) requireUnsealed() error {
	if s.keys.svc.Status().Sealed {
		return s.sealedError()
	}
	return nil
}

// keyName reads and checks the {name} path value.
func keyName(r *http.Request, c *call) (string, error) {
	name := r.PathValue("name")
	c.target = name
	if name == "" || len(name) > 128 {
		return "", badRequest("key name: must be 1..128 characters")
	}
	return name, nil
}

func keyVersion(r *http.Request, c *call, name string) (uint32, error) {
	v := r.PathValue("version")
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n == 0 {
		return 0, badRequest("version: %q must be a key version number (1, 2, ...)", v)
	}
	c.target = versionText(name, uint32(n))
	return uint32(n), nil
}

// writeKey answers with the key's current description.
func (s *Server) writeKey(ctx context.Context, w http.ResponseWriter, status int, name string) error {
	info, err := s.keys.svc.Key(ctx, name)
	if err != nil {
		return s.keyError(err)
	}
	writeJSON(w, status, keyToWire(info))
	return nil
}

func (s *Server) handleKeyStatus(w http.ResponseWriter, r *http.Request, c *call) error {
	writeJSON(w, http.StatusOK, s.KeyStatus())
	return nil
}

func (s *Server) handleUnseal(w http.ResponseWriter, r *http.Request, c *call) error {
	c.target = "root"
	var req cpapi.UnsealRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	if strings.TrimSpace(req.Share) == "" {
		return badRequest("share: missing root key share (text form %q...)", dkms.ShareTextPrefix)
	}
	share, err := dkms.ParseShare(req.Share)
	if err != nil {
		return badRequest("share: %s", cleanKeyError(err.Error()))
	}
	wasSealed := s.keys.svc.Status().Sealed
	if _, err := s.keys.svc.Unseal(keyCtx(r.Context(), c), share); err != nil {
		if errors.Is(err, dkms.ErrNotInitialized) {
			return s.sealedError()
		}
		return s.keyError(err)
	}
	st := s.KeyStatus()
	if wasSealed && !st.Sealed {
		s.log.Info("key service unsealed", "by", c.actor)
		s.ensureBuiltinKeys(context.WithoutCancel(r.Context()))
		s.reconcileRevocations(context.WithoutCancel(r.Context()))
	}
	writeJSON(w, http.StatusOK, st)
	return nil
}

func (s *Server) handleSeal(w http.ResponseWriter, r *http.Request, c *call) error {
	c.target = "root"
	s.keys.svc.Seal(keyCtx(r.Context(), c))
	s.log.Warn("key service sealed by an operator; key operations are refused until it is unsealed", "by", c.actor)
	writeJSON(w, http.StatusOK, s.KeyStatus())
	return nil
}

// handleRotateKEK creates a new key-encryption key version, rewraps every
// key version under it and destroys the older KEK versions.
func (s *Server) handleRotateKEK(w http.ResponseWriter, r *http.Request, c *call) error {
	c.target = dkms.KEKName
	if len(r.URL.Query()) > 0 {
		return badRequest("%s takes no query parameters", r.URL.Path)
	}
	if err := s.requireUnsealed(); err != nil {
		return err
	}
	v, err := s.keys.svc.RotateKEK(keyCtx(r.Context(), c))
	if err != nil {
		return s.keyError(err)
	}
	s.log.Info("key-encryption key rotated", "by", c.actor, "kek_version", v)
	writeJSON(w, http.StatusOK, cpapi.RotateKEKResponse{KEKVersion: v})
	return nil
}

// handleRekeyRoot replaces the root key with a new one split into new
// shares and answers them, once. The audit record (dkms's rekey-root
// event) names the new root version, never a share.
func (s *Server) handleRekeyRoot(w http.ResponseWriter, r *http.Request, c *call) error {
	c.target = "root"
	var req cpapi.RekeyRootRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := checkRekeyRequest(req); err != nil {
		return err
	}
	if err := s.requireUnsealed(); err != nil {
		return err
	}
	shares, err := s.keys.svc.RekeyRoot(keyCtx(r.Context(), c), req.Threshold, req.Shares)
	if err != nil {
		return s.keyError(err)
	}
	// Shares of the first start not yet taken are useless now.
	s.keys.sharesMu.Lock()
	s.keys.rootShares = nil
	s.keys.sharesMu.Unlock()
	out := cpapi.RekeyRootResponse{
		RootVersion: shares[0].RootVersion, RootKCV: hex.EncodeToString(shares[0].KCV[:]),
		SharesNeeded: req.Threshold, SharesTotal: len(shares), Shares: make([]string, len(shares)),
	}
	for i, sh := range shares {
		out.Shares[i] = sh.Text()
	}
	s.log.Warn("root key replaced: the previous shares no longer unseal; the new ones were sent to the caller once",
		"by", c.actor, "root_version", out.RootVersion, "threshold", out.SharesNeeded, "shares", out.SharesTotal)
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, out)
	return nil
}

// checkRekeyRequest refuses a split dkms would refuse, naming the field.
func checkRekeyRequest(req cpapi.RekeyRootRequest) error {
	switch {
	case req.Shares < 1 || req.Shares > dkms.MaxShares:
		return badRequest("shares: %d out of range 1..%d (how many shares the new root key is split into)", req.Shares, dkms.MaxShares)
	case req.Threshold < 1 || req.Threshold > req.Shares:
		return badRequest("threshold: %d out of range 1..shares (%d) (how many shares unseal)", req.Threshold, req.Shares)
	}
	return nil
}

func (s *Server) handleListKeys(w http.ResponseWriter, r *http.Request, c *call) error {
	if len(r.URL.Query()) > 0 {
		return badRequest("GET /v1/keys takes no query parameters")
	}
	keys, err := s.keys.svc.Keys(r.Context())
	if err != nil {
		return s.keyError(err)
	}
	out := cpapi.KeysResponse{Keys: make([]cpapi.Key, 0, len(keys)), Sealed: s.keys.svc.Status().Sealed}
	for _, k := range keys {
		out.Keys = append(out.Keys, keyToWire(k))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) handleCreateKey(w http.ResponseWriter, r *http.Request, c *call) error {
	var req cpapi.CreateKeyRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	c.target = req.Name
	if req.Name == "" {
		return badRequest("name: missing")
	}
	purpose, err := purposeFromWire(req.Purpose)
	if err != nil {
		return err
	}
	policy, err := policyFromWire(req.Policy, s.cfg.Keys.defaultRotation())
	if err != nil {
		return err
	}
	if err := s.requireUnsealed(); err != nil {
		return err
	}
	info, err := s.keys.svc.CreateKey(keyCtx(r.Context(), c), req.Name, purpose, policy)
	if err != nil {
		return s.keyError(err)
	}
	writeJSON(w, http.StatusCreated, keyToWire(info))
	return nil
}

func (s *Server) handleRotateKey(w http.ResponseWriter, r *http.Request, c *call) error {
	name, err := keyName(r, c)
	if err != nil {
		return err
	}
	if err := s.requireUnsealed(); err != nil {
		return err
	}
	vi, err := s.keys.svc.Rotate(keyCtx(r.Context(), c), name)
	if err != nil {
		return s.keyError(err)
	}
	s.keys.metrics.rotations.WithLabelValues("operator").Inc()
	c.target = versionText(name, vi.Version)
	return s.writeKey(r.Context(), w, http.StatusOK, name)
}

func (s *Server) handleRewrap(w http.ResponseWriter, r *http.Request, c *call) error {
	name, err := keyName(r, c)
	if err != nil {
		return err
	}
	var req cpapi.RewrapRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	if len(req.Envelope) == 0 {
		return badRequest("envelope: missing (base64 of a data-key envelope)")
	}
	h, _, err := pqcrypto.ParseHeader(req.Envelope)
	if err != nil {
		return badRequest("envelope: %s", cleanKeyError(err.Error()))
	}
	if err := s.requireUnsealed(); err != nil {
		return err
	}
	env, err := s.keys.svc.Rewrap(keyCtx(r.Context(), c), name, req.Envelope, req.AAD)
	if err != nil {
		return s.keyError(err)
	}
	nh, _, err := pqcrypto.ParseHeader(env)
	if err != nil {
		return fmt.Errorf("controlplane: rewrapped envelope: %w", err)
	}
	writeJSON(w, http.StatusOK, cpapi.RewrapResponse{Key: name, FromVersion: h.KeyVersion, Version: nh.KeyVersion, Envelope: env})
	return nil
}

func (s *Server) handleSetKeyPolicy(w http.ResponseWriter, r *http.Request, c *call) error {
	name, err := keyName(r, c)
	if err != nil {
		return err
	}
	var req cpapi.KeyPolicy
	if err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	policy, err := policyFromWire(&req, s.cfg.Keys.defaultRotation())
	if err != nil {
		return err
	}
	if err := s.requireUnsealed(); err != nil {
		return err
	}
	info, err := s.keys.svc.SetPolicy(keyCtx(r.Context(), c), name, policy)
	if err != nil {
		return s.keyError(err)
	}
	writeJSON(w, http.StatusOK, keyToWire(info))
	return nil
}

func (s *Server) handleRetireKeyVersion(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.changeKeyVersion(w, r, c, s.keys.svc.Retire)
}

func (s *Server) handleDestroyKeyVersion(w http.ResponseWriter, r *http.Request, c *call) error {
	return s.changeKeyVersion(w, r, c, s.keys.svc.Destroy)
}

func (s *Server) changeKeyVersion(w http.ResponseWriter, r *http.Request, c *call, op func(context.Context, string, uint32) (dkms.VersionInfo, error)) error {
	name, err := keyName(r, c)
	if err != nil {
		return err
	}
	version, err := keyVersion(r, c, name)
	if err != nil {
		return err
	}
	if len(r.URL.Query()) > 0 {
		return badRequest("%s takes no query parameters", r.URL.Path)
	}
	if err := s.requireUnsealed(); err != nil {
		return err
	}
	if _, err := op(keyCtx(r.Context(), c), name, version); err != nil {
		return s.keyError(err)
	}
	return s.writeKey(r.Context(), w, http.StatusOK, name)
}

// ---- agent side (mutual TLS) ----

func (s *Server) handleVerifyingKey(w http.ResponseWriter, r *http.Request, c *call) error {
	vk := s.keys.signer.Public()
	writeJSON(w, http.StatusOK, cpapi.VerifyingKeyResponse{
		Algorithm: "ML-DSA-65", PublicKey: vk.Bytes(), Fingerprint: vk.Fingerprint(), Context: dkms.KeyMessageContext,
	})
	return nil
}

// keyCursor is the key state an agent was brought to: per key it may hold
// (sorted by name), the minimum decryption version, the newest version and
// the state of every version from the minimum (or 1) to the newest. Its
// text form (AgentKeysResponse.Cursor) is base64url of
//
//	1 byte     format (1)
//	per key:   1 byte name length, name,
//	           uvarint minimum decryption version, uvarint newest version,
//	           uvarint number of runs, per run: 1 byte state, uvarint count
//
// where the runs cover the versions in order. Comparing it with the current
// state gives exactly the versions an agent lacks, whatever the clocks did.
type keyCursor struct {
	keys []cursorKey
}

type cursorKey struct {
	name   string
	min    uint32
	latest uint32
	states []dkms.State // versions first()..latest
}

// first is the lowest version the cursor describes.
func (k cursorKey) first() uint32 { return max(k.min, 1) }

func (k cursorKey) state(v uint32) (dkms.State, bool) {
	if v < k.first() || v > k.latest {
		return 0, false
	}
	return k.states[v-k.first()], true
}

const (
	cursorFormat   = 1
	maxCursorBytes = 16 << 10
)

func (c keyCursor) String() string {
	b := []byte{cursorFormat}
	for _, k := range c.keys {
		b = append(b, byte(len(k.name)))
		b = append(b, k.name...)
		b = binary.AppendUvarint(b, uint64(k.min))
		b = binary.AppendUvarint(b, uint64(k.latest))
		var runs [][2]uint64
		for _, st := range k.states {
			if n := len(runs); n > 0 && runs[n-1][0] == uint64(st) {
				runs[n-1][1]++
			} else {
				runs = append(runs, [2]uint64{uint64(st), 1})
			}
		}
		b = binary.AppendUvarint(b, uint64(len(runs)))
		for _, r := range runs {
			b = append(b, byte(r[0]))
			b = binary.AppendUvarint(b, r[1])
		}
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func parseKeyCursor(v string) (keyCursor, error) {
	fail := func(why string) (keyCursor, error) {
		return keyCursor{}, badRequest("after: not a cursor returned by GET /v1/agent/keys (%s); omit it to fetch everything", why)
	}
	if len(v) > base64.RawURLEncoding.EncodedLen(maxCursorBytes) {
		return fail("too long")
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(v)
	if err != nil {
		return fail("not base64url")
	}
	if len(b) == 0 || b[0] != cursorFormat {
		return fail("unknown format")
	}
	b = b[1:]
	uvarint := func() (uint32, bool) {
		n, size := binary.Uvarint(b)
		if size <= 0 || n > 1<<32-1 {
			return 0, false
		}
		b = b[size:]
		return uint32(n), true
	}
	var c keyCursor
	for len(b) > 0 {
		nl := int(b[0])
		if nl == 0 || len(b) < 1+nl {
			return fail("truncated key name")
		}
		k := cursorKey{name: string(b[1 : 1+nl])}
		b = b[1+nl:]
		if n := len(c.keys); n > 0 && c.keys[n-1].name >= k.name {
			return fail("keys out of order")
		}
		var ok1, ok2, ok3 bool
		var runs uint32
		k.min, ok1 = uvarint()
		k.latest, ok2 = uvarint()
		runs, ok3 = uvarint()
		if !ok1 || !ok2 || !ok3 || k.latest < k.first()-1 || k.latest-k.first()+1 > maxCursorBytes {
			return fail("bad version range")
		}
		want := int(k.latest - k.first() + 1)
		for range runs {
			if len(b) < 2 {
				return fail("truncated states")
			}
			st := dkms.State(b[0])
			b = b[1:]
			n, ok := uvarint()
			if !ok || n == 0 || st < dkms.StatePrimary || st > dkms.StateDestroyed || int(n) > want-len(k.states) {
				return fail("bad state run")
			}
			for range n {
				k.states = append(k.states, st)
			}
		}
		if len(k.states) != want {
			return fail("states do not cover the versions")
		}
		c.keys = append(c.keys, k)
	}
	return c, nil
}

// agentKeyState is what an agent should hold: the keys its policy allows
// and, per key, its versions from the minimum decryption version on.
func agentKeyState(a dkms.AgentInfo, keys []dkms.KeyInfo) (keyCursor, []dkms.KeyInfo) {
	var allowed []dkms.KeyInfo
	for _, k := range keys {
		if k.Policy.Allows(a.ID, a.Labels) {
			allowed = append(allowed, k)
		}
	}
	slices.SortFunc(allowed, func(x, y dkms.KeyInfo) int { return strings.Compare(x.Name, y.Name) })
	var c keyCursor
	for _, k := range allowed {
		ck := cursorKey{name: k.Name, min: k.Policy.MinDecryptVersion, latest: k.Latest}
		for _, v := range k.Versions {
			if v.Version >= ck.first() && v.Version <= ck.latest {
				ck.states = append(ck.states, v.State)
			}
		}
		c.keys = append(c.keys, ck)
	}
	return c, allowed
}

// missing lists, per key, the versions an agent at cursor prev lacks or
// holds in an older state. A key whose minimum decryption version changed
// and nothing else gets its primary version again, which carries the new
// minimum.
func missing(prev keyCursor, allowed []dkms.KeyInfo) map[string][]uint32 {
	held := map[string]cursorKey{}
	for _, k := range prev.keys {
		held[k.name] = k
	}
	out := map[string][]uint32{}
	for _, k := range allowed {
		p, known := held[k.Name]
		var vs []uint32
		for _, v := range k.Versions {
			if v.Version < k.Policy.MinDecryptVersion {
				continue
			}
			if st, ok := p.state(v.Version); !known || !ok || st != v.State {
				vs = append(vs, v.Version)
			}
		}
		if len(vs) == 0 && known && p.min != k.Policy.MinDecryptVersion && k.Primary != 0 {
			vs = append(vs, k.Primary)
		}
		if len(vs) > 0 {
			out[k.Name] = vs
		}
	}
	return out
}

// agentKeysParams are the query parameters of GET /v1/agent/keys.
var agentKeysParams = []string{"after", "wait"}

// handleAgentKeys answers the key messages the calling agent should
// accept. Without "after" it sends everything the agent should hold
// (dkms CatchUp). With the cursor of its previous answer it sends exactly
// the versions that are new or changed state since, and nothing when
// nothing changed; an unchanged state costs no cryptography. With "wait"
// (a duration up to MaxKeyWatchWait) a request that would get nothing is
// held until the agent's key state changes, then answered as above, or
// answered empty with the same cursor when the wait ends, the client goes
// away, or the server shuts down.
func (s *Server) handleAgentKeys(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	if err := checkQuery(q, agentKeysParams...); err != nil {
		return err
	}
	after := q.Get("after")
	var prev keyCursor
	if after != "" {
		var err error
		if prev, err = parseKeyCursor(after); err != nil {
			return err
		}
		// The cursor an agent sends is the key state it accepted.
		s.noteConfirmed(c.agentID, prev)
	}
	wait, err := parseKeyWait(q.Get("wait"))
	if err != nil {
		return err
	}
	ctx := keyCtx(r.Context(), c)
	fail := func(err error) error {
		s.keys.metrics.fetches.WithLabelValues("error").Inc()
		return err
	}
	var (
		timer   *time.Timer
		expired <-chan time.Time
		cur     keyCursor
		curText string
		allowed []dkms.KeyInfo
	)
	var (
		revoked     []byte
		listAtStart uint64
	)
	for {
		changed := s.keys.watch.changed()
		var err error
		if cur, allowed, err = s.agentKeyState(ctx, c); err != nil {
			return fail(err)
		}
		curText = cur.String()
		// A new revocation list ends a held request too (its version
		// grows with every decommission).
		raw, version, err := s.revocationList(ctx)
		if err != nil {
			return fail(err)
		}
		if revoked == nil && timer == nil {
			listAtStart = version
		}
		revoked = raw
		if after != curText || wait == 0 || version != listAtStart {
			break
		}
		if timer == nil {
			if err := extendDeadlines(w, wait+KeyWatchDeadlineMargin); err != nil {
				s.log.Warn("cannot extend the connection deadlines of a held key request; the server's timeouts apply", "agent", c.agentID, "err", err)
			}
			timer = time.NewTimer(wait)
			defer timer.Stop()
			expired = timer.C
			s.keys.metrics.held.Inc()
			s.keys.watch.held.Add(1)
			defer func() {
				s.keys.metrics.held.Dec()
				s.keys.watch.held.Add(-1)
			}()
		}
		select {
		case <-changed:
			continue
		case <-expired:
		case <-s.keys.watch.closing:
		case <-r.Context().Done():
			// The client went away: nobody reads an answer.
			return nil
		}
		break
	}
	if after == curText {
		s.keys.noteFetch(c.agentID, curText, cur)
		s.keys.metrics.fetches.WithLabelValues("unchanged").Inc()
		writeJSON(w, http.StatusOK, cpapi.AgentKeysResponse{Messages: [][]byte{}, Cursor: curText, Revocations: revoked})
		return nil
	}
	if err := s.requireUnsealed(); err != nil {
		return fail(err)
	}
	var msgs []*dkms.KeyMessage
	kind := "full"
	if after == "" {
		if msgs, err = s.keys.svc.CatchUp(ctx, c.agentID); err != nil {
			return fail(s.keyError(err))
		}
	} else {
		kind = "incremental"
		need := missing(prev, allowed)
		for _, k := range allowed {
			for _, v := range need[k.Name] {
				m, err := s.keys.svc.MessageFor(ctx, c.agentID, k.Name, v)
				if err != nil {
					return fail(s.keyError(err))
				}
				msgs = append(msgs, m)
			}
		}
	}
	out := cpapi.AgentKeysResponse{Messages: make([][]byte, 0, len(msgs)), Cursor: curText, Revocations: revoked}
	for _, m := range msgs {
		b, err := m.MarshalBinary()
		if err != nil {
			return fail(fmt.Errorf("controlplane: encoding a key message: %w", err))
		}
		out.Messages = append(out.Messages, b)
	}
	s.keys.noteFetch(c.agentID, curText, cur)
	s.keys.metrics.fetches.WithLabelValues(kind).Inc()
	s.keys.metrics.delivered.Add(float64(len(out.Messages)))
	s.log.Debug("key messages sent", "agent", c.agentID, "messages", len(out.Messages), "kind", kind)
	writeJSON(w, http.StatusOK, out)
	return nil
}

// agentKeyState reads the key state the calling agent should hold,
// registering it with the key service on its first fetch; a revoked agent
// is refused.
func (s *Server) agentKeyState(ctx context.Context, c *call) (keyCursor, []dkms.KeyInfo, error) {
	agent, err := s.keys.agentInfo(ctx, c.agentID)
	if errors.Is(err, dkms.ErrUnknownAgent) {
		agent, err = s.registerOnFetch(ctx, c)
	}
	if err != nil {
		return keyCursor{}, nil, s.keyError(err)
	}
	if agent.Revoked() {
		s.setRevoked(c.serial, true)
		return keyCursor{}, nil, errorf(http.StatusForbidden, "agent %s is decommissioned; it receives no keys", c.agentID)
	}
	keys, err := s.keys.keyInfos(ctx)
	if err != nil {
		return keyCursor{}, nil, s.keyError(err)
	}
	cur, allowed := agentKeyState(agent, keys)
	return cur, allowed, nil
}

// registerOnFetch registers an agent that enrolled with an X-Wing key but
// is not known to the key service (registration at enrollment failed, or
// the agent enrolled before the key service existed).
func (s *Server) registerOnFetch(ctx context.Context, c *call) (dkms.AgentInfo, error) {
	a, err := s.store.GetAgent(ctx, c.agentID)
	if err != nil {
		return dkms.AgentInfo{}, err
	}
	if a.DecommissionedAt != nil {
		return dkms.AgentInfo{}, s.agentGone(c, ErrDecommissioned)
	}
	if len(a.XWingPublic) == 0 {
		return dkms.AgentInfo{}, errorf(http.StatusConflict, "agent %s enrolled without an X-Wing public key, so no key can be sealed to it: enroll it again with xwing_public", c.agentID)
	}
	pub, err := pqcrypto.ParseXWingPublicKey(a.XWingPublic)
	if err != nil {
		return dkms.AgentInfo{}, fmt.Errorf("controlplane: stored X-Wing key of agent %s: %w", c.agentID, err)
	}
	return s.keys.svc.RegisterAgent(ctx, c.agentID, pub, a.Labels)
}
