package pqcrypto

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/cloudflare/circl/hpke"
)

type sealCase struct {
	name string
	seal func(f *fixture, pt []byte, o *SealOptions) ([]byte, error)
	open func(f *fixture) *Keys
}

func sealCases() []sealCase {
	return []sealCase{
		{"datakey-aes", func(f *fixture, pt []byte, o *SealOptions) ([]byte, error) {
			o.Suite = SuiteDataKeyAES256GCM
			return SealWithDataKey(nil, f.dk, pt, o)
		}, (*fixture).keys},
		{"datakey-chacha", func(f *fixture, pt []byte, o *SealOptions) ([]byte, error) {
			o.Suite = SuiteDataKeyChaCha20Poly1305
			return SealWithDataKey(nil, f.dk, pt, o)
		}, (*fixture).keys},
		{"xwing-aes", func(f *fixture, pt []byte, o *SealOptions) ([]byte, error) {
			o.Suite = SuiteXWingAES256GCM
			return SealToRecipient(nil, f.to(), pt, o)
		}, (*fixture).keys},
		{"xwing-chacha", func(f *fixture, pt []byte, o *SealOptions) ([]byte, error) {
			o.Suite = SuiteXWingChaCha20Poly1305
			return SealToRecipient(nil, f.to(), pt, o)
		}, (*fixture).keys},
		{"datakey-signed", func(f *fixture, pt []byte, o *SealOptions) ([]byte, error) {
			o.Signer, o.SenderID = f.signer, "controlplane"
			return SealWithDataKey(nil, f.dk, pt, o)
		}, (*fixture).signedKeys},
		{"xwing-signed", func(f *fixture, pt []byte, o *SealOptions) ([]byte, error) {
			o.Signer, o.SenderID = f.signer, "controlplane"
			return SealToRecipient(nil, f.to(), pt, o)
		}, (*fixture).signedKeys},
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	f := newFixture(t)
	const cs = 64
	sizes := []int{0, 1, 63, 64, 65, 128, 200, 3*64 + 5}
	for _, c := range sealCases() {
		for _, n := range sizes {
			t.Run(fmt.Sprintf("%s/%d", c.name, n), func(t *testing.T) {
				pt := seedBytes(n, byte(n))
				env, err := c.seal(f, pt, &SealOptions{RecipientID: f.recipient, ChunkSize: cs, Rand: testRand(9), AAD: []byte("ctx")})
				if err != nil {
					t.Fatal(err)
				}
				keys := c.open(f)
				keys.AAD = []byte("ctx")
				got, h, err := Open(nil, env, keys)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, pt) {
					t.Fatalf("plaintext mismatch")
				}
				if h.RecipientID != f.recipient || h.ChunkSize != cs || h.Version != FormatVersion {
					t.Fatalf("header = %+v", h)
				}
				if h.Signed() {
					return
				}
				streamed, err := readAll(env, keys)
				if err != nil || !bytes.Equal(streamed, pt) {
					t.Fatalf("Reader = %d bytes, %v", len(streamed), err)
				}
			})
		}
	}
}

// TestEnvelopeDefaults covers nil options, default suites, key ids and large
// payloads with the default 64 KiB chunks; Open appends to dst.
func TestEnvelopeDefaults(t *testing.T) {
	f := newFixture(t)
	pt := seedBytes(200<<10+3, 1)
	env, err := SealWithDataKey([]byte("prefix"), f.dk, pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(env, []byte("prefix")) {
		t.Fatal("dst not kept")
	}
	env = env[len("prefix"):]
	got, h, err := Open([]byte("x"), env, &Keys{DataKey: DataKeys(f.dk)})
	if err != nil || !bytes.Equal(got[1:], pt) || got[0] != 'x' {
		t.Fatalf("Open: %v", err)
	}
	if h.Suite.Name() != DefaultDataKeySuite || h.ChunkSize != DefaultChunkSize || h.KeyID != "telemetry" || h.KeyVersion != 3 {
		t.Fatalf("header %+v", h)
	}
	env, err = SealToRecipient(nil, RecipientKey{PublicKey: f.xwing.Public()}, pt, nil)
	if err != nil {
		t.Fatal(err)
	}
	h, _, err = ParseHeader(env)
	if err != nil {
		t.Fatal(err)
	}
	if h.Suite.Name() != DefaultRecipientSuite || h.KeyID != f.xwing.Public().Fingerprint() || len(h.Enc) != 1120 {
		t.Fatalf("header %+v", h)
	}
	got, _, err = Open(nil, env, &Keys{PrivateKey: PrivateKeyFor(h.KeyID, 0, f.xwing)})
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open: %v", err)
	}
}

