package pqcrypto

import (
	"bytes"
	"testing"
)

// fuzzEnvelopes are valid envelopes of every kind, used as seeds.
func fuzzEnvelopes(tb testing.TB, f *fixture) [][]byte {
	tb.Helper()
	var out [][]byte
	add := func(b []byte, err error) {
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, b)
	}
	o := func(suite string, cs int) *SealOptions {
		return &SealOptions{Suite: suite, RecipientID: f.recipient, ChunkSize: cs, Rand: testRand(1)}
	}
	add(SealWithDataKey(nil, f.dk, nil, o(SuiteDataKeyAES256GCM, 0)))
	add(SealWithDataKey(nil, f.dk, []byte("one chunk"), o(SuiteDataKeyChaCha20Poly1305, 0)))
	add(SealWithDataKey(nil, f.dkOld, seedBytes(100, 1), o(SuiteDataKeyAES256GCM, 16)))
	add(SealToRecipient(nil, f.to(), []byte("to agent"), o(SuiteXWingAES256GCM, 0)))
	add(SealToRecipient(nil, f.to(), seedBytes(40, 2), o(SuiteXWingChaCha20Poly1305, 8)))
	so := o(SuiteDataKeyAES256GCM, 32)
	so.Signer, so.SenderID = f.signer, "controlplane"
	add(SealWithDataKey(nil, f.dk, seedBytes(70, 3), so))
	return out
}

// FuzzParseHeader checks that header parsing never panics, reports only
// named errors, and that whatever parses re-encodes to the same bytes.
func FuzzParseHeader(f *testing.F) {
	fx := newFixture(f)
	for _, env := range fuzzEnvelopes(f, fx) {
		_, n, _ := ParseHeader(env)
		f.Add(env[:n])
	}
	f.Add([]byte("EFE"))
	f.Add([]byte("EFE\x01\x02\x00\x01\x01\x00\x01\x00\x00\x00\x00\x00\x01\x01k\x00"))
	f.Add([]byte("EFE\x02"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, err := ParseHeader(b)
		if err != nil {
			if !isSentinel(err) {
				t.Fatalf("unnamed error: %v", err)
			}
			return
		}
		if n > len(b) || n != h.Size() {
			t.Fatalf("length %d of %d, Size %d", n, len(b), h.Size())
		}
		enc, err := h.MarshalBinary()
		if err != nil {
			t.Fatalf("parsed header does not re-encode: %v", err)
		}
		if !bytes.Equal(enc, b[:n]) {
			t.Fatalf("re-encoding differs:\n%x\n%x", enc, b[:n])
		}
	})
}

// FuzzOpenEnvelope opens arbitrary bytes with keys that open the seeds. It
// checks for panics, that every error is a named one, and that one-shot Open
// and the streaming Reader agree on what opens and on the plaintext.
func FuzzOpenEnvelope(f *testing.F) {
	fx := newFixture(f)
	for _, env := range fuzzEnvelopes(f, fx) {
		f.Add(env)
	}
	keys := fx.keys()
	// Accept any private key id so that mutated headers reach decryption.
	keys.PrivateKey = func(string, uint32) (*PrivateKey, error) { return fx.xwing, nil }
	signedKeys := *keys
	signedKeys.SenderKey = SenderKeyFor("controlplane", fx.signer.Public())
	f.Fuzz(func(t *testing.T, b []byte) {
		h, _, perr := ParseHeader(b)
		k := keys
		if perr == nil && h.Signed() {
			k = &signedKeys
		}
		pt, _, err := Open(nil, b, k)
		if err != nil && !isSentinel(err) {
			t.Fatalf("Open: unnamed error: %v", err)
		}
		if err != nil && pt != nil {
			t.Fatal("plaintext returned with an error")
		}
		if perr == nil && h.Signed() {
			return // streams refuse signed envelopes
		}
		r, rerr := NewReader(bytes.NewReader(b), k)
		var spt []byte
		if rerr == nil {
			var buf bytes.Buffer
			_, rerr = buf.ReadFrom(r)
			spt = buf.Bytes()
		}
		if rerr != nil && !isSentinel(rerr) {
			t.Fatalf("Reader: unnamed error: %v", rerr)
		}
		switch {
		case err == nil && rerr != nil:
			t.Fatalf("Open succeeded, Reader failed: %v", rerr)
		case err == nil && !bytes.Equal(pt, spt):
			t.Fatal("Open and Reader disagree on plaintext")
		case err != nil && rerr == nil && !bytes.Contains([]byte(err.Error()), []byte("after the final chunk")):
			// The Reader stops at the final chunk; only trailing bytes may
			// separate the two.
			t.Fatalf("Reader succeeded, Open failed: %v", err)
		}
	})
}

// FuzzParseSignedMessage checks SignedMessage decoding: no panics, named
// errors, canonical re-encoding, and verification never panics.
func FuzzParseSignedMessage(f *testing.F) {
	fx := newFixture(f)
	m, err := Sign(fx.signer, "edgefleet/identity/v1", "controlplane", []byte(`{"agent":"a1"}`))
	if err != nil {
		f.Fatal(err)
	}
	b, _ := m.MarshalBinary()
	f.Add(b)
	m2, _ := Sign(fx.signer, "", "", nil)
	b2, _ := m2.MarshalBinary()
	f.Add(b2)
	f.Add([]byte("EFS\x01"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseSignedMessage(b)
		if err != nil {
			if !isSentinel(err) {
				t.Fatalf("unnamed error: %v", err)
			}
			return
		}
		enc, err := m.MarshalBinary()
		if err != nil || !bytes.Equal(enc, b) {
			t.Fatalf("re-encoding differs: %v", err)
		}
		if err := m.Verify(fx.signer.Public(), m.Context); err != nil && !isSentinel(err) {
			t.Fatalf("Verify: unnamed error: %v", err)
		}
	})
}

// FuzzParseKeys feeds arbitrary bytes to every key decoder.
func FuzzParseKeys(f *testing.F) {
	fx := newFixture(f)
	f.Add(fx.xwing.Public().Bytes())
	f.Add(fx.xwing.Bytes())
	f.Add(fx.signer.Public().Bytes())
	f.Add(fx.x25519.Public().Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(what string, enc []byte, err error) {
			if err != nil {
				if !isSentinel(err) {
					t.Fatalf("%s: unnamed error: %v", what, err)
				}
				return
			}
			if !bytes.Equal(enc, b) {
				t.Fatalf("%s: re-encoding differs", what)
			}
		}
		if pk, err := ParseXWingPublicKey(b); err == nil {
			check("x-wing public", pk.Bytes(), nil)
		} else {
			check("x-wing public", nil, err)
		}
		if sk, err := NewXWingKeyFromSeed(b); err == nil {
			check("x-wing private", sk.Bytes(), nil)
		} else {
			check("x-wing private", nil, err)
		}
		if pk, err := kemX25519.ParsePublicKey(b); err == nil {
			check("x25519 public", pk.Bytes(), nil)
		} else {
			check("x25519 public", nil, err)
		}
		if vk, err := ParseVerifyingKey(b); err == nil {
			check("ml-dsa public", vk.Bytes(), nil)
			_ = vk.Verify("c", b, b)
		} else {
			check("ml-dsa public", nil, err)
		}
		if sk, err := NewSigningKey(b); err == nil {
			check("ml-dsa seed", sk.Bytes(), nil)
		} else {
			check("ml-dsa seed", nil, err)
		}
	})
}
