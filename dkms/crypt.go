package dkms

import (
	"context"
	"fmt"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

// Encrypt seals plaintext under the primary version of a data key. aad is
// bound to the envelope and must be given again to Decrypt (it may be nil).
// The envelope's header names the key and version, so Decrypt needs nothing
// else.
func (s *Service) Encrypt(ctx context.Context, name string, plaintext, aad []byte) (env []byte, err error) {
	var version uint32
	defer func() { s.done(ctx, ActionEncrypt, name, version, "", err) }()
	s.mu.RLock()
	defer s.mu.RUnlock()
	dk, err := s.primaryLocked(ctx, name)
	if err != nil {
		return nil, err
	}
	version = dk.Version()
	env, err = pqcrypto.SealWithDataKey(nil, dk, plaintext, &pqcrypto.SealOptions{Suite: s.suite, AAD: aad, Rand: s.rand})
	if err != nil {
		return nil, fmt.Errorf("dkms: encrypt under %q v%d: %w", name, version, err)
	}
	return env, nil
}

// Decrypt opens an envelope sealed under a version of the named data key.
// Envelopes under another key fail with ErrWrongKey; under a retired,
// destroyed or too old version with ErrKeyVersionRetired,
// ErrKeyVersionDestroyed or ErrBelowMinVersion; tampered ones with
// pqcrypto's errors (ErrAuthFailed, ErrTruncated, ...).
func (s *Service) Decrypt(ctx context.Context, name string, envelope, aad []byte) (pt []byte, err error) {
	var version uint32
	defer func() { s.done(ctx, ActionDecrypt, name, version, "", err) }()
	s.mu.RLock()
	defer s.mu.RUnlock()
	pt, version, err = s.decryptLocked(ctx, name, envelope, aad)
	return pt, err
}

func (s *Service) decryptLocked(ctx context.Context, name string, envelope, aad []byte) ([]byte, uint32, error) {
	if err := s.unsealedLocked(); err != nil {
		return nil, 0, err
	}
	h, _, err := pqcrypto.ParseHeader(envelope)
	if err != nil {
		return nil, 0, fmt.Errorf("dkms: decrypt with %q: %w", name, err)
	}
	if h.Mode != pqcrypto.ModeDataKey || h.KeyID != name {
		return nil, h.KeyVersion, fmt.Errorf("dkms: decrypt with %q: envelope is a %s envelope for key %q: %w", name, h.Mode, h.KeyID, ErrWrongKey)
	}
	dk, err := s.versionForOpen(ctx, name, h.KeyVersion)
	if err != nil {
		return nil, h.KeyVersion, err
	}
	pt, _, err := pqcrypto.Open(nil, envelope, &pqcrypto.Keys{DataKey: pqcrypto.DataKeys(dk), AAD: aad})
	if err != nil {
		return nil, h.KeyVersion, fmt.Errorf("dkms: decrypt with %q v%d: %w", name, h.KeyVersion, err)
	}
	return pt, h.KeyVersion, nil
}

// Rewrap re-encrypts an envelope under the primary version of its key
// without returning the plaintext: rotate, rewrap stored data, raise the
// minimum decryption version, then retire and destroy old versions. The
// same aad binds the new envelope.
func (s *Service) Rewrap(ctx context.Context, name string, envelope, aad []byte) (env []byte, err error) {
	var version uint32
	defer func() { s.done(ctx, ActionRewrap, name, version, "", err) }()
	s.mu.RLock()
	defer s.mu.RUnlock()
	pt, _, err := s.decryptLocked(ctx, name, envelope, aad)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	dk, err := s.primaryLocked(ctx, name)
	if err != nil {
		return nil, err
	}
	version = dk.Version()
	env, err = pqcrypto.SealWithDataKey(nil, dk, pt, &pqcrypto.SealOptions{Suite: s.suite, AAD: aad, Rand: s.rand})
	if err != nil {
		return nil, fmt.Errorf("dkms: rewrap under %q v%d: %w", name, version, err)
	}
	return env, nil
}

// PrimaryDataKey returns the primary version of a data key, for sealing
// large payloads with pqcrypto's streaming Writer. Prefer Encrypt.
// It is audited as an encryption under that version.
func (s *Service) PrimaryDataKey(ctx context.Context, name string) (dk *pqcrypto.DataKey, err error) {
	defer func() {
		var v uint32
		if dk != nil {
			v = dk.Version()
		}
		s.done(ctx, ActionEncrypt, name, v, "", err)
	}()
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.primaryLocked(ctx, name)
}

// OpenKeys returns pqcrypto.Keys that open envelopes of the named data key
// with every Decrypt check applied, for pqcrypto's streaming Reader. Each
// key lookup is audited as a decryption.
func (s *Service) OpenKeys(ctx context.Context, name string, aad []byte) *pqcrypto.Keys {
	return &pqcrypto.Keys{AAD: aad, DataKey: func(id string, version uint32) (dk *pqcrypto.DataKey, err error) {
		defer func() { s.done(ctx, ActionDecrypt, name, version, "", err) }()
		if id != name {
			return nil, fmt.Errorf("dkms: envelope is for key %q, not %q: %w", id, name, ErrWrongKey)
		}
		s.mu.RLock()
		defer s.mu.RUnlock()
		if err := s.unsealedLocked(); err != nil {
			return nil, err
		}
		return s.versionForOpen(ctx, name, version)
	}}
}

func (s *Service) primaryLocked(ctx context.Context, name string) (*pqcrypto.DataKey, error) {
	if err := s.unsealedLocked(); err != nil {
		return nil, err
	}
	var (
		k *KeyRecord
		v *VersionRecord
	)
	err := s.store.View(ctx, func(tx Tx) (err error) {
		if k, err = s.getKey(tx, name); err != nil {
			return err
		}
		v, err = getVersion(tx, k, k.Primary)
		return err
	})
	if err != nil {
		return nil, err
	}
	if k.Purpose != PurposeData {
		return nil, fmt.Errorf("dkms: key %q is a %s key, not a data key: %w", name, k.Purpose, ErrWrongPurpose)
	}
	return s.material(k, v)
}

// versionForOpen returns a version of a data key after the state and policy
// checks. The caller holds s.mu and has checked the service is unsealed.
func (s *Service) versionForOpen(ctx context.Context, name string, version uint32) (*pqcrypto.DataKey, error) {
	var (
		k *KeyRecord
		v *VersionRecord
	)
	err := s.store.View(ctx, func(tx Tx) (err error) {
		if k, err = s.getKey(tx, name); err != nil {
			return err
		}
		v, err = getVersion(tx, k, version)
		return err
	})
	if err != nil {
		return nil, err
	}
	if k.Purpose != PurposeData {
		return nil, fmt.Errorf("dkms: key %q is a %s key, not a data key: %w", name, k.Purpose, ErrWrongPurpose)
	}
	if err := usable(k, v); err != nil {
		return nil, err
	}
	return s.material(k, v)
}