// TestStreamMatchesOneShot checks that the streaming Writer produces the same
// bytes as one-shot sealing for every write pattern, given the same
// randomness.
func TestStreamMatchesOneShot(t *testing.T) {
	f := newFixture(t)
	for _, n := range []int{0, 1, 64, 65, 640, 641} {
		pt := seedBytes(n, 3)
		for _, step := range []int{1, 7, 64, 65, 1000} {
			for _, mode := range []string{"datakey", "recipient"} {
				o := &SealOptions{ChunkSize: 64, Rand: testRand(1), RecipientID: f.recipient}
				var want []byte
				var err error
				var w *Writer
				var buf bytes.Buffer
				if mode == "datakey" {
					want, err = SealWithDataKey(nil, f.dk, pt, o)
					o.Rand = testRand(1)
					if err == nil {
						w, err = NewDataKeyWriter(&buf, f.dk, o)
					}
				} else {
					want, err = SealToRecipient(nil, f.to(), pt, o)
					o.Rand = testRand(1)
					if err == nil {
						w, err = NewRecipientWriter(&buf, f.to(), o)
					}
				}
				if err != nil {
					t.Fatal(err)
				}
				for i := 0; i < len(pt); i += step {
					if _, err := w.Write(pt[i:min(len(pt), i+step)]); err != nil {
						t.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf.Bytes(), want) {
					t.Fatalf("%s n=%d step=%d: stream output differs from one-shot", mode, n, step)
				}
				if _, err := w.Write([]byte{1}); !errors.Is(err, ErrUnsupported) {
					t.Fatalf("write after close: %v", err)
				}
			}
		}
	}
}

// TestEnvelopeEveryFlippedByteRejected flips each bit position 0 and 7 of
// every byte of envelopes in every mode and checks that opening fails, both
// one-shot and streaming, with a named error.
func TestEnvelopeEveryFlippedByteRejected(t *testing.T) {
	f := newFixture(t)
	pt := seedBytes(150, 1)
	for _, c := range sealCases() {
		t.Run(c.name, func(t *testing.T) {
			env, err := c.seal(f, pt, &SealOptions{RecipientID: f.recipient, ChunkSize: 64, Rand: testRand(2)})
			if err != nil {
				t.Fatal(err)
			}
			keys := c.open(f)
			if _, _, err := Open(nil, env, keys); err != nil {
				t.Fatal(err)
			}
			signed := keys.SenderKey != nil
			for i := range env {
				for _, mask := range []byte{0x01, 0x80} {
					bad := bytes.Clone(env)
					bad[i] ^= mask
					got, _, err := Open(nil, bad, keys)
					if err == nil || got != nil {
						t.Fatalf("byte %d ^ %#x: opened", i, mask)
					}
					if !isSentinel(err) {
						t.Fatalf("byte %d ^ %#x: unnamed error %v", i, mask, err)
					}
					if signed {
						continue // streams cannot carry signed envelopes
					}
					if _, err := readAll(bad, keys); err == nil || !isSentinel(err) {
						t.Fatalf("byte %d ^ %#x: Reader: %v", i, mask, err)
					}
				}
			}
		})
	}
}

// TestEnvelopeTruncation cuts envelopes at every length, including chunk
// boundaries, and expects ErrTruncated (ErrBadSignature for signed ones,
// whose signature is cut).
func TestEnvelopeTruncation(t *testing.T) {
	f := newFixture(t)
	pt := seedBytes(130, 1)
	for _, c := range sealCases() {
		t.Run(c.name, func(t *testing.T) {
			env, err := c.seal(f, pt, &SealOptions{RecipientID: f.recipient, ChunkSize: 64, Rand: testRand(2)})
			if err != nil {
				t.Fatal(err)
			}
			keys := c.open(f)
			for n := 0; n < len(env); n++ {
				_, _, err := Open(nil, env[:n], keys)
				switch {
				case keys.SenderKey == nil && !errors.Is(err, ErrTruncated):
					t.Fatalf("cut at %d/%d: %v, want ErrTruncated", n, len(env), err)
				case keys.SenderKey != nil && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrBadSignature):
					// The signature is read from the end, so a cut signed
					// envelope fails its signature check.
					t.Fatalf("cut at %d/%d: %v, want ErrTruncated or ErrBadSignature", n, len(env), err)
				}
				if keys.SenderKey == nil {
					if _, err := readAll(env[:n], keys); !errors.Is(err, ErrTruncated) {
						t.Fatalf("Reader cut at %d/%d: %v", n, len(env), err)
					}
				}
			}
		})
	}
}

