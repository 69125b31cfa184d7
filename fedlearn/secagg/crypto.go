package secagg

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
)

// Key agreement, key derivation, share encryption and mask expansion.
//
//   - Key agreement: X25519 (crypto/ecdh). Each client has a mask key pair
//     (s) and an encryption key pair (c), fresh every round.
//   - Pairwise mask seed of u and v: HKDF-SHA256(X25519(s_u, s_v), salt =
//     round id, info = labelPairwise); symmetric in u and v.
//   - Share key from u to v: HKDF-SHA256(X25519(c_u, c_v), salt = round id,
//     info = labelShare ‖ u ‖ v), one key per direction and round, so the
//     AES-256-GCM nonce is zero (each key seals one message); the
//     additional data is the round, sender and recipient.
//   - Masks: AES-256-CTR keystream (zero IV) under a 32-byte seed, read as
//     little-endian uint32 words reduced mod M (M a power of two ≤ 2^32, so
//     each word stays uniform). The private mask's seed is b_u itself.

const (
	labelPairwise = "edgefleet/secagg/v1 pairwise mask"
	labelShare    = "edgefleet/secagg/v1 share key"
	keySize       = 32
	// plainShareSize is a share of b_u and a share of s_u^SK.
	plainShareSize = 2 * chunks * 8
	// CiphertextSize is the length of one encrypted share.
	CiphertextSize = plainShareSize + 16
)

func newKey(r io.Reader) (*ecdh.PrivateKey, error) {
	var b [keySize]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return nil, fmt.Errorf("secagg: randomness: %w", err)
	}
	k, err := ecdh.X25519().NewPrivateKey(b[:])
	if err != nil {
		return nil, fmt.Errorf("secagg: key pair: %w", err)
	}
	return k, nil
}

func agree(priv *ecdh.PrivateKey, pub [keySize]byte) ([]byte, error) {
	p, err := ecdh.X25519().NewPublicKey(pub[:])
	if err != nil {
		return nil, fmt.Errorf("public key: %w", err)
	}
	ss, err := priv.ECDH(p)
	if err != nil {
		return nil, fmt.Errorf("key agreement: %w", err)
	}
	return ss, nil
}

func roundSalt(round uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, round)
}

// pairwiseSeed is the seed of the mask between the owner of priv and the
// owner of pub.
func pairwiseSeed(priv *ecdh.PrivateKey, pub [keySize]byte, round uint64) ([keySize]byte, error) {
	var seed [keySize]byte
	ss, err := agree(priv, pub)
	if err != nil {
		return seed, err
	}
	k, err := hkdf.Key(sha256.New, ss, roundSalt(round), labelPairwise, keySize)
	if err != nil {
		return seed, err
	}
	copy(seed[:], k)
	return seed, nil
}

func shareAEAD(priv *ecdh.PrivateKey, pub [keySize]byte, round uint64, from, to uint32) (cipher.AEAD, []byte, error) {
	ss, err := agree(priv, pub)
	if err != nil {
		return nil, nil, err
	}
	info := fmt.Sprintf("%s %d>%d", labelShare, from, to)
	k, err := hkdf.Key(sha256.New, ss, roundSalt(round), info, keySize)
	if err != nil {
		return nil, nil, err
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, nil, err
	}
	ad := binary.BigEndian.AppendUint64(nil, round)
	ad = binary.BigEndian.AppendUint32(ad, from)
	ad = binary.BigEndian.AppendUint32(ad, to)
	return aead, ad, nil
}

func sealShares(priv *ecdh.PrivateKey, pub [keySize]byte, round uint64, from, to uint32, b, sk share) ([CiphertextSize]byte, error) {
	var out [CiphertextSize]byte
	aead, ad, err := shareAEAD(priv, pub, round, from, to)
	if err != nil {
		return out, err
	}
	pt := make([]byte, 0, plainShareSize)
	for _, s := range []share{b, sk} {
		for _, v := range s {
			pt = binary.LittleEndian.AppendUint64(pt, v)
		}
	}
	copy(out[:], aead.Seal(nil, make([]byte, aead.NonceSize()), pt, ad))
	return out, nil
}

func openShares(priv *ecdh.PrivateKey, pub [keySize]byte, round uint64, from, to uint32, ct [CiphertextSize]byte) (b, sk share, err error) {
	aead, ad, err := shareAEAD(priv, pub, round, from, to)
	if err != nil {
		return b, sk, err
	}
	pt, err := aead.Open(nil, make([]byte, aead.NonceSize()), ct[:], ad)
	if err != nil {
		return b, sk, fmt.Errorf("authentication failed (tampered, or sealed for another round or pair)")
	}
	for i := range chunks {
		b[i] = binary.LittleEndian.Uint64(pt[8*i:])
		sk[i] = binary.LittleEndian.Uint64(pt[8*(chunks+i):])
		if b[i] >= fieldP || sk[i] >= fieldP {
			return b, sk, fmt.Errorf("share value out of the field")
		}
	}
	return b, sk, nil
}

// maskStream expands seed into len(dst) words and adds them to dst
// (sign +1) or subtracts them (sign −1), mod 2^32; callers reduce mod M
// at the end (M divides 2^32). buf is scratch of 4·len(dst) bytes.
func applyMask(dst []uint32, seed [keySize]byte, sign int, buf []byte) {
	block, err := aes.NewCipher(seed[:])
	if err != nil {
		panic(err) // 32-byte key: cannot fail
	}
	buf = buf[:4*len(dst)]
	clear(buf)
	cipher.NewCTR(block, make([]byte, aes.BlockSize)).XORKeyStream(buf, buf)
	if sign > 0 {
		for i := range dst {
			dst[i] += binary.LittleEndian.Uint32(buf[4*i:])
		}
	} else {
		for i := range dst {
			dst[i] -= binary.LittleEndian.Uint32(buf[4*i:])
		}
	}
}
