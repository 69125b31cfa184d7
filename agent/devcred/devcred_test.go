package devcred

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
)

// kat is a line mosquitto_passwd 2.0.11 wrote for user alice, password
// "secret" (mosquitto_passwd -b pw alice secret).
const kat = "$7$101$k6NdYsnn/MLMDKSh$JxJImt6dOABI1/oJCEhJ+gCRPyPhRRx6fYnZGwTsKE9UEjCL/56jnnXhQ/ZGb1AD1bichVZgMYnzPir+Da/grQ=="

func TestMosquittoKnownAnswer(t *testing.T) {
	h, err := ParseHash(kat)
	if err != nil {
		t.Fatal(err)
	}
	if h.Iterations != 101 || len(h.Salt) != 12 {
		t.Fatalf("parsed %d iterations, %d-byte salt", h.Iterations, len(h.Salt))
	}
	if !h.Verify("secret") {
		t.Fatal("mosquitto's hash of \"secret\" does not verify")
	}
	for _, wrong := range []string{"", "Secret", "secret ", "secre"} {
		if h.Verify(wrong) {
			t.Fatalf("verifies %q", wrong)
		}
	}
	if h.String() != kat {
		t.Fatalf("formats as %s", h.String())
	}
}

func TestHashSecretRoundTrip(t *testing.T) {
	s, err := NewSecret(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 43 {
		t.Fatalf("secret %q: %d characters", s, len(s))
	}
	enc, err := HashSecret(rand.Reader, s)
	if err != nil {
		t.Fatal(err)
	}
	h, err := ParseHash(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !h.Verify(s) || h.Verify(s+"x") {
		t.Fatal("round trip does not verify exactly the secret")
	}
	enc2, _ := HashSecret(rand.Reader, s)
	if enc == enc2 {
		t.Fatal("two hashes of one secret are equal: salt not random")
	}
}

func TestParseHashErrors(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"", "does not start with $7$"},
		{"$6$abc$def", "does not start with $7$"},
		{"$7$101$abc", "got 2 fields"},
		{"$7$0$k6NdYsnn/MLMDKSh$" + strings.Repeat("A", 88), "iterations"},
		{"$7$0101$k6NdYsnn/MLMDKSh$" + strings.Repeat("A", 88), "iterations"},
		{"$7$999999$k6NdYsnn/MLMDKSh$" + strings.Repeat("A", 88), "iterations"},
		{"$7$101$!!!!$" + strings.Repeat("A", 88), "salt is not base64"},
		{"$7$101$AAAA$" + strings.Repeat("A", 88), "salt of 3 bytes"},
		{"$7$101$k6NdYsnn/MLMDKSh$AAAA", "hash of 3 bytes"},
		{"$7$101$k6NdYsnn/MLMDKSh$" + strings.Repeat("A", 300), "bytes, at most"},
	} {
		_, err := ParseHash(c.in)
		if err == nil || !errors.Is(err, ErrBadHash) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseHash(%.40q) = %v, want an error naming %q", c.in, err, c.want)
		}
	}
}

func FuzzParseHash(f *testing.F) {
	f.Add(kat, "secret")
	f.Add("$7$1$AAAAAAAAAAA=$"+strings.Repeat("A", 86)+"==", "x")
	f.Add("$7$$$", "")
	f.Add("$7$101$k6NdYsnn/MLMDKSh$JxJI", "secret")
	f.Fuzz(func(t *testing.T, s, secret string) {
		h, err := ParseHash(s)
		if err != nil {
			if !errors.Is(err, ErrBadHash) {
				t.Fatalf("error %v does not wrap ErrBadHash", err)
			}
			return
		}
		if h.Iterations > 1000 {
			return // valid but slow; the bound itself is tested above
		}
		h.Verify(secret)
		again, err := ParseHash(h.String())
		if err != nil || again.String() != h.String() {
			t.Fatalf("%q parses but its formatting %q does not round-trip: %v", s, h.String(), err)
		}
	})
}

func TestMatchesAndCovers(t *testing.T) {
	for _, c := range []struct {
		filter, topic string
		want          bool
	}{
		{"devices/d1/telemetry", "devices/d1/telemetry", true},
		{"devices/d1/telemetry", "devices/d2/telemetry", false},
		{"devices/+/telemetry", "devices/d2/telemetry", true},
		{"devices/d1/#", "devices/d1", true},
		{"devices/d1/#", "devices/d1/a/b", true},
		{"devices/d1/telemetry", "devices/d1/telemetry/x", false},
		{"devices/d1/telemetry/x", "devices/d1/telemetry", false},
		{"#", "$SYS/x", false},
	} {
		if got := Matches(c.filter, c.topic); got != c.want {
			t.Errorf("Matches(%q, %q) = %v", c.filter, c.topic, got)
		}
	}
	for _, c := range []struct {
		allowed, req string
		want         bool
	}{
		{"devices/d1/commands", "devices/d1/commands", true},
		{"devices/d1/commands", "devices/+/commands", false},
		{"devices/d1/commands", "devices/d1/#", false},
		{"devices/d1/commands", "#", false},
		{"devices/d1/commands", "devices/d2/commands", false},
		{"devices/+/telemetry", "devices/+/telemetry", true},
		{"devices/+/telemetry", "devices/d3/telemetry", true},
		{"devices/d1/#", "devices/d1/x/+", true},
		{"devices/d1/#", "devices/d1", true},
		{"#", "$SYS/#", false},
	} {
		if got := Covers(c.allowed, c.req); got != c.want {
			t.Errorf("Covers(%q, %q) = %v", c.allowed, c.req, got)
		}
	}
	for _, bad := range []string{"", "a/#/b", "a/b+", "$SYS/x", "a b", "a/\x00"} {
		if CheckFilter(bad) == nil {
			t.Errorf("CheckFilter(%q) accepted", bad)
		}
	}
}

func TestWriteMosquitto(t *testing.T) {
	var pw, acl bytes.Buffer
	err := WriteMosquitto(&pw, &acl, []User{{Name: "d1", Hash: kat, Publish: []string{"devices/d1/telemetry"}, Subscribe: []string{"devices/d1/commands"}}})
	if err != nil {
		t.Fatal(err)
	}
	if pw.String() != "d1:"+kat+"\n" {
		t.Fatalf("password file %q", pw.String())
	}
	if !strings.Contains(acl.String(), "user d1\ntopic write devices/d1/telemetry\ntopic read devices/d1/commands\n") {
		t.Fatalf("ACL file %q", acl.String())
	}
	if err := WriteMosquitto(&pw, &acl, []User{{Name: "a:b", Hash: kat}}); err == nil {
		t.Fatal("a user name with ':' accepted")
	}
	if err := WriteMosquitto(&pw, &acl, []User{{Name: "d1", Hash: kat, Publish: []string{"a b"}}}); err == nil {
		t.Fatal("a filter with a space accepted")
	}
}