// TestEnvelopeChunkAttacks reorders, duplicates, drops, splices and extends
// chunks.
func TestEnvelopeChunkAttacks(t *testing.T) {
	f := newFixture(t)
	pt := seedBytes(64*3+10, 1)
	for _, c := range sealCases()[:4] {
		t.Run(c.name, func(t *testing.T) {
			o := &SealOptions{RecipientID: f.recipient, ChunkSize: 64, Rand: testRand(2)}
			env, err := c.seal(f, pt, o)
			if err != nil {
				t.Fatal(err)
			}
			o.Rand = testRand(3)
			other, err := c.seal(f, pt, o)
			if err != nil {
				t.Fatal(err)
			}
			hdr, ch := splitEnvelope(t, env)
			_, och := splitEnvelope(t, other)
			if len(ch) != 4 {
				t.Fatalf("want 4 chunks, got %d", len(ch))
			}
			asFinal := bytes.Clone(ch[1])
			asFinal[0] |= 0x80
			attacks := []struct {
				name string
				env  []byte
				want error
			}{
				{"swap 0 and 1", join(hdr, ch[1], ch[0], ch[2], ch[3]), ErrAuthFailed},
				{"swap 1 and 2", join(hdr, ch[0], ch[2], ch[1], ch[3]), ErrAuthFailed},
				{"duplicate 1", join(hdr, ch[0], ch[1], ch[1], ch[2], ch[3]), ErrAuthFailed},
				{"drop 1", join(hdr, ch[0], ch[2], ch[3]), ErrAuthFailed},
				{"drop final", join(hdr, ch[0], ch[1], ch[2]), ErrTruncated},
				{"only first", join(hdr, ch[0]), ErrTruncated},
				{"header only", join(hdr), ErrTruncated},
				{"mark 1 final, drop rest", join(hdr, ch[0], asFinal), ErrAuthFailed},
				{"final chunk twice", join(hdr, ch[0], ch[1], ch[2], ch[3], ch[3]), ErrMalformed},
				{"trailing byte", append(join(hdr, ch...), 0), ErrMalformed},
				{"splice from other envelope", join(hdr, ch[0], och[1], ch[2], ch[3]), ErrAuthFailed},
				{"other header", join(hdr[:0], other[:len(hdr)], ch[0], ch[1], ch[2], ch[3]), ErrAuthFailed},
			}
			keys := c.open(f)
			for _, a := range attacks {
				if _, _, err := Open(nil, a.env, keys); !errors.Is(err, a.want) {
					t.Errorf("%s: Open = %v, want %v", a.name, err, a.want)
				}
				got, err := readAll(a.env, keys)
				if a.want == ErrMalformed && err == nil {
					// A stream reader stops at the final chunk; what follows
					// belongs to the next message.
					if !bytes.Equal(got, pt) {
						t.Errorf("%s: Reader plaintext mismatch", a.name)
					}
					continue
				}
				if !errors.Is(err, a.want) {
					t.Errorf("%s: Reader = %v, want %v", a.name, err, a.want)
				}
			}
		})
	}
}

