package pqcrypto

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"
	"strings"
	"sync"
	"testing"
)

func TestSignVerify(t *testing.T) {
	f := newFixture(t)
	msg := []byte("model v7 sha256=...")
	sig, err := f.signer.Sign("edgefleet/model/v1", msg)
	if err != nil {
		t.Fatal(err)
	}
	pub := f.signer.Public()
	if err := pub.Verify("edgefleet/model/v1", msg, sig); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(sig)
	bad[100] ^= 1
	for what, err := range map[string]error{
		"other context": pub.Verify("edgefleet/manifest/v1", msg, sig),
		"other message": pub.Verify("edgefleet/model/v1", append(bytes.Clone(msg), 0), sig),
		"other key":     f.attacker.Public().Verify("edgefleet/model/v1", msg, sig),
		"flipped sig":   pub.Verify("edgefleet/model/v1", msg, bad),
		"short sig":     pub.Verify("edgefleet/model/v1", msg, sig[:10]),
	} {
		if !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: %v", what, err)
		}
	}
	if _, err := f.signer.Sign(strings.Repeat("c", 256), msg); !errors.Is(err, ErrMalformed) {
		t.Fatal(err)
	}
	if err := pub.Verify(strings.Repeat("c", 256), msg, sig); !errors.Is(err, ErrMalformed) {
		t.Fatal(err)
	}
}

func TestSigningKeys(t *testing.T) {
	k, err := GenerateSigningKey(testRand(1))
	if err != nil {
		t.Fatal(err)
	}
	k2, _ := NewSigningKey(k.Bytes())
	if !k2.Public().Equal(k.Public()) || len(k.Bytes()) != SigningSeedSize {
		t.Fatal("seed does not round-trip")
	}
	pub, err := ParseVerifyingKey(k.Public().Bytes())
	if err != nil || !pub.Equal(k.Public()) || pub.Fingerprint() != k.Public().Fingerprint() {
		t.Fatal("public key does not round-trip")
	}
	if _, err := ParseVerifyingKey(make([]byte, 10)); !errors.Is(err, ErrInvalidKey) {
		t.Fatal(err)
	}
	if _, err := NewSigningKey(make([]byte, 31)); !errors.Is(err, ErrInvalidKey) {
		t.Fatal(err)
	}
}

func TestSignedMessage(t *testing.T) {
	f := newFixture(t)
	m, err := Sign(f.signer, "edgefleet/identity/v1", "controlplane", []byte(`{"agent":"a1"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParseSignedMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Verify(f.signer.Public(), "edgefleet/identity/v1"); err != nil {
		t.Fatal(err)
	}
	if p.SignerID != "controlplane" || string(p.Payload) != `{"agent":"a1"}` {
		t.Fatalf("%+v", p)
	}
	if err := p.Verify(f.signer.Public(), "edgefleet/rollout/v1"); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("context confusion: %v", err)
	}
	if err := p.Verify(f.attacker.Public(), "edgefleet/identity/v1"); !errors.Is(err, ErrBadSignature) {
		t.Fatal(err)
	}
	if err := p.Verify(nil, "edgefleet/identity/v1"); !errors.Is(err, ErrWrongKey) {
		t.Fatal(err)
	}
	// Every flipped byte is rejected by parsing or by verification.
	for i := range b {
		bad := bytes.Clone(b)
		bad[i] ^= 0x04
		pm, err := ParseSignedMessage(bad)
		if err == nil {
			err = pm.Verify(f.signer.Public(), "edgefleet/identity/v1")
		}
		if err == nil || !isSentinel(err) {
			t.Fatalf("byte %d: %v", i, err)
		}
	}
	for n := 0; n < len(b); n++ {
		if _, err := ParseSignedMessage(b[:n]); !errors.Is(err, ErrTruncated) {
			t.Fatalf("cut at %d: %v", n, err)
		}
	}
	if _, err := ParseSignedMessage(append(bytes.Clone(b), 0)); !errors.Is(err, ErrMalformed) {
		t.Fatal(err)
	}
	v2 := bytes.Clone(b)
	v2[3] = 2
	if _, err := ParseSignedMessage(v2); !errors.Is(err, ErrUnsupportedVersion) {
		t.Fatal(err)
	}
	if _, err := (&SignedMessage{}).MarshalBinary(); !errors.Is(err, ErrMalformed) {
		t.Fatal(err)
	}
}

type manifest struct {
	Model   string `json:"model"`
	Version int    `json:"version"`
}

func TestSignJSON(t *testing.T) {
	f := newFixture(t)
	m, err := SignJSON(f.signer, "edgefleet/rollout-manifest/v1", "controlplane", manifest{"har", 7})
	if err != nil {
		t.Fatal(err)
	}
	got, err := VerifyJSON[manifest](m, f.signer.Public(), "edgefleet/rollout-manifest/v1")
	if err != nil || got != (manifest{"har", 7}) {
		t.Fatalf("%+v %v", got, err)
	}
	m.Payload = []byte(`{"model":"har","version":8}`)
	if _, err := VerifyJSON[manifest](m, f.signer.Public(), "edgefleet/rollout-manifest/v1"); !errors.Is(err, ErrBadSignature) {
		t.Fatal(err)
	}
}

// TestDataKeyDerivationIsHKDF checks the pooled HMAC derivation against
// crypto/hkdf.Expand, and that it is safe under concurrent use.
func TestDataKeyDerivationIsHKDF(t *testing.T) {
	k, err := GenerateDataKey(testRand(1), "k", 1)
	if err != nil {
		t.Fatal(err)
	}
	salt := seedBytes(saltSize, 9)
	want, err := hkdf.Expand(sha256.New, k.Secret(), dataKeyInfo(0x0101, salt), 32)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if got := k.messageKey(0x0101, salt); !bytes.Equal(got, want) {
					t.Error("message key differs from HKDF-Expand")
					return
				}
			}
		}()
	}
	wg.Wait()
	if bytes.Equal(k.messageKey(0x0102, salt), want) {
		t.Fatal("suite id not bound into the message key")
	}
	k2, _ := NewDataKey("k", 1, k.Secret())
	if !k.Equal(k2) || k.ID() != "k" || k.Version() != 1 {
		t.Fatal("data key accessors")
	}
}
