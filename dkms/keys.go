package dkms

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

// CreateKey creates a key with version 1 as its primary. Purpose is
// PurposeData or PurposeGossip.
func (s *Service) CreateKey(ctx context.Context, name string, purpose Purpose, policy Policy) (info KeyInfo, err error) {
	defer func() { s.done(ctx, ActionCreateKey, name, info.Primary, "", err) }()
	if err := checkKeyName(name); err != nil {
		return KeyInfo{}, err
	}
	if !purpose.valid() {
		return KeyInfo{}, fmt.Errorf("dkms: key %q: purpose %q is not %q or %q: %w", name, purpose, PurposeData, PurposeGossip, ErrWrongPurpose)
	}
	if err := policy.validate(); err != nil {
		return KeyInfo{}, fmt.Errorf("dkms: key %q: %w", name, err)
	}
	if policy.MinDecryptVersion > 1 {
		return KeyInfo{}, fmt.Errorf("dkms: key %q: minimum decryption version %d above the first version: %w", name, policy.MinDecryptVersion, ErrInvalidPolicy)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.unsealedLocked(); err != nil {
		return KeyInfo{}, err
	}
	now := s.now()
	k := &KeyRecord{Name: name, Purpose: purpose, Policy: policy.clone(), Primary: 1, Latest: 1, CreatedAt: now, RotatedAt: now}
	var v *VersionRecord
	err = s.store.Update(ctx, func(tx Tx) error {
		if _, err := tx.GetKey(name); err == nil {
			return fmt.Errorf("dkms: key %q: %w", name, ErrKeyExists)
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		if v, err = s.newMaterial(s.keks[s.kek], k, 1, now); err != nil {
			return err
		}
		if err := tx.PutVersion(v); err != nil {
			return err
		}
		return tx.PutKey(k)
	})
	if err != nil {
		return KeyInfo{}, err
	}
	s.log.Info("dkms: key created", "key", name, "purpose", purpose)
	return keyInfo(k, []*VersionRecord{v}), nil
}

// Rotate creates a new version of the key and makes it the primary; the
// previous primary becomes decrypt-only. Distribute the new version to
// agents with Distribute.
func (s *Service) Rotate(ctx context.Context, name string) (vi VersionInfo, err error) {
	defer func() { s.done(ctx, ActionRotate, name, vi.Version, "", err) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.unsealedLocked(); err != nil {
		return VersionInfo{}, err
	}
	err = s.store.Update(ctx, func(tx Tx) error {
		k, err := s.getKey(tx, name)
		if err != nil {
			return err
		}
		vi, err = s.rotateTx(tx, k, s.now())
		return err
	})
	if err != nil {
		return VersionInfo{}, err
	}
	s.log.Info("dkms: key rotated", "key", name, "version", vi.Version)
	return vi, nil
}

// rotateTx adds a primary version to k inside tx; the caller holds s.mu.
func (s *Service) rotateTx(tx Tx, k *KeyRecord, now time.Time) (VersionInfo, error) {
	version := k.Latest + 1
	if version == 0 {
		return VersionInfo{}, fmt.Errorf("dkms: key %q has no version numbers left: %w", k.Name, ErrInvalidPolicy)
	}
	v, err := s.newMaterial(s.keks[s.kek], k, version, now)
	if err != nil {
		return VersionInfo{}, err
	}
	if k.Primary != 0 {
		old, err := tx.GetVersion(k.Name, k.Primary)
		if err != nil {
			return VersionInfo{}, err
		}
		if old.State == StatePrimary {
			old.State, old.ChangedAt = StateDecryptOnly, now
			if err := tx.PutVersion(old); err != nil {
				return VersionInfo{}, err
			}
		}
	}
	if err := tx.PutVersion(v); err != nil {
		return VersionInfo{}, err
	}
	k.Primary, k.Latest, k.RotatedAt = version, version, now
	if err := tx.PutKey(k); err != nil {
		return VersionInfo{}, err
	}
	return versionInfo(v), nil
}

// RotateDue rotates every key whose rotation period has passed at now (see
// RotationDue) and returns the new versions. The caller ticks it from its
// own clock; new versions are stamped with now.
func (s *Service) RotateDue(ctx context.Context, now time.Time) ([]VersionInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.unsealedLocked(); err != nil {
		s.done(ctx, ActionRotate, "", 0, "", err)
		return nil, err
	}
	var out []VersionInfo
	err := s.store.Update(ctx, func(tx Tx) error {
		out = out[:0]
		keys, err := tx.ListKeys()
		if err != nil {
			return err
		}
		for _, k := range keys {
			if k.Purpose == PurposeKEK || !RotationDue(keyInfo(k, nil), now) {
				continue
			}
			vi, err := s.rotateTx(tx, k, now)
			if err != nil {
				return err
			}
			out = append(out, vi)
		}
		return nil
	})
	if err != nil {
		s.done(ctx, ActionRotate, "", 0, "", err)
		return nil, err
	}
	for _, vi := range out {
		s.done(ctx, ActionRotate, vi.Key, vi.Version, "", nil)
		s.log.Info("dkms: key rotated on schedule", "key", vi.Key, "version", vi.Version)
	}
	return out, nil
}

// SetPolicy replaces a key's policy. The minimum decryption version may not
// exceed the primary version. Agents learn a new minimum from the next key
// message of the key: Distribute the primary version again to tell them at
// once. Changes to who may receive the key apply to later distributions;
// to take a key away from agents, rotate it (as Revoke does).
func (s *Service) SetPolicy(ctx context.Context, name string, policy Policy) (info KeyInfo, err error) {
	defer func() { s.done(ctx, ActionSetPolicy, name, policy.MinDecryptVersion, "", err) }()
	if err := policy.validate(); err != nil {
		return KeyInfo{}, fmt.Errorf("dkms: key %q: %w", name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.unsealedLocked(); err != nil {
		return KeyInfo{}, err
	}
	err = s.store.Update(ctx, func(tx Tx) error {
		k, err := s.getKey(tx, name)
		if err != nil {
			return err
		}
		if policy.MinDecryptVersion > k.Primary {
			return fmt.Errorf("dkms: key %q: minimum decryption version %d above the primary version %d: %w", name, policy.MinDecryptVersion, k.Primary, ErrInvalidPolicy)
		}
		k.Policy = policy.clone()
		if err := tx.PutKey(k); err != nil {
			return err
		}
		vs, err := tx.ListVersions(name)
		if err != nil {
			return err
		}
		info = keyInfo(k, vs)
		return nil
	})
	if err != nil {
		return KeyInfo{}, err
	}
	s.log.Info("dkms: key policy set", "key", name, "min_decrypt_version", policy.MinDecryptVersion, "rotation_period", policy.RotationPeriod)
	return info, nil
}

// Retire disables a decrypt-only version: it keeps its material but opens
// nothing (ErrKeyVersionRetired). Retiring a retired version is a no-op.
func (s *Service) Retire(ctx context.Context, name string, version uint32) (VersionInfo, error) {
	return s.changeState(ctx, ActionRetire, name, version, StateRetired)
}

// Destroy erases a version's material for good; envelopes under it fail
// with ErrKeyVersionDestroyed. The primary version cannot be destroyed.
func (s *Service) Destroy(ctx context.Context, name string, version uint32) (VersionInfo, error) {
	return s.changeState(ctx, ActionDestroy, name, version, StateDestroyed)
}

func (s *Service) changeState(ctx context.Context, action, name string, version uint32, to State) (vi VersionInfo, err error) {
	defer func() { s.done(ctx, action, name, version, "", err) }()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.unsealedLocked(); err != nil {
		return VersionInfo{}, err
	}
	changed := false
	err = s.store.Update(ctx, func(tx Tx) error {
		k, err := s.getKey(tx, name)
		if err != nil {
			return err
		}
		v, err := getVersion(tx, k, version)
		if err != nil {
			return err
		}
		switch {
		case v.State == StatePrimary:
			return fmt.Errorf("dkms: key %q version %d is the primary; rotate first: %w", name, version, ErrPrimaryVersion)
		case v.State == StateDestroyed:
			if to == StateDestroyed {
				vi = versionInfo(v)
				return nil
			}
			return fmt.Errorf("dkms: key %q version %d: %w", name, version, ErrKeyVersionDestroyed)
		case v.State == to:
			vi = versionInfo(v)
			return nil
		}
		v.State, v.ChangedAt = to, s.now()
		if to == StateDestroyed {
			clear(v.Wrapped)
			v.Wrapped = nil
		}
		if err := tx.PutVersion(v); err != nil {
			return err
		}
		changed = true
		vi = versionInfo(v)
		return nil
	})
	if err != nil {
		return VersionInfo{}, err
	}
	if changed {
		s.dropCached(name, version)
		if to == StateDestroyed {
			s.scrub(ctx)
		}
		s.log.Info("dkms: key version "+to.String(), "key", name, "version", version)
	}
	return vi, nil
}

// Key describes a key and its versions. Available while sealed.
func (s *Service) Key(ctx context.Context, name string) (KeyInfo, error) {
	var info KeyInfo
	err := s.store.View(ctx, func(tx Tx) error {
		k, err := s.getKey(tx, name)
		if err != nil {
			return err
		}
		vs, err := tx.ListVersions(name)
		if err != nil {
			return err
		}
		info = keyInfo(k, vs)
		return nil
	})
	return info, err
}

// Keys describes every key, by name. Available while sealed.
func (s *Service) Keys(ctx context.Context) ([]KeyInfo, error) {
	var out []KeyInfo
	err := s.store.View(ctx, func(tx Tx) error {
		keys, err := tx.ListKeys()
		if err != nil {
			return err
		}
		for _, k := range keys {
			if k.Purpose == PurposeKEK {
				continue
			}
			vs, err := tx.ListVersions(k.Name)
			if err != nil {
				return err
			}
			out = append(out, keyInfo(k, vs))
		}
		return nil
	})
	return out, err
}

// getKey reads a user key (never the KEK).
func (s *Service) getKey(tx Tx, name string) (*KeyRecord, error) {
	if err := checkKeyName(name); err != nil {
		return nil, err
	}
	k, err := tx.GetKey(name)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("dkms: key %q: %w", name, ErrUnknownKey)
	}
	return k, err
}

func getVersion(tx Tx, k *KeyRecord, version uint32) (*VersionRecord, error) {
	if version == 0 || version > k.Latest {
		return nil, fmt.Errorf("dkms: key %q has versions 1..%d, not %d: %w", k.Name, k.Latest, version, ErrUnknownVersion)
	}
	v, err := tx.GetVersion(k.Name, version)
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("dkms: key %q version %d: %w", k.Name, version, ErrUnknownVersion)
	}
	return v, err
}

// usable checks that version v of k may open data: not below the minimum
// decryption version, not retired, not destroyed.
func usable(k *KeyRecord, v *VersionRecord) error {
	switch {
	case v.Version < k.Policy.MinDecryptVersion:
		return fmt.Errorf("dkms: key %q version %d is below the minimum decryption version %d: %w", k.Name, v.Version, k.Policy.MinDecryptVersion, ErrBelowMinVersion)
	case v.State == StateRetired:
		return fmt.Errorf("dkms: key %q version %d: %w", k.Name, v.Version, ErrKeyVersionRetired)
	case v.State == StateDestroyed:
		return fmt.Errorf("dkms: key %q version %d: %w", k.Name, v.Version, ErrKeyVersionDestroyed)
	}
	return nil
}

// material returns the unwrapped key of v, from the cache when it can. The
// caller holds s.mu (read or write) and has checked the service is unsealed.
func (s *Service) material(k *KeyRecord, v *VersionRecord) (*pqcrypto.DataKey, error) {
	ref := versionRef{k.Name, v.Version}
	s.cacheMu.Lock()
	dk := s.cache[ref]
	s.cacheMu.Unlock()
	if dk != nil {
		return dk, nil
	}
	dk, err := s.unwrapKey(v, k.Purpose, s.kekLookup)
	if err != nil {
		return nil, err
	}
	s.cacheMu.Lock()
	s.cache[ref] = dk
	s.cacheMu.Unlock()
	return dk, nil
}

func (s *Service) dropCached(name string, version uint32) {
	s.cacheMu.Lock()
	delete(s.cache, versionRef{name, version})
	s.cacheMu.Unlock()
}

func keyInfo(k *KeyRecord, vs []*VersionRecord) KeyInfo {
	info := KeyInfo{Name: k.Name, Purpose: k.Purpose, Policy: k.Policy.clone(), Primary: k.Primary, Latest: k.Latest, CreatedAt: k.CreatedAt, RotatedAt: k.RotatedAt}
	for _, v := range vs {
		info.Versions = append(info.Versions, versionInfo(v))
	}
	return info
}

func versionInfo(v *VersionRecord) VersionInfo {
	return VersionInfo{Key: v.Name, Version: v.Version, State: v.State, CreatedAt: v.CreatedAt, ChangedAt: v.ChangedAt, ActivateAt: v.ActivateAt, PrevRemoveAt: v.PrevRemoveAt}
}
