package dkms

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
)

func TestSplitAndCombineEverySubset(t *testing.T) {
	root, shares, err := splitRoot(testRand(7), 1, 3, 5)
	if err != nil {
		t.Fatal(err)
	}
	// Same randomness, same root (shares differ: circl draws coefficients itself).
	root2, _, err := splitRoot(testRand(7), 1, 3, 5)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(root, root2) {
		t.Fatal("root key is not a function of the injected randomness")
	}
	n := 0
	for i := range 5 {
		for j := i + 1; j < 5; j++ {
			for k := j + 1; k < 5; k++ {
				got, err := combineShares([]Share{shares[k], shares[i], shares[j]})
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, root) {
					t.Fatalf("shares %d,%d,%d recover another key", i+1, j+1, k+1)
				}
				n++
			}
		}
	}
	if n != 10 {
		t.Fatalf("tried %d subsets", n)
	}
	if _, err := combineShares(shares[:2]); err == nil {
		t.Fatal("two shares of a 3-of-5 split combined")
	}
	// Two shares interpolate a different (wrong) secret if forced as a 2-of-n.
	forced := []Share{shares[0], shares[1]}
	forced[0].Threshold, forced[1].Threshold = 2, 2
	got, err := combineShares(forced)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(got, root) {
		t.Fatal("fewer than threshold shares recovered the root")
	}
	kcv := KeyCheckValue(root)
	for _, s := range shares {
		if s.KCV != kcv || s.Threshold != 3 || s.Total != 5 || s.RootVersion != 1 {
			t.Fatalf("share header %v", s)
		}
	}
}

func TestSplitOneOfOne(t *testing.T) {
	root, shares, err := splitRoot(testRand(3), 1, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := combineShares(shares)
	if err != nil || !bytes.Equal(got, root) {
		t.Fatalf("1-of-1: %v", err)
	}
	for _, bad := range [][2]int{{0, 1}, {3, 2}, {2, 256}} {
		if _, _, err := splitRoot(testRand(3), 1, bad[0], bad[1]); err == nil {
			t.Fatalf("split %d of %d accepted", bad[0], bad[1])
		}
	}
}

func TestShareTextRoundTrip(t *testing.T) {
	_, shares, err := splitRoot(testRand(5), 4, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range shares {
		text := s.Text()
		if !strings.HasPrefix(text, ShareTextPrefix) {
			t.Fatalf("text %q", text)
		}
		got, err := ParseShare("  " + text + "\n")
		if err != nil {
			t.Fatal(err)
		}
		if got != s {
			t.Fatalf("round trip changed the share: %v vs %v", got, s)
		}
		if strings.Contains(s.String(), base64.RawURLEncoding.EncodeToString(s.Value[:8])) {
			t.Fatal("String reveals the share value")
		}
	}
}

// encodeRaw encodes a share without validation, with a valid checksum.
func encodeRaw(s Share) string {
	return ShareTextPrefix + base64.RawURLEncoding.EncodeToString(s.appendBinary(nil))
}

func TestParseShareRejects(t *testing.T) {
	_, shares, err := splitRoot(testRand(6), 1, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	good := shares[1]
	text := good.Text()
	bin, _ := good.MarshalBinary()
	flip := func(i int) string {
		b := append([]byte(nil), bin...)
		b[i] ^= 0x01
		return ShareTextPrefix + base64.RawURLEncoding.EncodeToString(b)
	}
	rechecksum := func(mut func(b []byte)) string {
		b := append([]byte(nil), bin...)
		mut(b)
		sum := sha256.Sum256(b[:ShareSize-4])
		copy(b[ShareSize-4:], sum[:4])
		return ShareTextPrefix + base64.RawURLEncoding.EncodeToString(b)
	}
	cases := map[string]string{
		"empty":             "",
		"no prefix":         strings.TrimPrefix(text, ShareTextPrefix),
		"short":             text[:len(text)-1],
		"long":              text + "A",
		"not base64":        text[:len(text)-2] + "!!",
		"flipped value bit": flip(30),
		"flipped checksum":  flip(ShareSize - 1),
		"bad magic":         rechecksum(func(b []byte) { b[0] = 'X' }),
		"bad version":       rechecksum(func(b []byte) { b[4] = 2 }),
		"index zero":        rechecksum(func(b []byte) { b[19] = 0 }),
		"index above total": rechecksum(func(b []byte) { b[19] = 4 }),
		"threshold zero":    rechecksum(func(b []byte) { b[17] = 0 }),
		"total below k":     rechecksum(func(b []byte) { b[18] = 1 }),
		"non-canonical":     rechecksum(func(b []byte) { copy(b[20:52], bytes.Repeat([]byte{0xff}, 32)) }),
	}
	for name, in := range cases {
		if _, err := ParseShare(in); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			mustErr(t, err, ErrBadShare)
		}
	}
	// The raw encoder agrees with MarshalBinary for valid shares.
	if encodeRaw(good) != text {
		t.Fatal("encodeRaw differs from Text")
	}
}
