package pqcrypto

import (
	"bytes"
	"errors"
	"testing"

	"github.com/cloudflare/circl/hpke"
)

func TestRegistry(t *testing.T) {
	want := map[string][4]uint16{ // suite id, kem, kdf, aead
		SuiteXWingAES256GCM:          {0x0001, 0x647a, 1, 2},
		SuiteXWingChaCha20Poly1305:   {0x0002, 0x647a, 1, 3},
		SuiteX25519AES256GCM:         {0x0003, 0x0020, 1, 2},
		SuiteX25519ChaCha20Poly1305:  {0x0004, 0x0020, 1, 3},
		SuiteDataKeyAES256GCM:        {0x0101, 0, 1, 2},
		SuiteDataKeyChaCha20Poly1305: {0x0102, 0, 1, 3},
	}
	names := SuiteNames()
	if len(names) != len(want) {
		t.Fatalf("registry has %v", names)
	}
	for _, name := range names {
		s, err := LookupSuite(name)
		if err != nil {
			t.Fatal(err)
		}
		w := want[name]
		if got := [4]uint16{s.ID(), s.KEMID(), s.KDFID(), s.AEADID()}; got != w {
			t.Errorf("%s: ids %v, want %v", name, got, w)
		}
		byID, err := SuiteByID(s.ID())
		if err != nil || byID != s {
			t.Errorf("SuiteByID(%#x) = %v, %v", s.ID(), byID, err)
		}
		if s.PostQuantum() != (w[1] != 0x0020) {
			t.Errorf("%s: PostQuantum = %t", name, s.PostQuantum())
		}
	}
	if _, err := LookupSuite("xwing-hkdfsha256-aes128gcm"); !errors.Is(err, ErrUnknownSuite) {
		t.Fatal(err)
	}
	if _, err := SuiteByID(0x9999); !errors.Is(err, ErrUnknownSuite) {
		t.Fatal(err)
	}
	for _, n := range []string{"xwing", "X-Wing", "x25519"} {
		if _, err := LookupKEM(n); err != nil {
			t.Fatal(err)
		}
	}
	if k, err := KEMByID(0x647a); err != nil || k != XWing() || !k.PostQuantum() || k.SupportsAuth() {
		t.Fatalf("KEMByID: %v %v", k, err)
	}
	if _, err := LookupKEM("kyber"); !errors.Is(err, ErrUnknownSuite) {
		t.Fatal(err)
	}
}

func TestXWingKeys(t *testing.T) {
	sk, err := GenerateXWingKey(testRand(1))
	if err != nil {
		t.Fatal(err)
	}
	sk2, err := GenerateXWingKey(testRand(1))
	if err != nil || !sk.Equal(sk2) {
		t.Fatal("key generation is not a function of the randomness")
	}
	if len(sk.Bytes()) != 32 || len(sk.Public().Bytes()) != 1216 {
		t.Fatalf("sizes %d %d", len(sk.Bytes()), len(sk.Public().Bytes()))
	}
	again, err := NewXWingKeyFromSeed(sk.Bytes())
	if err != nil || !again.Equal(sk) || !again.Public().Equal(sk.Public()) {
		t.Fatal("private key does not round-trip")
	}
	pk, err := ParseXWingPublicKey(sk.Public().Bytes())
	if err != nil || !pk.Equal(sk.Public()) || pk.Fingerprint() != sk.Public().Fingerprint() {
		t.Fatal("public key does not round-trip")
	}
	other, _ := GenerateXWingKey(testRand(2))
	if other.Equal(sk) || other.Public().Equal(pk) || other.Public().Fingerprint() == pk.Fingerprint() {
		t.Fatal("different keys compare equal")
	}
	if _, err := NewXWingKeyFromSeed(make([]byte, 31)); !errors.Is(err, ErrInvalidKey) {
		t.Fatal(err)
	}
	if _, err := ParseXWingPublicKey(make([]byte, 1215)); !errors.Is(err, ErrInvalidKey) {
		t.Fatal(err)
	}
	// An ML-KEM encapsulation key with a coefficient >= q fails the FIPS 203
	// modulus check.
	bad := sk.Public().Bytes()
	bad[0], bad[1] = 0xff, 0xff
	if _, err := ParseXWingPublicKey(bad); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("invalid ML-KEM key accepted: %v", err)
	}
	if _, err := GenerateXWingKey(bytes.NewReader(make([]byte, 5))); err == nil {
		t.Fatal("short randomness accepted")
	}
	// HPKE DeriveKeyPair hashes ikm first, so it differs from the seed key.
	d, err := XWing().DeriveKeyPair(sk.Bytes())
	if err != nil || d.Equal(sk) {
		t.Fatalf("DeriveKeyPair: %v", err)
	}
	if _, err := XWing().DeriveKeyPair(make([]byte, 16)); !errors.Is(err, ErrInvalidKey) {
		t.Fatal(err)
	}
}