func TestEnvelopeWrongKeys(t *testing.T) {
	f := newFixture(t)
	pt := []byte("reading 42")
	o := &SealOptions{RecipientID: f.recipient, Rand: testRand(1)}
	dkEnv, err := SealWithDataKey(nil, f.dk, pt, o)
	if err != nil {
		t.Fatal(err)
	}
	oldEnv, err := SealWithDataKey(nil, f.dkOld, pt, o)
	if err != nil {
		t.Fatal(err)
	}
	rcEnv, err := SealToRecipient(nil, f.to(), pt, o)
	if err != nil {
		t.Fatal(err)
	}
	sameNameOtherSecret, _ := NewDataKey("telemetry", 3, seedBytes(32, 99))
	cases := []struct {
		name string
		env  []byte
		keys *Keys
		want error
	}{
		{"other recipient", dkEnv, &Keys{RecipientID: "agent-8", DataKey: DataKeys(f.dk)}, ErrWrongRecipient},
		{"no recipient id", rcEnv, &Keys{PrivateKey: PrivateKeyFor("agent-7-kem", 1, f.xwing)}, ErrWrongRecipient},
		{"retired version", oldEnv, &Keys{RecipientID: f.recipient, DataKey: DataKeys(f.dk)}, ErrKeyVersion},
		{"unknown key id", dkEnv, &Keys{RecipientID: f.recipient, DataKey: DataKeys(f.dkOld)}, ErrKeyVersion},
		{"same id other secret", dkEnv, &Keys{RecipientID: f.recipient, DataKey: DataKeys(sameNameOtherSecret)}, ErrAuthFailed},
		{"lookup returns other version", dkEnv, &Keys{RecipientID: f.recipient, DataKey: func(string, uint32) (*DataKey, error) { return f.dkOld, nil }}, ErrKeyVersion},
		{"no data keys", dkEnv, &Keys{RecipientID: f.recipient, PrivateKey: PrivateKeyFor("agent-7-kem", 1, f.xwing)}, ErrWrongKey},
		{"no private keys", rcEnv, &Keys{RecipientID: f.recipient, DataKey: DataKeys(f.dk)}, ErrWrongKey},
		{"other x-wing key", rcEnv, &Keys{RecipientID: f.recipient, PrivateKey: PrivateKeyFor("agent-7-kem", 1, f.xwing2)}, ErrAuthFailed},
		{"x25519 key for x-wing suite", rcEnv, &Keys{RecipientID: f.recipient, PrivateKey: PrivateKeyFor("agent-7-kem", 1, f.x25519)}, ErrWrongKey},
		{"private key version", rcEnv, &Keys{RecipientID: f.recipient, PrivateKey: PrivateKeyFor("agent-7-kem", 2, f.xwing)}, ErrKeyVersion},
		{"aad mismatch", dkEnv, &Keys{RecipientID: f.recipient, DataKey: DataKeys(f.dk), AAD: []byte("x")}, ErrAuthFailed},
		{"signature required", dkEnv, &Keys{RecipientID: f.recipient, DataKey: DataKeys(f.dk), SenderKey: SenderKeyFor("controlplane", f.signer.Public())}, ErrBadSignature},
	}
	for _, c := range cases {
		got, h, err := Open(nil, c.env, c.keys)
		if !errors.Is(err, c.want) || got != nil {
			t.Errorf("%s: Open = %v, want %v", c.name, err, c.want)
		}
		if h == nil {
			t.Errorf("%s: header not returned for diagnostics", c.name)
		}
		if _, err := readAll(c.env, c.keys); !errors.Is(err, c.want) {
			t.Errorf("%s: Reader = %v, want %v", c.name, err, c.want)
		}
	}
	// Both versions open while both are held (rotation: old is decrypt-only).
	for _, env := range [][]byte{dkEnv, oldEnv} {
		if _, _, err := Open(nil, env, f.keys()); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSignedEnvelope(t *testing.T) {
	f := newFixture(t)
	pt := []byte("key version 4 of telemetry")
	o := &SealOptions{RecipientID: f.recipient, Rand: testRand(1), Signer: f.signer, SenderID: "controlplane"}
	env, err := SealToRecipient(nil, f.to(), pt, o)
	if err != nil {
		t.Fatal(err)
	}
	got, h, err := Open(nil, env, f.signedKeys())
	if err != nil || !bytes.Equal(got, pt) || h.SenderID != "controlplane" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, _, err := Open(nil, env, f.keys()); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("no sender keys: %v", err)
	}
	wrong := f.keys()
	wrong.SenderKey = SenderKeyFor("controlplane", f.attacker.Public())
	if _, _, err := Open(nil, env, wrong); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("wrong sender key: %v", err)
	}
	unknown := f.keys()
	unknown.SenderKey = SenderKeyFor("someone-else", f.signer.Public())
	if _, _, err := Open(nil, env, unknown); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("unknown sender: %v", err)
	}

	// An attacker who strips the signature and signs the same ciphertext as
	// themselves must change the sender id in the header, which breaks
	// decryption even though the new signature is valid.
	hn := h.Size()
	attackerHdr := *h
	attackerHdr.SenderID = "mallory"
	newHdr, err := attackerHdr.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	forged := append(newHdr, env[hn:len(env)-SignatureSize]...)
	sig, err := f.attacker.Sign(envelopeSignContext, forged)
	if err != nil {
		t.Fatal(err)
	}
	forged = append(forged, sig...)
	both := f.keys()
	both.SenderKey = func(id string) (*VerifyingKey, error) {
		if id == "mallory" {
			return f.attacker.Public(), nil
		}
		return f.signer.Public(), nil
	}
	if _, _, err := Open(nil, forged, both); !errors.Is(err, ErrAuthFailed) {
		t.Fatalf("re-signed envelope: %v, want ErrAuthFailed", err)
	}

	// Dropping the signature is noticed by openers that require one.
	if _, _, err := Open(nil, env[:len(env)-SignatureSize], f.signedKeys()); err == nil {
		t.Fatal("envelope without its signature opened")
	}

	// Streams cannot be signed.
	if _, err := NewDataKeyWriter(io.Discard, f.dk, o); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("signed writer: %v", err)
	}
	if _, err := NewReader(bytes.NewReader(env), f.signedKeys()); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("signed reader: %v", err)
	}
	if _, err := SealWithDataKey(nil, f.dk, pt, &SealOptions{Signer: f.signer}); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("signer without sender id: %v", err)
	}
}

