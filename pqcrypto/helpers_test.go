package pqcrypto

import (
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// testRand is a deterministic randomness source for tests.
func testRand(seed byte) io.Reader {
	var s [32]byte
	s[0] = seed
	return rand.NewChaCha8(s)
}

func seedBytes(n int, b byte) []byte {
	s := make([]byte, n)
	for i := range s {
		s[i] = b + byte(i)
	}
	return s
}

// fixture holds deterministic keys shared by tests and fuzz targets.
type fixture struct {
	xwing     *PrivateKey
	xwing2    *PrivateKey
	x25519    *PrivateKey
	dk        *DataKey
	dkOld     *DataKey
	signer    *SigningKey
	attacker  *SigningKey
	recipient string
}

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	must := func(err error) {
		if err != nil {
			tb.Fatal(err)
		}
	}
	f := &fixture{recipient: "agent-7"}
	var err error
	f.xwing, err = NewXWingKeyFromSeed(seedBytes(32, 1))
	must(err)
	f.xwing2, err = NewXWingKeyFromSeed(seedBytes(32, 2))
	must(err)
	f.x25519, err = kemX25519.GenerateKeyPair(testRand(3))
	must(err)
	f.dk, err = NewDataKey("telemetry", 3, seedBytes(32, 4))
	must(err)
	f.dkOld, err = NewDataKey("telemetry", 2, seedBytes(32, 5))
	must(err)
	f.signer, err = NewSigningKey(seedBytes(32, 6))
	must(err)
	f.attacker, err = NewSigningKey(seedBytes(32, 7))
	must(err)
	return f
}

func (f *fixture) to() RecipientKey {
	return RecipientKey{KeyID: "agent-7-kem", KeyVersion: 1, PublicKey: f.xwing.Public()}
}

// keys opens everything the fixture seals, accepting signed envelopes from
// "controlplane".
func (f *fixture) keys() *Keys {
	return &Keys{
		RecipientID: f.recipient,
		DataKey:     DataKeys(f.dk, f.dkOld),
		PrivateKey:  PrivateKeyFor("agent-7-kem", 1, f.xwing),
	}
}

func (f *fixture) signedKeys() *Keys {
	k := f.keys()
	k.SenderKey = SenderKeyFor("controlplane", f.signer.Public())
	return k
}

var sentinels = []error{
	ErrTruncated, ErrAuthFailed, ErrBadSignature, ErrUnknownSuite, ErrUnsupportedVersion,
	ErrMalformed, ErrWrongRecipient, ErrKeyVersion, ErrWrongKey, ErrInvalidKey, ErrUnsupported,
}

// isSentinel reports whether err wraps one of the package's sentinel errors.
func isSentinel(err error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// splitEnvelope cuts an unsigned envelope into header and raw chunks (each
// chunk word plus ciphertext).
func splitEnvelope(tb testing.TB, env []byte) (hdr []byte, chunks [][]byte) {
	tb.Helper()
	h, n, err := ParseHeader(env)
	if err != nil {
		tb.Fatal(err)
	}
	body := env[n:]
	for len(body) > 0 {
		w := binary.BigEndian.Uint32(body)
		size := int(w&^finalBit) + tagSize
		chunks = append(chunks, body[:4+size])
		body = body[4+size:]
	}
	_ = h
	return env[:n], chunks
}

func join(hdr []byte, chunks ...[]byte) []byte {
	out := append([]byte(nil), hdr...)
	for _, c := range chunks {
		out = append(out, c...)
	}
	return out
}

// readAll opens env with the streaming Reader.
func readAll(env []byte, keys *Keys) ([]byte, error) {
	r, err := NewReader(&onlyReader{b: env}, keys)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

// onlyReader hands out at most 7 bytes per Read to exercise short reads.
type onlyReader struct{ b []byte }

func (r *onlyReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 7)], r.b)
	r.b = r.b[n:]
	return n, nil
}
