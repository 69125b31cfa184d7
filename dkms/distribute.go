package dkms

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"time"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

// AgentInfo describes a registered agent.
type AgentInfo struct {
	ID           string
	PublicKey    *pqcrypto.PublicKey // X-Wing; key messages are sealed to it
	Labels       map[string]string
	RegisteredAt time.Time
	RevokedAt    time.Time // zero unless revoked
}

// Revoked reports whether the agent was revoked.
func (a AgentInfo) Revoked() bool { return !a.RevokedAt.IsZero() }

func agentInfo(r *AgentRecord) (AgentInfo, error) {
	pub, err := pqcrypto.ParseXWingPublicKey(r.PublicKey)
	if err != nil {
		return AgentInfo{}, fmt.Errorf("dkms: stored public key of agent %q: %w", r.ID, err)
	}
	return AgentInfo{ID: r.ID, PublicKey: pub, Labels: maps.Clone(r.Labels), RegisteredAt: r.RegisteredAt, RevokedAt: r.RevokedAt}, nil
}

// RegisterAgent records an agent's X-Wing public key (from enrollment) and
// labels. Registering again with the same key updates the labels; another
// key is ErrAgentExists, a revoked agent ErrRevoked. Works while sealed.
func (s *Service) RegisterAgent(ctx context.Context, id string, pub *pqcrypto.PublicKey, labels map[string]string) (info AgentInfo, err error) {
	defer func() { s.done(ctx, ActionRegisterAgent, "", 0, id, err) }()
	if err := checkAgentID(id); err != nil {
		return AgentInfo{}, err
	}
	if pub == nil || pub.KEM().ID() != pqcrypto.XWing().ID() {
		return AgentInfo{}, fmt.Errorf("dkms: agent %q needs an X-Wing public key: %w", id, pqcrypto.ErrWrongKey)
	}
	for k := range labels {
		if k == "" {
			return AgentInfo{}, fmt.Errorf("dkms: agent %q has an empty label name: %w", id, ErrInvalidName)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	var rec *AgentRecord
	err = s.store.Update(ctx, func(tx Tx) error {
		old, err := tx.GetAgent(id)
		switch {
		case errors.Is(err, ErrNotFound):
			rec = &AgentRecord{ID: id, PublicKey: pub.Bytes(), Labels: maps.Clone(labels), RegisteredAt: now}
		case err != nil:
			return err
		case old.Revoked():
			return fmt.Errorf("dkms: agent %q: %w", id, ErrRevoked)
		case string(old.PublicKey) != string(pub.Bytes()):
			return fmt.Errorf("dkms: agent %q is registered with another public key: %w", id, ErrAgentExists)
		default:
			rec = old
			rec.Labels = maps.Clone(labels)
		}
		return tx.PutAgent(rec)
	})
	if err != nil {
		return AgentInfo{}, err
	}
	return agentInfo(rec)
}

// Agent describes a registered agent.
func (s *Service) Agent(ctx context.Context, id string) (AgentInfo, error) {
	var rec *AgentRecord
	err := s.store.View(ctx, func(tx Tx) (err error) {
		rec, err = getAgent(tx, id)
		return err
	})
	if err != nil {
		return AgentInfo{}, err
	}
	return agentInfo(rec)
}

// Agents describes every registered agent, by id.
func (s *Service) Agents(ctx context.Context) ([]AgentInfo, error) {
	var recs []*AgentRecord
	if err := s.store.View(ctx, func(tx Tx) (err error) { recs, err = tx.ListAgents(); return err }); err != nil {
		return nil, err
	}
	out := make([]AgentInfo, 0, len(recs))
	for _, r := range recs {
		a, err := agentInfo(r)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func getAgent(tx Tx, id string) (*AgentRecord, error) {
	a, err := tx.GetAgent(id)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("dkms: agent %q: %w", id, ErrUnknownAgent)
	}
	return a, err
}

// Revoke marks an agent revoked and, in the same transaction, rotates every
// key its policy let it receive. It returns the new versions: distribute
// them to the remaining agents. A revoked agent is sent nothing again
// (Distribute skips it, MessageFor and CatchUp refuse it), so a copy of its
// keys opens nothing sealed under the new versions. Revoking a revoked agent
// does nothing.
func (s *Service) Revoke(ctx context.Context, agentID string) (rotated []VersionInfo, err error) {
	defer func() { s.done(ctx, ActionRevokeAgent, "", 0, agentID, err) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.unsealedLocked(); err != nil {
		return nil, err
	}
	now := s.now()
	err = s.store.Update(ctx, func(tx Tx) error {
		rotated = nil
		a, err := getAgent(tx, agentID)
		if err != nil {
			return err
		}
		if a.Revoked() {
			return nil
		}
		a.RevokedAt = now
		if err := tx.PutAgent(a); err != nil {
			return err
		}
		keys, err := tx.ListKeys()
		if err != nil {
			return err
		}
		for _, k := range keys {
			if k.Purpose == PurposeKEK || !k.Policy.Allows(a.ID, a.Labels) {
				continue
			}
			vi, err := s.rotateTx(tx, k, now)
			if err != nil {
				return err
			}
			rotated = append(rotated, vi)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, vi := range rotated {
		s.done(ctx, ActionRotate, vi.Key, vi.Version, agentID, nil)
	}
	s.log.Info("dkms: agent revoked", "agent", agentID, "keys_rotated", len(rotated))
	return rotated, nil
}

// Distribute builds a key message with one version of a key for every
// registered, non-revoked agent the key's policy allows. Primary and
// decrypt-only versions carry their material sealed to each agent; retired
// and destroyed ones carry their state only, so agents disable or erase
// their copies.
func (s *Service) Distribute(ctx context.Context, name string, version uint32) ([]*KeyMessage, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.unsealedLocked(); err != nil {
		s.done(ctx, ActionDistribute, name, version, "", err)
		return nil, err
	}
	var (
		k      *KeyRecord
		v      *VersionRecord
		agents []*AgentRecord
	)
	err := s.store.View(ctx, func(tx Tx) (err error) {
		if k, err = s.getKey(tx, name); err != nil {
			return err
		}
		if v, err = getVersion(tx, k, version); err != nil {
			return err
		}
		agents, err = tx.ListAgents()
		return err
	})
	if err != nil {
		s.done(ctx, ActionDistribute, name, version, "", err)
		return nil, err
	}
	var out []*KeyMessage
	for _, a := range agents {
		if a.Revoked() || !k.Policy.Allows(a.ID, a.Labels) {
			continue
		}
		m, err := s.message(a, k, v)
		s.done(ctx, ActionDistribute, name, version, a.ID, err)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// MessageFor builds the key message of one version for one agent.
func (s *Service) MessageFor(ctx context.Context, agentID, name string, version uint32) (m *KeyMessage, err error) {
	defer func() { s.done(ctx, ActionDistribute, name, version, agentID, err) }()
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.unsealedLocked(); err != nil {
		return nil, err
	}
	var (
		k *KeyRecord
		v *VersionRecord
		a *AgentRecord
	)
	err = s.store.View(ctx, func(tx Tx) (err error) {
		if a, err = getAgent(tx, agentID); err != nil {
			return err
		}
		if k, err = s.getKey(tx, name); err != nil {
			return err
		}
		v, err = getVersion(tx, k, version)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := authorized(a, k); err != nil {
		return nil, err
	}
	return s.message(a, k, v)
}

// CatchUp builds key messages for everything an agent should hold: every
// version at or above the minimum decryption version of every key its
// policy allows, oldest first. An agent that was offline, or whose keyring
// was lost, accepts them to catch up.
func (s *Service) CatchUp(ctx context.Context, agentID string) (out []*KeyMessage, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.unsealedLocked(); err != nil {
		s.done(ctx, ActionDistribute, "", 0, agentID, err)
		return nil, err
	}
	type keyVersions struct {
		k  *KeyRecord
		vs []*VersionRecord
	}
	var (
		a       *AgentRecord
		pending []keyVersions
	)
	err = s.store.View(ctx, func(tx Tx) (err error) {
		if a, err = getAgent(tx, agentID); err != nil {
			return err
		}
		keys, err := tx.ListKeys()
		if err != nil {
			return err
		}
		for _, k := range keys {
			if k.Purpose == PurposeKEK || !k.Policy.Allows(a.ID, a.Labels) {
				continue
			}
			vs, err := tx.ListVersions(k.Name)
			if err != nil {
				return err
			}
			pending = append(pending, keyVersions{k, vs})
		}
		return nil
	})
	if err == nil && a.Revoked() {
		err = fmt.Errorf("dkms: agent %q: %w", agentID, ErrRevoked)
	}
	if err != nil {
		s.done(ctx, ActionDistribute, "", 0, agentID, err)
		return nil, err
	}
	for _, kv := range pending {
		for _, v := range kv.vs {
			if v.Version < kv.k.Policy.MinDecryptVersion {
				continue
			}
			m, err := s.message(a, kv.k, v)
			s.done(ctx, ActionDistribute, kv.k.Name, v.Version, agentID, err)
			if err != nil {
				return nil, err
			}
			out = append(out, m)
		}
	}
	return out, nil
}

func authorized(a *AgentRecord, k *KeyRecord) error {
	if a.Revoked() {
		return fmt.Errorf("dkms: agent %q: %w", a.ID, ErrRevoked)
	}
	if !k.Policy.Allows(a.ID, a.Labels) {
		return fmt.Errorf("dkms: agent %q may not receive key %q: %w", a.ID, k.Name, ErrNotAuthorized)
	}
	return nil
}

// message seals version v of key k to agent a and signs it. The caller
// holds s.mu and has checked the service is unsealed and a authorized.
func (s *Service) message(a *AgentRecord, k *KeyRecord, v *VersionRecord) (*KeyMessage, error) {
	now := s.now()
	m := &KeyMessage{
		IssuedAt: now, ExpiresAt: now.Add(s.ttl),
		AgentID: a.ID, Key: k.Name, Purpose: k.Purpose, Version: v.Version, State: v.State,
		MinVersion: k.Policy.MinDecryptVersion, CreatedAt: v.CreatedAt, ActivateAt: v.ActivateAt, PrevRemoveAt: v.PrevRemoveAt,
	}
	// Millisecond precision on the wire; keep the struct equal to its encoding.
	m.IssuedAt, m.ExpiresAt = timeOfMS(msOf(m.IssuedAt)), timeOfMS(msOf(m.ExpiresAt))
	m.CreatedAt, m.ActivateAt, m.PrevRemoveAt = timeOfMS(msOf(m.CreatedAt)), timeOfMS(msOf(m.ActivateAt)), timeOfMS(msOf(m.PrevRemoveAt))
	if _, err := io.ReadFull(s.rand, m.ID[:]); err != nil {
		return nil, fmt.Errorf("dkms: reading randomness for a message id: %w", err)
	}
	if v.State.usable() {
		dk, err := s.material(k, v)
		if err != nil {
			return nil, err
		}
		pub, err := pqcrypto.ParseXWingPublicKey(a.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("dkms: public key of agent %q: %w", a.ID, err)
		}
		secret := dk.Secret()
		m.Envelope, err = pqcrypto.SealToRecipient(nil, pqcrypto.RecipientKey{KeyID: pub.Fingerprint(), KeyVersion: 1, PublicKey: pub}, secret,
			&pqcrypto.SealOptions{Suite: s.rsuite, RecipientID: a.ID, AAD: m.header(), Rand: s.rand})
		clear(secret)
		if err != nil {
			return nil, fmt.Errorf("dkms: sealing %q v%d to agent %q: %w", k.Name, v.Version, a.ID, err)
		}
	}
	if err := m.check(); err != nil {
		return nil, err
	}
	sig, err := s.signer.Sign(KeyMessageContext, m.signedBytes())
	if err != nil {
		return nil, fmt.Errorf("dkms: signing key message for agent %q: %w", a.ID, err)
	}
	m.Signature = sig
	return m, nil
}

// VerifyingKey is the public half of the control plane's signing key, which
// agents pin (AgentConfig.ControlPlaneKey).
func (s *Service) VerifyingKey() *pqcrypto.VerifyingKey { return s.signer.Public() }
