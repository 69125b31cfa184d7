package dkms

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

func signedRevocations(t *testing.T, e *env, agents ...RevokedAgent) *RevocationList {
	t.Helper()
	l, err := NewRevocationList(agents, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.SignRevocationList(l); err != nil {
		t.Fatal(err)
	}
	return l
}

func TestRevocationListRoundTripAndVerify(t *testing.T) {
	e := newEnv(t)
	at := e.clock.Now().Add(-time.Minute).Truncate(time.Millisecond)
	l := signedRevocations(t, e, RevokedAgent{ID: "ag-2", Name: "node-2", RevokedAt: at}, RevokedAgent{ID: "ag-1", Name: "node-1", RevokedAt: at})
	if l.Version != 2 || l.Agents[0].ID != "ag-1" {
		t.Fatalf("list %+v: want version 2, sorted by id", l)
	}
	b, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseRevocationList(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, l) {
		t.Fatalf("round trip:\n%+v\n%+v", got, l)
	}
	if err := got.Verify(e.svc.VerifyingKey()); err != nil {
		t.Fatal(err)
	}
	if n := got.Names(); !n["node-1"] || !n["node-2"] || len(n) != 2 {
		t.Fatalf("names %v", n)
	}
	// The empty list is valid too (version 0).
	empty := signedRevocations(t, e)
	if _, err := empty.MarshalBinary(); err != nil || empty.Version != 0 {
		t.Fatalf("empty list: v%d %v", empty.Version, err)
	}
}

func TestRevocationListBadSignatureAndTampering(t *testing.T) {
	e := newEnv(t)
	l := signedRevocations(t, e, RevokedAgent{ID: "ag-1", Name: "node-1", RevokedAt: e.clock.Now()})
	b, _ := l.MarshalBinary()

	// Another signer: parses, does not verify.
	other, err := pqcrypto.GenerateSigningKey(testRand(7))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Verify(other.Public()); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("foreign key: %v", err)
	}
	if err := l.Verify(nil); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("no key: %v", err)
	}
	// A name swapped for another of the same length: the signature fails.
	forged := append([]byte(nil), b...)
	i := len(revocationMagic) + 1 + 8 + 8 + 4 + 1 + len("ag-1") + 1
	forged[i+len("node-")] = '9'
	fl, err := ParseRevocationList(forged)
	if err != nil {
		t.Fatal(err)
	}
	if fl.Agents[0].Name != "node-9" {
		t.Fatalf("test did not tamper the name: %+v", fl.Agents)
	}
	if err := fl.Verify(e.svc.VerifyingKey()); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered list verified: %v", err)
	}
	// Structure: truncation, trailing bytes, wrong version count.
	for name, in := range map[string][]byte{
		"truncated": b[:len(b)-1],
		"trailing":  append(append([]byte(nil), b...), 0),
		"magic":     append([]byte("EFKM"), b[4:]...),
	} {
		if _, err := ParseRevocationList(in); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v", name, err)
		}
	}
	bad := *l
	bad.Version = 5
	if _, err := bad.MarshalBinary(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("version not matching entries: %v", err)
	}
	if _, err := NewRevocationList([]RevokedAgent{{ID: "a", RevokedAt: e.clock.Now()}, {ID: "a", RevokedAt: e.clock.Now()}}, e.clock.Now()); !errors.Is(err, ErrMalformed) {
		t.Fatalf("repeated agent: %v", err)
	}
}