func TestEnvelopeSealErrors(t *testing.T) {
	f := newFixture(t)
	cases := []struct {
		name string
		err  error
		want error
	}{}
	add := func(name string, want error, err error) {
		cases = append(cases, struct {
			name string
			err  error
			want error
		}{name, err, want})
	}
	_, err := SealWithDataKey(nil, f.dk, nil, &SealOptions{Suite: "rot13"})
	add("unknown suite", ErrUnknownSuite, err)
	_, err = SealWithDataKey(nil, f.dk, nil, &SealOptions{Suite: SuiteXWingAES256GCM})
	add("hpke suite for data key", ErrUnknownSuite, err)
	_, err = SealToRecipient(nil, f.to(), nil, &SealOptions{Suite: SuiteDataKeyAES256GCM})
	add("data-key suite for recipient", ErrUnknownSuite, err)
	_, err = SealToRecipient(nil, f.to(), nil, &SealOptions{Suite: SuiteX25519AES256GCM})
	add("x-wing key for x25519 suite", ErrWrongKey, err)
	_, err = SealToRecipient(nil, RecipientKey{}, nil, nil)
	add("no public key", ErrWrongKey, err)
	_, err = SealWithDataKey(nil, nil, nil, nil)
	add("no data key", ErrWrongKey, err)
	_, err = SealWithDataKey(nil, f.dk, nil, &SealOptions{ChunkSize: MaxChunkSize + 1})
	add("chunk too large", ErrMalformed, err)
	_, err = SealWithDataKey(nil, f.dk, nil, &SealOptions{RecipientID: string(make([]byte, 256))})
	add("recipient id too long", ErrMalformed, err)
	_, err = SealWithDataKey(nil, f.dk, nil, &SealOptions{Rand: bytes.NewReader(nil)})
	if err == nil || !errors.Is(err, io.EOF) {
		t.Errorf("failing rand: %v", err)
	}
	_, err = NewDataKey("", 1, make([]byte, 32))
	add("empty data key id", ErrInvalidKey, err)
	_, err = NewDataKey("k", 1, make([]byte, 31))
	add("short data key", ErrInvalidKey, err)
	for _, c := range cases {
		if !errors.Is(c.err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, c.err, c.want)
		}
	}
}

