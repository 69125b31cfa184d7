package pqcrypto

import (
	"errors"
	"fmt"
	"io"

	"github.com/cloudflare/circl/hpke"
)

// This file is the RFC 9180 HPKE layer. circl v1.6.5 supports X-Wing as an
// HPKE KEM natively (hpke.KEM_XWING, id 0x647a, wrapping kem/xwing through
// its generic non-authenticated KEM shim), so the suites here call circl's
// hpke directly; nothing is adapted and no primitive is implemented here.
//
// Output is standard HPKE: enc is the KEM ciphertext and ct the AEAD
// ciphertext of the first message of the context (SealBase / OpenBase,
// RFC 9180 section 6.1), so any conforming implementation that supports the
// suite's KEM can open it.

// HPKESealer is the sender side of an HPKE context. It encrypts a sequence of
// messages; the nonce is derived from the sequence number. Not safe for
// concurrent use.
type HPKESealer struct {
	suite *Suite
	s     hpke.Sealer
}

// HPKEOpener is the receiver side of an HPKE context. Messages must be opened
// in the order they were sealed. Not safe for concurrent use.
type HPKEOpener struct {
	suite *Suite
	o     hpke.Opener
}

func (s *Suite) checkKEM(what string, k *KEM) error {
	if s.kem == nil {
		return s.needHPKE()
	}
	if k != s.kem {
		return fmt.Errorf("pqcrypto: %s: %s is a %s key, suite %s needs %s: %w", what, what, k.name, s.name, s.kem.name, ErrWrongKey)
	}
	return nil
}

// NewSealer sets up an HPKE base-mode context to the recipient key pkR with
// the application info string. Randomness for the encapsulation is read from
// rnd (nil means crypto/rand). It returns the encapsulated key enc.
func (s *Suite) NewSealer(rnd io.Reader, pkR *PublicKey, info []byte) (enc []byte, sealer *HPKESealer, err error) {
	return s.newSealer(rnd, pkR, nil, info)
}

// NewAuthSealer sets up an HPKE auth-mode context: the recipient learns that
// the holder of skS sealed it. Only suites whose KEM SupportsAuth can do this;
// X-Wing suites return ErrUnsupported (use a signed envelope instead).
func (s *Suite) NewAuthSealer(rnd io.Reader, pkR *PublicKey, skS *PrivateKey, info []byte) (enc []byte, sealer *HPKESealer, err error) {
	if skS == nil {
		return nil, nil, fmt.Errorf("pqcrypto: hpke auth mode needs a sender private key: %w", ErrWrongKey)
	}
	return s.newSealer(rnd, pkR, skS, info)
}

func (s *Suite) newSealer(rnd io.Reader, pkR *PublicKey, skS *PrivateKey, info []byte) ([]byte, *HPKESealer, error) {
	if err := s.needHPKE(); err != nil {
		return nil, nil, err
	}
	if pkR == nil {
		return nil, nil, fmt.Errorf("pqcrypto: hpke: no recipient public key: %w", ErrWrongKey)
	}
	if err := s.checkKEM("recipient key", pkR.kem); err != nil {
		return nil, nil, err
	}
	sender, err := s.hs.NewSender(pkR.pk, info)
	if err != nil {
		return nil, nil, fmt.Errorf("pqcrypto: hpke %s: sender: %w: %v", s.name, ErrInvalidKey, err)
	}
	var (
		enc []byte
		sc  hpke.Sealer
	)
	if skS == nil {
		enc, sc, err = sender.Setup(rnd)
	} else {
		if !s.kem.auth {
			return nil, nil, fmt.Errorf("pqcrypto: hpke auth mode with %s: KEM is not authenticated: %w", s.name, ErrUnsupported)
		}
		if err := s.checkKEM("sender key", skS.kem); err != nil {
			return nil, nil, err
		}
		enc, sc, err = sender.SetupAuth(rnd, skS.sk)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("pqcrypto: hpke %s: encapsulation: %w", s.name, err)
	}
	return enc, &HPKESealer{suite: s, s: sc}, nil
}

// NewOpener sets up the HPKE base-mode context of enc with the recipient
// private key skR and the same info the sender used.
func (s *Suite) NewOpener(skR *PrivateKey, enc, info []byte) (*HPKEOpener, error) {
	return s.newOpener(skR, nil, enc, info)
}

// NewAuthOpener sets up an HPKE auth-mode context, checking that the sender
// held the private key of pkS. X-Wing suites return ErrUnsupported.
func (s *Suite) NewAuthOpener(skR *PrivateKey, pkS *PublicKey, enc, info []byte) (*HPKEOpener, error) {
	if pkS == nil {
		return nil, fmt.Errorf("pqcrypto: hpke auth mode needs a sender public key: %w", ErrWrongKey)
	}
	return s.newOpener(skR, pkS, enc, info)
}