func TestHPKERoundTrip(t *testing.T) {
	f := newFixture(t)
	for _, name := range []string{SuiteXWingAES256GCM, SuiteXWingChaCha20Poly1305} {
		s, _ := LookupSuite(name)
		info, aad, pt := []byte("edgefleet enroll"), []byte("aad"), []byte("hello agent")
		enc, ct, err := s.Seal(testRand(1), f.xwing.Public(), info, aad, pt)
		if err != nil {
			t.Fatal(err)
		}
		if len(enc) != 1120 || len(ct) != len(pt)+16 {
			t.Fatalf("sizes %d %d", len(enc), len(ct))
		}
		got, err := s.Open(f.xwing, enc, info, aad, ct)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("Open = %q, %v", got, err)
		}
		for what, fn := range map[string]func() error{
			"wrong key":  func() error { _, err := s.Open(f.xwing2, enc, info, aad, ct); return err },
			"wrong info": func() error { _, err := s.Open(f.xwing, enc, []byte("x"), aad, ct); return err },
			"wrong aad":  func() error { _, err := s.Open(f.xwing, enc, info, nil, ct); return err },
			"flipped ct": func() error {
				c := bytes.Clone(ct)
				c[0] ^= 1
				_, err := s.Open(f.xwing, enc, info, aad, c)
				return err
			},
			"flipped enc": func() error {
				e := bytes.Clone(enc)
				e[5] ^= 1
				_, err := s.Open(f.xwing, e, info, aad, ct)
				return err
			},
		} {
			if err := fn(); !errors.Is(err, ErrAuthFailed) {
				t.Errorf("%s %s: %v", name, what, err)
			}
		}
		if _, err := s.Open(f.xwing, enc[:100], info, aad, ct); !errors.Is(err, ErrMalformed) {
			t.Errorf("short enc: %v", err)
		}
		if _, _, err := s.Seal(nil, f.x25519.Public(), info, aad, pt); !errors.Is(err, ErrWrongKey) {
			t.Errorf("x25519 key: %v", err)
		}
		if _, err := s.Open(f.x25519, enc, info, aad, ct); !errors.Is(err, ErrWrongKey) {
			t.Errorf("x25519 private key: %v", err)
		}
	}
	dks, _ := LookupSuite(SuiteDataKeyAES256GCM)
	if _, _, err := dks.Seal(nil, f.xwing.Public(), nil, nil, nil); !errors.Is(err, ErrUnknownSuite) {
		t.Errorf("data-key suite used for HPKE: %v", err)
	}
}

// TestHPKEInteropWithCircl checks that our output is plain RFC 9180 HPKE:
// circl's hpke package, used directly, opens what we seal and vice versa.
func TestHPKEInteropWithCircl(t *testing.T) {
	f := newFixture(t)
	s, _ := LookupSuite(SuiteXWingAES256GCM)
	bare := hpke.NewSuite(hpke.KEM_XWING, hpke.KDF_HKDF_SHA256, hpke.AEAD_AES256GCM)
	info, aad, pt := []byte("info"), []byte("aad"), []byte("interop")

	enc, ct, err := s.Seal(testRand(3), f.xwing.Public(), info, aad, pt)
	if err != nil {
		t.Fatal(err)
	}
	skR, err := hpke.KEM_XWING.Scheme().UnmarshalBinaryPrivateKey(f.xwing.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	recv, _ := bare.NewReceiver(skR, info)
	op, err := recv.Setup(enc)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := op.Open(ct, aad); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("circl could not open our HPKE: %v", err)
	}

	pkR, _ := hpke.KEM_XWING.Scheme().UnmarshalBinaryPublicKey(f.xwing.Public().Bytes())
	snd, _ := bare.NewSender(pkR, info)
	enc2, sl, err := snd.Setup(testRand(4))
	if err != nil {
		t.Fatal(err)
	}
	ct2, _ := sl.Seal(pt, aad)
	if got, err := s.Open(f.xwing, enc2, info, aad, ct2); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("we could not open circl's HPKE: %v", err)
	}
	// Same randomness, same output.
	enc3, ct3, _ := s.Seal(testRand(4), f.xwing.Public(), info, aad, pt)
	if !bytes.Equal(enc3, enc2) || !bytes.Equal(ct3, ct2) {
		t.Fatal("output differs from circl's for the same randomness")
	}
}