func TestParseHeader(t *testing.T) {
	f := newFixture(t)
	env, err := SealWithDataKey(nil, f.dk, []byte("x"), &SealOptions{RecipientID: "cp", Rand: testRand(1), Signer: f.signer, SenderID: "agent-1"})
	if err != nil {
		t.Fatal(err)
	}
	h, n, err := ParseHeader(env)
	if err != nil {
		t.Fatal(err)
	}
	if h.KeyID != "telemetry" || h.KeyVersion != 3 || h.RecipientID != "cp" || h.SenderID != "agent-1" || h.Mode != ModeDataKey || n != h.Size() {
		t.Fatalf("header %+v n=%d", h, n)
	}
	b, err := h.MarshalBinary()
	if err != nil || !bytes.Equal(b, env[:n]) {
		t.Fatalf("re-encoding differs: %v", err)
	}
	mut := func(i int, v byte) []byte {
		b := bytes.Clone(env[:n])
		b[i] = v
		return b
	}
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"magic only", env[:3], ErrTruncated},
		{"bad magic", mut(0, 'X'), ErrMalformed},
		{"bad magic short", []byte("EX"), ErrMalformed},
		{"version 2", mut(3, 2), ErrUnsupportedVersion},
		{"version 0", mut(3, 0), ErrUnsupportedVersion},
		{"mode 0", mut(4, 0), ErrMalformed},
		{"mode 3", mut(4, 3), ErrMalformed},
		{"recipient mode with data-key suite", mut(4, 1), ErrUnknownSuite},
		{"unknown flag", mut(5, 0x03), ErrMalformed},
		{"unknown suite", mut(7, 0x77), ErrUnknownSuite},
		{"chunk size 0", append(append(bytes.Clone(env[:8]), 0, 0, 0, 0), env[12:n]...), ErrMalformed},
		{"chunk size too large", mut(8, 0xff), ErrMalformed},
		{"empty key id", mut(16, 0), ErrMalformed},
		{"cut", env[:n-1], ErrTruncated},
	}
	for _, c := range cases {
		if _, _, err := ParseHeader(c.in); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
}

// TestReaderStopsAtEnvelopeEnd checks that the Reader consumes exactly the
// envelope, so envelopes can be concatenated on one connection.
func TestReaderStopsAtEnvelopeEnd(t *testing.T) {
	f := newFixture(t)
	a, _ := SealWithDataKey(nil, f.dk, []byte("first"), &SealOptions{RecipientID: f.recipient})
	b, _ := SealToRecipient(nil, f.to(), []byte("second"), &SealOptions{RecipientID: f.recipient})
	stream := bytes.NewReader(append(bytes.Clone(a), b...))
	for _, want := range []string{"first", "second"} {
		r, err := NewReader(stream, f.keys())
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil || string(got) != want {
			t.Fatalf("got %q, %v", got, err)
		}
	}
	if stream.Len() != 0 {
		t.Fatalf("%d bytes left", stream.Len())
	}
}

