package dkms

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// GossipKeyVersion is one version of a gossip key.
type GossipKeyVersion struct {
	Version      uint32
	Key          []byte // 32-byte AES-256 key for memberlist
	State        State
	ActivateAt   time.Time
	PrevRemoveAt time.Time
}

// GossipKeyring is the keyring memberlist should have at one instant.
type GossipKeyring struct {
	Primary uint32
	Keys    []GossipKeyVersion // ascending by version, primary included
}

// PrimaryKey is the primary version's key, or nil for an empty keyring.
func (r GossipKeyring) PrimaryKey() []byte {
	for _, k := range r.Keys {
		if k.Version == r.Primary {
			return k.Key
		}
	}
	return nil
}

// KeyBytes lists the keys with the primary first, the argument order of
// memberlist.NewKeyring(keys, primaryKey).
func (r GossipKeyring) KeyBytes() [][]byte {
	out := make([][]byte, 0, len(r.Keys))
	if p := r.PrimaryKey(); p != nil {
		out = append(out, p)
	}
	for _, k := range r.Keys {
		if k.Version != r.Primary {
			out = append(out, k.Key)
		}
	}
	return out
}

// Versions lists the versions in the keyring, ascending.
func (r GossipKeyring) Versions() []uint32 {
	out := make([]uint32, len(r.Keys))
	for i, k := range r.Keys {
		out[i] = k.Version
	}
	return out
}

// PlanGossipKeyring returns the keyring for now: among primary and
// decrypt-only versions with a key, the primary is the newest whose
// ActivateAt has passed (the oldest when none has); newer versions are
// installed ahead of activation; an older version stays until the
// PrevRemoveAt of the version after it.
func PlanGossipKeyring(versions []GossipKeyVersion, now time.Time) GossipKeyring {
	var vs []GossipKeyVersion
	for _, v := range versions {
		if v.State.usable() && len(v.Key) > 0 {
			vs = append(vs, v)
		}
	}
	if len(vs) == 0 {
		return GossipKeyring{}
	}
	slices.SortFunc(vs, func(a, b GossipKeyVersion) int { return cmpU32(a.Version, b.Version) })
	pi := 0
	for i, v := range vs {
		if !now.Before(v.ActivateAt) {
			pi = i
		}
	}
	r := GossipKeyring{Primary: vs[pi].Version}
	for i, v := range vs {
		if i >= pi || now.Before(vs[i+1].PrevRemoveAt) {
			r.Keys = append(r.Keys, v)
		}
	}
	return r
}

// NextGossipChange is the first instant after now at which
// PlanGossipKeyring's answer changes, or the zero time if it never does
// without new versions. An agent can sleep until then.
func NextGossipChange(versions []GossipKeyVersion, now time.Time) time.Time {
	var next time.Time
	for _, v := range versions {
		if !v.State.usable() || len(v.Key) == 0 {
			continue
		}
		for _, t := range []time.Time{v.ActivateAt, v.PrevRemoveAt} {
			if t.After(now) && (next.IsZero() || t.Before(next)) {
				next = t
			}
		}
	}
	return next
}

func cmpU32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// GossipStepKind is a memberlist keyring operation.
type GossipStepKind uint8

const (
	// GossipInstall is memberlist Keyring.AddKey.
	GossipInstall GossipStepKind = iota + 1
	// GossipUse is memberlist Keyring.UseKey (make primary).
	GossipUse
	// GossipRemove is memberlist Keyring.RemoveKey.
	GossipRemove
)

// String names the step.
func (k GossipStepKind) String() string {
	switch k {
	case GossipInstall:
		return "install"
	case GossipUse:
		return "use"
	case GossipRemove:
		return "remove"
	}
	return fmt.Sprintf("step(%d)", uint8(k))
}

// GossipStep is one keyring operation.
type GossipStep struct {
	Kind    GossipStepKind
	Version uint32
	Key     []byte
}

// GossipSteps lists the operations that turn a keyring holding installed
// (with primary as its primary) into target: installs first, then the
// primary switch, then removals, so the keyring never lacks its primary
// and memberlist never removes the key in use. installedKeys maps each
// installed version to its key bytes (removals need them).
func GossipSteps(installedKeys map[uint32][]byte, primary uint32, target GossipKeyring) []GossipStep {
	var steps []GossipStep
	want := map[uint32]bool{}
	for _, k := range target.Keys {
		want[k.Version] = true
		if _, ok := installedKeys[k.Version]; !ok {
			steps = append(steps, GossipStep{Kind: GossipInstall, Version: k.Version, Key: k.Key})
		}
	}
	if target.Primary != 0 && target.Primary != primary {
		steps = append(steps, GossipStep{Kind: GossipUse, Version: target.Primary, Key: target.PrimaryKey()})
	}
	var gone []uint32
	for v := range installedKeys {
		if !want[v] {
			gone = append(gone, v)
		}
	}
	slices.Sort(gone)
	for _, v := range gone {
		steps = append(steps, GossipStep{Kind: GossipRemove, Version: v, Key: installedKeys[v]})
	}
	return steps
}

// GossipKeyring returns the keyring this agent's memberlist should have at
// now for the named gossip key.
func (a *AgentKeys) GossipKeyring(name string, now time.Time) (GossipKeyring, error) {
	vs, err := a.GossipVersions(name)
	if err != nil {
		return GossipKeyring{}, err
	}
	return PlanGossipKeyring(vs, now), nil
}

// GossipVersions returns the versions of a gossip key held by this agent,
// with their keys.
func (a *AgentKeys) GossipVersions(name string) ([]GossipKeyVersion, error) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	k, err := a.keyLocked(name, PurposeGossip)
	if err != nil {
		return nil, err
	}
	var out []GossipKeyVersion
	for v, av := range k.Versions {
		gv := GossipKeyVersion{Version: v, State: av.State, ActivateAt: av.ActivateAt, PrevRemoveAt: av.PrevRemoveAt}
		if v < k.MinVersion {
			continue
		}
		if av.Material != nil {
			gv.Key = slices.Clone(av.Material)
		}
		out = append(out, gv)
	}
	slices.SortFunc(out, func(a, b GossipKeyVersion) int { return cmpU32(a.Version, b.Version) })
	return out, nil
}

// GossipKeyring returns the keyring the control plane's own memberlist
// should have at now for the named gossip key (when it gossips with
// agents).
func (s *Service) GossipKeyring(ctx context.Context, name string, now time.Time) (GossipKeyring, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if err := s.unsealedLocked(); err != nil {
		return GossipKeyring{}, err
	}
	var (
		k  *KeyRecord
		vs []*VersionRecord
	)
	err := s.store.View(ctx, func(tx Tx) (err error) {
		if k, err = s.getKey(tx, name); err != nil {
			return err
		}
		vs, err = tx.ListVersions(name)
		return err
	})
	if err != nil {
		return GossipKeyring{}, err
	}
	if k.Purpose != PurposeGossip {
		return GossipKeyring{}, fmt.Errorf("dkms: key %q is a %s key, not a gossip key: %w", name, k.Purpose, ErrWrongPurpose)
	}
	var out []GossipKeyVersion
	for _, v := range vs {
		if !v.State.usable() || v.Version < k.Policy.MinDecryptVersion {
			continue
		}
		dk, err := s.material(k, v)
		if err != nil {
			return GossipKeyring{}, err
		}
		out = append(out, GossipKeyVersion{Version: v.Version, Key: dk.Secret(), State: v.State, ActivateAt: v.ActivateAt, PrevRemoveAt: v.PrevRemoveAt})
	}
	return PlanGossipKeyring(out, now), nil
}
