package dkms

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"github.com/cloudflare/circl/group"
	"github.com/cloudflare/circl/secretsharing"
)

// Root key shares.
//
// The root secret is a scalar of the ristretto255 group (prime order, about
// 2^252), split with circl's secretsharing (Shamir over that scalar field);
// the 32-byte root key is HKDF-SHA256 of the scalar's encoding. ristretto255
// scalar arithmetic is constant time in circl.
//
// A share's binary layout (integers big-endian):
//
//	offset size  field
//	0      4     magic "EFSH"
//	4      1     format version (1)
//	5      4     root version
//	9      8     key-check value of the root key (see KeyCheckValue)
//	17     1     threshold k: shares needed to unseal, 1..255
//	18     1     total n: shares issued, k..255
//	19     1     index: 1..n
//	20     32    share value (canonical ristretto255 scalar, little-endian)
//	52     4     checksum: first 4 bytes of SHA-256 of bytes 0..51
//
// Operators handle the text form: ShareTextPrefix followed by the binary form
// in unpadded base64url. The checksum catches typing and copying errors, the
// key-check value shares of another root (or another rekey generation), and
// the per-share digest the key service records at initialization catches a
// well-formed share whose value was altered.
const (
	// ShareTextPrefix starts the text form of a share.
	ShareTextPrefix = "dkms-share:"
	// ShareSize is the length of a share's binary form.
	ShareSize = 56
	// KCVSize is the length of a key-check value.
	KCVSize = 8
	// MaxShares bounds the number of shares of one root.
	MaxShares = 255

	shareMagic   = "EFSH"
	shareVersion = 1
	scalarSize   = 32
)

const (
	labelRootSecret = "edgefleet/dkms/v1 root secret"
	labelRootKey    = "edgefleet/dkms/v1 root key"
	labelKCV        = "edgefleet/dkms/v1 key check value"
	labelShare      = "edgefleet/dkms/v1 share digest"
)

var shareGroup = group.Ristretto255

// Share is one operator's share of the root key. Its String method never
// prints the value; use Text to hand it to the operator.
type Share struct {
	RootVersion uint32
	KCV         [KCVSize]byte
	Threshold   uint8
	Total       uint8
	Index       uint8
	Value       [scalarSize]byte
}

// String describes the share without revealing it.
func (s Share) String() string {
	return fmt.Sprintf("share %d/%d (threshold %d) of root v%d kcv %s", s.Index, s.Total, s.Threshold, s.RootVersion, hex.EncodeToString(s.KCV[:]))
}

// MarshalBinary encodes the share in its binary layout.
func (s Share) MarshalBinary() ([]byte, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	return s.appendBinary(make([]byte, 0, ShareSize)), nil
}

func (s Share) appendBinary(b []byte) []byte {
	start := len(b)
	b = append(b, shareMagic...)
	b = append(b, shareVersion)
	b = binary.BigEndian.AppendUint32(b, s.RootVersion)
	b = append(b, s.KCV[:]...)
	b = append(b, s.Threshold, s.Total, s.Index)
	b = append(b, s.Value[:]...)
	sum := sha256.Sum256(b[start:])
	return append(b, sum[:4]...)
}

// Text returns the share's text form for an operator to keep. It is secret.
func (s Share) Text() string {
	b, err := s.MarshalBinary()
	if err != nil {
		return ""
	}
	return ShareTextPrefix + base64.RawURLEncoding.EncodeToString(b)
}

func (s Share) check() error {
	switch {
	case s.Threshold == 0:
		return fmt.Errorf("dkms: share threshold is 0: %w", ErrBadShare)
	case s.Total < s.Threshold:
		return fmt.Errorf("dkms: share total %d below threshold %d: %w", s.Total, s.Threshold, ErrBadShare)
	case s.Index == 0 || s.Index > s.Total:
		return fmt.Errorf("dkms: share index %d outside 1..%d: %w", s.Index, s.Total, ErrBadShare)
	}
	var sc = shareGroup.NewScalar()
	if err := sc.UnmarshalBinary(s.Value[:]); err != nil {
		return fmt.Errorf("dkms: share %d value is not a canonical scalar: %w", s.Index, ErrBadShare)
	}
	return nil
}

// UnmarshalBinary decodes a share from its binary layout, checking its
// structure and checksum.
func (s *Share) UnmarshalBinary(b []byte) error {
	if len(b) != ShareSize {
		return fmt.Errorf("dkms: share is %d bytes, want %d: %w", len(b), ShareSize, ErrBadShare)
	}
	if string(b[:4]) != shareMagic {
		return fmt.Errorf("dkms: share has bad magic %x: %w", b[:4], ErrBadShare)
	}
	if b[4] != shareVersion {
		return fmt.Errorf("dkms: share format version %d, want %d: %w", b[4], shareVersion, ErrBadShare)
	}
	sum := sha256.Sum256(b[:ShareSize-4])
	if subtle.ConstantTimeCompare(sum[:4], b[ShareSize-4:]) != 1 {
		return fmt.Errorf("dkms: share checksum mismatch (corrupted or mistyped share): %w", ErrBadShare)
	}
	var t Share
	t.RootVersion = binary.BigEndian.Uint32(b[5:])
	copy(t.KCV[:], b[9:17])
	t.Threshold, t.Total, t.Index = b[17], b[18], b[19]
	copy(t.Value[:], b[20:52])
	if err := t.check(); err != nil {
		return err
	}
	*s = t
	return nil
}