// failingWriter fails after n bytes.
type failingWriter struct{ n int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		return 0, errors.New("disk full")
	}
	w.n -= len(p)
	return len(p), nil
}

func TestWriterErrors(t *testing.T) {
	f := newFixture(t)
	if _, err := NewDataKeyWriter(&failingWriter{n: 10}, f.dk, nil); err == nil {
		t.Fatal("header write error not reported")
	}
	w, err := NewDataKeyWriter(&failingWriter{n: 200}, f.dk, &SealOptions{ChunkSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.Write(make([]byte, 1000))
	if err == nil || err.Error() == "" {
		t.Fatal("chunk write error not reported")
	}
	if err2 := w.Close(); err2 == nil {
		t.Fatal("error not sticky")
	}
}

// TestRecipientEnvelopeWithBareHPKE opens a recipient envelope following the
// recipe in the package documentation, using circl's hpke and crypto/cipher
// directly: the envelope needs nothing beyond standard HPKE.
func TestRecipientEnvelopeWithBareHPKE(t *testing.T) {
	f := newFixture(t)
	pt := seedBytes(150, 4)
	env, err := SealToRecipient(nil, f.to(), pt, &SealOptions{RecipientID: f.recipient, ChunkSize: 64, Rand: testRand(5)})
	if err != nil {
		t.Fatal(err)
	}
	h, n, err := ParseHeader(env)
	if err != nil {
		t.Fatal(err)
	}
	hdr := env[:n]
	skR, err := hpke.KEM_XWING.Scheme().UnmarshalBinaryPrivateKey(f.xwing.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	recv, _ := hpke.NewSuite(hpke.KEM_XWING, hpke.KDF_HKDF_SHA256, hpke.AEAD_AES256GCM).NewReceiver(skR, hdr[:n-len(h.Enc)])
	ctx, err := recv.Setup(h.Enc)
	if err != nil {
		t.Fatal(err)
	}
	key := ctx.Export([]byte("edgefleet/pqcrypto/v1 envelope payload key"), 32)
	blk, _ := aes.NewCipher(key)
	gcm, _ := cipher.NewGCM(blk)
	var got []byte
	body := env[n:]
	for i := uint32(0); ; i++ {
		w := binary.BigEndian.Uint32(body)
		final := w>>31 == 1
		size := int(w&0x7fffffff) + 16
		nonce := make([]byte, 12)
		binary.BigEndian.PutUint32(nonce[7:], i)
		if final {
			nonce[11] = 1
		}
		got, err = gcm.Open(got, nonce, body[4:4+size], hdr)
		if err != nil {
			t.Fatalf("chunk %d: %v", i, err)
		}
		body = body[4+size:]
		if final {
			break
		}
	}
	if !bytes.Equal(got, pt) || len(body) != 0 {
		t.Fatal("plaintext mismatch")
	}
}

// TestConcurrentUse shares keys between goroutines (run with -race).
func TestConcurrentUse(t *testing.T) {
	f := newFixture(t)
	keys := f.signedKeys()
	done := make(chan error, 4)
	for g := 0; g < 4; g++ {
		go func() {
			for i := 0; i < 5; i++ {
				pt := seedBytes(100+g, byte(i))
				o := &SealOptions{RecipientID: f.recipient, ChunkSize: 32, Signer: f.signer, SenderID: "controlplane"}
				env, err := SealWithDataKey(nil, f.dk, pt, o)
				if err == nil {
					var got []byte
					got, _, err = Open(nil, env, keys)
					if err == nil && !bytes.Equal(got, pt) {
						err = errors.New("plaintext mismatch")
					}
				}
				if err == nil {
					var env2, got []byte
					env2, err = SealToRecipient(nil, f.to(), pt, o)
					if err == nil {
						got, _, err = Open(nil, env2, keys)
						if err == nil && !bytes.Equal(got, pt) {
							err = errors.New("plaintext mismatch")
						}
					}
				}
				if err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for g := 0; g < 4; g++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