func (s *Suite) newOpener(skR *PrivateKey, pkS *PublicKey, enc, info []byte) (*HPKEOpener, error) {
	if err := s.needHPKE(); err != nil {
		return nil, err
	}
	if skR == nil {
		return nil, fmt.Errorf("pqcrypto: hpke: no recipient private key: %w", ErrWrongKey)
	}
	if err := s.checkKEM("recipient key", skR.kem); err != nil {
		return nil, err
	}
	if len(enc) != s.kem.EncapsulatedKeySize() {
		return nil, fmt.Errorf("pqcrypto: hpke %s: enc is %d bytes, want %d: %w", s.name, len(enc), s.kem.EncapsulatedKeySize(), ErrMalformed)
	}
	recv, err := s.hs.NewReceiver(skR.sk, info)
	if err != nil {
		return nil, fmt.Errorf("pqcrypto: hpke %s: receiver: %w: %v", s.name, ErrInvalidKey, err)
	}
	var o hpke.Opener
	if pkS == nil {
		o, err = recv.Setup(enc)
	} else {
		if !s.kem.auth {
			return nil, fmt.Errorf("pqcrypto: hpke auth mode with %s: KEM is not authenticated: %w", s.name, ErrUnsupported)
		}
		if err := s.checkKEM("sender key", pkS.kem); err != nil {
			return nil, err
		}
		o, err = recv.SetupAuth(enc, pkS.pk)
	}
	if err != nil {
		// A DHKEM enc that is a low-order point, or any decapsulation failure.
		return nil, fmt.Errorf("pqcrypto: hpke %s: decapsulation: %w: %v", s.name, ErrAuthFailed, err)
	}
	return &HPKEOpener{suite: s, o: o}, nil
}

// Seal encrypts the next message of the context with associated data aad.
func (c *HPKESealer) Seal(plaintext, aad []byte) ([]byte, error) {
	ct, err := c.s.Seal(plaintext, aad)
	if err != nil {
		return nil, fmt.Errorf("pqcrypto: hpke seal: %w", err)
	}
	return ct, nil
}

// Export derives length bytes of secret from the context (RFC 9180 section
// 5.3) under exporterContext.
func (c *HPKESealer) Export(exporterContext []byte, length int) ([]byte, error) {
	return export(c.suite, c.s, exporterContext, length)
}

// Open decrypts the next message of the context. A failure is ErrAuthFailed
// and does not advance the context.
func (c *HPKEOpener) Open(ciphertext, aad []byte) ([]byte, error) {
	pt, err := c.o.Open(ciphertext, aad)
	if err != nil {
		if errors.Is(err, hpke.ErrAEADSeqOverflows) {
			return nil, fmt.Errorf("pqcrypto: hpke open: %w: %v", ErrUnsupported, err)
		}
		return nil, fmt.Errorf("pqcrypto: hpke open: %w", ErrAuthFailed)
	}
	return pt, nil
}

// Export derives length bytes of secret from the context under exporterContext.
func (c *HPKEOpener) Export(exporterContext []byte, length int) ([]byte, error) {
	return export(c.suite, c.o, exporterContext, length)
}

func export(s *Suite, c hpke.Context, exporterContext []byte, length int) ([]byte, error) {
	if max := 255 * s.kdf.ExtractSize(); length < 0 || length > max {
		return nil, fmt.Errorf("pqcrypto: hpke export of %d bytes, at most %d: %w", length, max, ErrUnsupported)
	}
	return c.Export(exporterContext, uint(length)), nil
}

// Seal is single-shot HPKE base mode (SealBase): it encrypts plaintext to
// pkR and returns the encapsulated key and the ciphertext.
func (s *Suite) Seal(rnd io.Reader, pkR *PublicKey, info, aad, plaintext []byte) (enc, ciphertext []byte, err error) {
	enc, c, err := s.NewSealer(rnd, pkR, info)
	if err != nil {
		return nil, nil, err
	}
	ct, err := c.Seal(plaintext, aad)
	if err != nil {
		return nil, nil, err
	}
	return enc, ct, nil
}

// Open is single-shot HPKE base mode (OpenBase).
func (s *Suite) Open(skR *PrivateKey, enc, info, aad, ciphertext []byte) ([]byte, error) {
	c, err := s.NewOpener(skR, enc, info)
	if err != nil {
		return nil, err
	}
	return c.Open(ciphertext, aad)
}

// SealAuth is single-shot HPKE auth mode (SealAuth). X-Wing suites return
// ErrUnsupported: X-Wing is not an authenticated KEM.
func (s *Suite) SealAuth(rnd io.Reader, pkR *PublicKey, skS *PrivateKey, info, aad, plaintext []byte) (enc, ciphertext []byte, err error) {
	enc, c, err := s.NewAuthSealer(rnd, pkR, skS, info)
	if err != nil {
		return nil, nil, err
	}
	ct, err := c.Seal(plaintext, aad)
	if err != nil {
		return nil, nil, err
	}
	return enc, ct, nil
}

// OpenAuth is single-shot HPKE auth mode (OpenAuth).
func (s *Suite) OpenAuth(skR *PrivateKey, pkS *PublicKey, enc, info, aad, ciphertext []byte) ([]byte, error) {
	c, err := s.NewAuthOpener(skR, pkS, enc, info)
	if err != nil {
		return nil, err
	}
	return c.Open(ciphertext, aad)
}
