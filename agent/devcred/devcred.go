// Package devcred holds device credentials: random secrets, their salted
// PBKDF2-SHA512 hash in the "$7$" format of Mosquitto's password files,
// MQTT topic-filter checks for per-device access rules, and the export of
// users and rules as a Mosquitto password file and ACL file. Pure logic;
// randomness comes from the caller.
//
// The hash format is Mosquitto's (mosquitto_passwd 2.x,
// src/password_mosq.c): "$7$" ITERATIONS "$" base64(salt) "$"
// base64(PBKDF2-HMAC-SHA512(secret, salt, ITERATIONS, 64 bytes)), standard
// base64 with padding, a 12-byte salt and 101 iterations by default. A
// secret of 256 random bits needs no slow or memory-hard hash: guessing
// it is out of reach however cheap one try is, and the hash only keeps
// the secret itself out of replicated state.
package devcred

import (
	"crypto/pbkdf2"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

const (
	// SecretBytes is the randomness of a generated secret (256 bits).
	SecretBytes = 32
	// Iterations is Mosquitto's default PBKDF2 iteration count.
	Iterations = 101
	// MaxIterations bounds the iteration count of a hash read from
	// replicated state or a file, so one record cannot make each login
	// cost seconds of CPU.
	MaxIterations = 100_000
	// SaltBytes is the salt length mosquitto_passwd writes.
	SaltBytes = 12
	// minSaltBytes and maxSaltBytes bound a parsed salt.
	minSaltBytes, maxSaltBytes = 8, 64
	// hashBytes is the PBKDF2 output length (SHA-512's size).
	hashBytes = sha512.Size
	// MaxHashLen bounds the text of a hash.
	MaxHashLen = 256
	// MaxSecretLen bounds a secret presented at login.
	MaxSecretLen = 1024
)

// ErrBadHash: a hash is not in the "$7$" format.
var ErrBadHash = errors.New("devcred: malformed $7$ hash")

// NewSecret returns a new random secret: SecretBytes from rand,
// base64url without padding (43 characters).
func NewSecret(rand io.Reader) (string, error) {
	b := make([]byte, SecretBytes)
	if _, err := io.ReadFull(rand, b); err != nil {
		return "", fmt.Errorf("devcred: reading randomness for a secret: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// Hash is a parsed "$7$" hash.
type Hash struct {
	Iterations int
	Salt       []byte
	Sum        []byte // 64 bytes
}

// HashSecret hashes secret with a SaltBytes salt read from rand and
// Iterations rounds, in the "$7$" format.
func HashSecret(rand io.Reader, secret string) (string, error) {
	salt := make([]byte, SaltBytes)
	if _, err := io.ReadFull(rand, salt); err != nil {
		return "", fmt.Errorf("devcred: reading randomness for a salt: %w", err)
	}
	h := Hash{Iterations: Iterations, Salt: salt, Sum: derive(secret, salt, Iterations)}
	return h.String(), nil
}

func derive(secret string, salt []byte, iter int) []byte {
	k, err := pbkdf2.Key(sha512.New, secret, salt, iter, hashBytes)
	if err != nil {
		// Only FIPS-mode restrictions fail here (a short salt or key),
		// which the parsed bounds exclude.
		panic("devcred: pbkdf2: " + err.Error())
	}
	return k
}

// String formats h as "$7$ITER$SALT$HASH".
func (h Hash) String() string {
	return "$7$" + strconv.Itoa(h.Iterations) + "$" + base64.StdEncoding.EncodeToString(h.Salt) + "$" +
		base64.StdEncoding.EncodeToString(h.Sum)
}

// ParseHash parses a "$7$" hash; its error names what is wrong.
func ParseHash(s string) (Hash, error) {
	if len(s) > MaxHashLen {
		return Hash{}, fmt.Errorf("%w: %d bytes, at most %d", ErrBadHash, len(s), MaxHashLen)
	}
	rest, ok := strings.CutPrefix(s, "$7$")
	if !ok {
		return Hash{}, fmt.Errorf("%w: does not start with $7$ (PBKDF2-SHA512)", ErrBadHash)
	}
	parts := strings.Split(rest, "$")
	if len(parts) != 3 {
		return Hash{}, fmt.Errorf("%w: want $7$ITERATIONS$SALT$HASH, got %d fields after $7$", ErrBadHash, len(parts))
	}
	iter, err := strconv.Atoi(parts[0])
	if err != nil || iter < 1 || iter > MaxIterations || parts[0] != strconv.Itoa(iter) {
		return Hash{}, fmt.Errorf("%w: iterations %.20q: want 1..%d", ErrBadHash, parts[0], MaxIterations)
	}
	salt, err := base64.StdEncoding.Strict().DecodeString(parts[1])
	if err != nil {
		return Hash{}, fmt.Errorf("%w: salt is not base64: %v", ErrBadHash, err)
	}
	if len(salt) < minSaltBytes || len(salt) > maxSaltBytes {
		return Hash{}, fmt.Errorf("%w: salt of %d bytes, want %d..%d", ErrBadHash, len(salt), minSaltBytes, maxSaltBytes)
	}
	sum, err := base64.StdEncoding.Strict().DecodeString(parts[2])
	if err != nil {
		return Hash{}, fmt.Errorf("%w: hash is not base64: %v", ErrBadHash, err)
	}
	if len(sum) != hashBytes {
		return Hash{}, fmt.Errorf("%w: hash of %d bytes, want %d (SHA-512)", ErrBadHash, len(sum), hashBytes)
	}
	return Hash{Iterations: iter, Salt: salt, Sum: sum}, nil
}

// Verify reports whether secret hashes to h, comparing in constant time.
func (h Hash) Verify(secret string) bool {
	if len(secret) > MaxSecretLen || len(h.Sum) != hashBytes || len(h.Salt) == 0 {
		return false
	}
	return subtle.ConstantTimeCompare(derive(secret, h.Salt, h.Iterations), h.Sum) == 1
}