func TestHPKEAuthMode(t *testing.T) {
	f := newFixture(t)
	xw, _ := LookupSuite(SuiteXWingAES256GCM)
	if _, _, err := xw.SealAuth(nil, f.xwing.Public(), f.xwing2, nil, nil, nil); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("X-Wing auth mode: %v", err)
	}
	if _, err := xw.OpenAuth(f.xwing, f.xwing2.Public(), make([]byte, 1120), nil, nil, nil); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("X-Wing auth open: %v", err)
	}
	s, _ := LookupSuite(SuiteX25519ChaCha20Poly1305)
	recipient, _ := kemX25519.GenerateKeyPair(testRand(10))
	sender, _ := kemX25519.GenerateKeyPair(testRand(11))
	mallory, _ := kemX25519.GenerateKeyPair(testRand(12))
	enc, ct, err := s.SealAuth(testRand(13), recipient.Public(), sender, []byte("i"), []byte("a"), []byte("p"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.OpenAuth(recipient, sender.Public(), enc, []byte("i"), []byte("a"), ct); err != nil || string(got) != "p" {
		t.Fatalf("OpenAuth = %q, %v", got, err)
	}
	if _, err := s.OpenAuth(recipient, mallory.Public(), enc, []byte("i"), []byte("a"), ct); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("wrong sender: %v", err)
	}
	if _, err := s.Open(recipient, enc, []byte("i"), []byte("a"), ct); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("auth ciphertext opened in base mode: %v", err)
	}
	if _, _, err := s.SealAuth(nil, recipient.Public(), nil, nil, nil, nil); !errors.Is(err, ErrWrongKey) {
		t.Fatal(err)
	}
	// A low-order X25519 point as enc fails decapsulation cleanly.
	if _, err := s.Open(recipient, make([]byte, 32), nil, nil, ct); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("zero enc: %v", err)
	}
}

func TestHPKEContextAndExport(t *testing.T) {
	f := newFixture(t)
	s, _ := LookupSuite(SuiteXWingAES256GCM)
	enc, sealer, err := s.NewSealer(testRand(1), f.xwing.Public(), []byte("info"))
	if err != nil {
		t.Fatal(err)
	}
	opener, err := s.NewOpener(f.xwing, enc, []byte("info"))
	if err != nil {
		t.Fatal(err)
	}
	var cts [][]byte
	for i := 0; i < 3; i++ {
		ct, err := sealer.Seal([]byte{byte(i)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		cts = append(cts, ct)
	}
	if _, err := opener.Open(cts[1], nil); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("out of order message opened: %v", err)
	}
	for i, ct := range cts {
		if got, err := opener.Open(ct, nil); err != nil || got[0] != byte(i) {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	a, _ := sealer.Export([]byte("x"), 32)
	b, _ := opener.Export([]byte("x"), 32)
	if !bytes.Equal(a, b) {
		t.Fatal("exports differ")
	}
	if _, err := sealer.Export(nil, 255*32+1); !errors.Is(err, ErrUnsupported) {
		t.Fatal(err)
	}
}

func TestKEMOperations(t *testing.T) {
	f := newFixture(t)
	enc, ss, err := XWing().Encapsulate(testRand(1), f.xwing.Public())
	if err != nil {
		t.Fatal(err)
	}
	ss2, err := XWing().Decapsulate(f.xwing, enc)
	if err != nil || !bytes.Equal(ss, ss2) {
		t.Fatal("decapsulation mismatch")
	}
	ss3, _ := XWing().Decapsulate(f.xwing2, enc)
	if bytes.Equal(ss, ss3) {
		t.Fatal("wrong key decapsulated to the same secret")
	}
	if _, err := XWing().Decapsulate(f.xwing, enc[1:]); !errors.Is(err, ErrMalformed) {
		t.Fatal(err)
	}
	if _, _, err := XWing().Encapsulate(nil, f.x25519.Public()); !errors.Is(err, ErrWrongKey) {
		t.Fatal(err)
	}
	if _, err := XWing().Decapsulate(f.x25519, enc); !errors.Is(err, ErrWrongKey) {
		t.Fatal(err)
	}
}