// ParseShare decodes a share from its text form (surrounding white space is
// ignored). It checks structure and checksum only; the key service checks
// that the share belongs to its root.
func ParseShare(text string) (Share, error) {
	text = strings.TrimSpace(text)
	if !strings.HasPrefix(text, ShareTextPrefix) {
		return Share{}, fmt.Errorf("dkms: share text does not start with %q: %w", ShareTextPrefix, ErrBadShare)
	}
	enc := text[len(ShareTextPrefix):]
	if len(enc) != base64.RawURLEncoding.EncodedLen(ShareSize) {
		return Share{}, fmt.Errorf("dkms: share text has %d characters after the prefix, want %d: %w", len(enc), base64.RawURLEncoding.EncodedLen(ShareSize), ErrBadShare)
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(enc)
	if err != nil {
		return Share{}, fmt.Errorf("dkms: share text is not base64url: %v: %w", err, ErrBadShare)
	}
	var s Share
	if err := s.UnmarshalBinary(b); err != nil {
		return Share{}, err
	}
	return s, nil
}

// digest is the value the key service records per share index at
// initialization, so that a share whose value was altered is named as bad
// before it is combined.
func (s Share) digest() [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(labelShare))
	h.Write(s.appendBinary(nil))
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}

// KeyCheckValue is the key-check value of a root key: the first 8 bytes of
// HMAC-SHA256(key, "edgefleet/dkms/v1 key check value"). It identifies a root
// without revealing it.
func KeyCheckValue(key []byte) [KCVSize]byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(labelKCV))
	var out [KCVSize]byte
	copy(out[:], m.Sum(nil))
	return out
}

// rootKeyFromScalar derives the 32-byte root key from the shared secret.
func rootKeyFromScalar(sc group.Scalar) ([]byte, error) {
	enc, err := sc.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("dkms: encoding root secret: %w", err)
	}
	defer clear(enc)
	key, err := hkdf.Key(sha256.New, enc, nil, labelRootKey, 32)
	if err != nil {
		return nil, fmt.Errorf("dkms: deriving root key: %w", err)
	}
	return key, nil
}

// splitRoot creates a new root secret from rnd and splits it into n shares,
// any k of which recover it. It returns the root key and the shares.
//
// The secret scalar is derived from 64 bytes of rnd (hash to scalar, so it is
// uniform). The polynomial's other coefficients come from circl's
// Group.RandomScalar, which for ristretto255 reads the system's
// cryptographic random source rather than rnd: shares differ between runs
// even with the same rnd, while the root key does not.
func splitRoot(rnd io.Reader, rootVersion uint32, k, n int) ([]byte, []Share, error) {
	if k < 1 || n < k || n > MaxShares {
		return nil, nil, fmt.Errorf("dkms: need 1 <= threshold (%d) <= shares (%d) <= %d: %w", k, n, MaxShares, ErrInvalidConfig)
	}
	var seed [64]byte
	if _, err := io.ReadFull(rnd, seed[:]); err != nil {
		return nil, nil, fmt.Errorf("dkms: reading randomness for the root key: %w", err)
	}
	secret := shareGroup.HashToScalar(seed[:], []byte(labelRootSecret))
	clear(seed[:])
	rootKey, err := rootKeyFromScalar(secret)
	if err != nil {
		return nil, nil, err
	}
	kcv := KeyCheckValue(rootKey)
	ss := secretsharing.New(rnd, uint(k-1), secret)
	raw := ss.Share(uint(n))
	shares := make([]Share, n)
	for i, r := range raw {
		v, err := r.Value.MarshalBinary()
		if err != nil {
			return nil, nil, fmt.Errorf("dkms: encoding share %d: %w", i+1, err)
		}
		shares[i] = Share{RootVersion: rootVersion, KCV: kcv, Threshold: uint8(k), Total: uint8(n), Index: uint8(i + 1)}
		copy(shares[i].Value[:], v)
		clear(v)
	}
	secret.SetUint64(0)
	return rootKey, shares, nil
}

// combineShares recovers the root key from at least Threshold shares with
// distinct indexes (the caller checks that they belong together).
func combineShares(shares []Share) ([]byte, error) {
	if len(shares) == 0 || len(shares) < int(shares[0].Threshold) {
		return nil, fmt.Errorf("dkms: %d shares given, need %d: %w", len(shares), shares[0].Threshold, ErrBadShare)
	}
	k := int(shares[0].Threshold)
	in := make([]secretsharing.Share, k)
	for i, s := range shares[:k] {
		v := shareGroup.NewScalar()
		if err := v.UnmarshalBinary(s.Value[:]); err != nil {
			return nil, fmt.Errorf("dkms: share %d value: %w", s.Index, ErrBadShare)
		}
		in[i] = secretsharing.Share{ID: shareGroup.NewScalar().SetUint64(uint64(s.Index)), Value: v}
	}
	secret, err := secretsharing.Recover(uint(k-1), in)
	if err != nil {
		return nil, fmt.Errorf("dkms: combining shares: %v: %w", err, ErrBadShare)
	}
	key, err := rootKeyFromScalar(secret)
	secret.SetUint64(0)
	for _, s := range in {
		s.Value.SetUint64(0)
	}
	return key, err
}
