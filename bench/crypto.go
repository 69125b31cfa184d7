package bench

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cloudflare/circl/hpke"
	"github.com/cloudflare/circl/kem/xwing"
	"github.com/cloudflare/circl/sign/mldsa/mldsa65"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

// CryptoOptions configure RunCrypto. Zero values take the defaults.
type CryptoOptions struct {
	// Sizes are the envelope payload sizes in bytes; nil = 1 KiB, 64 KiB, 1 MiB.
	Sizes []int
	// Rounds of measurements, ours and baseline interleaved; medians are
	// reported. 0 = 11. Many short rounds keep both sides of a pair exposed
	// to the same background load.
	Rounds int
	// MinTime is the least time one measurement runs; 0 = 50ms.
	MinTime time.Duration
	// HPKEPayload is the plaintext size of the one-shot HPKE operations;
	// 0 = 1 KiB.
	HPKEPayload int
	// Now is the clock; nil = time.Now (wall time). On a machine shared
	// with other work, a clock reading the process's CPU time (for example
	// from getrusage(RUSAGE_SELF), user + system) measures per-core cost
	// without counting time the process spent descheduled.
	Now func() time.Time
	// Rand supplies key material and payloads; nil = crypto/rand. The
	// operations under measurement draw their own randomness (salts, nonces,
	// KEM encapsulation) from crypto/rand, as they do in production.
	Rand io.Reader
}

// RunCrypto runs the crypto suite, each figure beside a baseline doing the
// same work without edgefleet's layers, in the same run:
//
//   - envelope_seal_<size>, envelope_open_<size> (MB/s): pqcrypto envelopes
//     under a data key (suite hkdfsha256-aes256gcm: per-message HKDF key,
//     64 KiB STREAM chunks, versioned header) beside raw AES-256-GCM from
//     crypto/cipher on the same payload (one long-lived key, a random 96-bit
//     nonce per message, output buffers reused on both sides).
//   - hpke_seal, hpke_open (ops/s): one-shot HPKE base mode with X-Wing,
//     HKDF-SHA256, AES-256-GCM to a public key, beside circl's hpke called
//     bare (NewSender/Setup/Seal, NewReceiver/Setup/Open).
//   - xwing_keygen, xwing_encap, xwing_decap (ops/s) beside circl's
//     kem/xwing called bare.
//   - mldsa65_sign, mldsa65_verify (ops/s, 256-byte message, context
//     string) beside circl's mldsa65 called bare.
//
// Ratio is ours / baseline (higher is better; 1.0 = no overhead). Each round
// measures ours and the baseline back to back, alternating which goes first.
func RunCrypto(ctx context.Context, opt CryptoOptions) (Report, error) {
	if opt.Rounds < 0 || opt.MinTime < 0 || opt.HPKEPayload < 0 {
		return Report{}, fmt.Errorf("bench: crypto: negative option in %+v", opt)
	}
	for _, s := range opt.Sizes {
		if s <= 0 {
			return Report{}, fmt.Errorf("bench: crypto: payload size %d must be positive", s)
		}
	}
	if opt.Sizes == nil {
		opt.Sizes = []int{1 << 10, 64 << 10, 1 << 20}
	}
	if opt.Rounds == 0 {
		opt.Rounds = 11
	}
	if opt.MinTime == 0 {
		opt.MinTime = 50 * time.Millisecond
	}
	if opt.HPKEPayload == 0 {
		opt.HPKEPayload = 1 << 10
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Rand == nil {
		opt.Rand = rand.Reader
	}

	pairs, err := cryptoPairs(opt)
	if err != nil {
		return Report{}, err
	}
	if err := runPairs(ctx, "crypto", opt.Now, opt.MinTime, opt.Rounds, pairs); err != nil {
		return Report{}, err
	}

	rep := Report{
		Suite: "crypto",
		Machine: Machine(fmt.Sprintf("sizes=%v rounds=%d min_time=%s hpke_payload=%d envelope_suite=%s hpke_suite=%s",
			opt.Sizes, opt.Rounds, opt.MinTime, opt.HPKEPayload, pqcrypto.SuiteDataKeyAES256GCM, pqcrypto.SuiteXWingAES256GCM)),
	}
	rep.Results = pairResults(pairs)
	return rep, nil
}

func cryptoPairs(opt CryptoOptions) ([]pair, error) {
	fail := func(err error) ([]pair, error) { return nil, fmt.Errorf("bench: crypto: setup: %w", err) }
	randBytes := func(n int) ([]byte, error) {
		b := make([]byte, n)
		_, err := io.ReadFull(opt.Rand, b)
		return b, err
	}
	var pairs []pair

	// Envelopes under a data key beside raw AES-256-GCM.
	secret, err := randBytes(pqcrypto.DataKeySize)
	if err != nil {
		return fail(err)
	}
	dk, err := pqcrypto.NewDataKey("bench", 1, secret)
	if err != nil {
		return fail(err)
	}
	keys := &pqcrypto.Keys{DataKey: pqcrypto.DataKeys(dk)}
	rawKey, err := randBytes(32)
	if err != nil {
		return fail(err)
	}
	blk, err := aes.NewCipher(rawKey)
	if err != nil {
		return fail(err)
	}
	gcm, err := cipher.NewGCM(blk)
	if err != nil {
		return fail(err)
	}
	for _, size := range opt.Sizes {
		pt, err := randBytes(size)
		if err != nil {
			return fail(err)
		}
		label := sizeLabel(size)
		mb := float64(size) / 1e6
		sealBuf := make([]byte, 0, size+1024)
		rawBuf := make([]byte, 0, size+64)
		pairs = append(pairs, pair{
			name: "envelope_seal_" + label, baseName: "aes256gcm_seal_" + label, unit: "MB/s", scale: mb,
			ours: func() error {
				out, err := pqcrypto.SealWithDataKey(sealBuf[:0], dk, pt, nil)
				sealBuf = out[:0]
				return err
			},
			base: func() error {
				var err error
				rawBuf, err = rawGCMSeal(gcm, rawBuf, pt)
				return err
			},
		})
		env, err := pqcrypto.SealWithDataKey(nil, dk, pt, nil)
		if err != nil {
			return fail(err)
		}
		rawMsg, err := rawGCMSeal(gcm, nil, pt)
		if err != nil {
			return fail(err)
		}
		openBuf := make([]byte, 0, size)
		rawOpenBuf := make([]byte, 0, size)
		pairs = append(pairs, pair{
			name: "envelope_open_" + label, baseName: "aes256gcm_open_" + label, unit: "MB/s", scale: mb,
			ours: func() error {
				out, _, err := pqcrypto.Open(openBuf[:0], env, keys)
				openBuf = out[:0]
				return err
			},
			base: func() error {
				out, err := gcm.Open(rawOpenBuf[:0], rawMsg[:12], rawMsg[12:], nil)
				rawOpenBuf = out[:0]
				return err
			},
		})
	}

	// One-shot HPKE to an X-Wing public key beside circl's hpke.
	suite, err := pqcrypto.LookupSuite(pqcrypto.SuiteXWingAES256GCM)
	if err != nil {
		return fail(err)
	}
	bare := hpke.NewSuite(hpke.KEM_XWING, hpke.KDF_HKDF_SHA256, hpke.AEAD_AES256GCM)
	sk, err := pqcrypto.GenerateXWingKey(opt.Rand)
	if err != nil {
		return fail(err)
	}
	bareSK, err := hpke.KEM_XWING.Scheme().UnmarshalBinaryPrivateKey(sk.Bytes())
	if err != nil {
		return fail(err)
	}
	bareSch := hpke.KEM_XWING.Scheme()
	barePK, err := bareSch.UnmarshalBinaryPublicKey(sk.Public().Bytes())
	if err != nil {
		return fail(err)
	}
	info, aad := []byte("edgefleet bench"), []byte("aad")
	msg, err := randBytes(opt.HPKEPayload)
	if err != nil {
		return fail(err)
	}
	enc, ct, err := suite.Seal(nil, sk.Public(), info, aad, msg)
	if err != nil {
		return fail(err)
	}
	pairs = append(pairs,
		pair{
			name: "hpke_seal", baseName: "circl_hpke_seal", unit: "ops/s", scale: 1,
			ours: func() error { _, _, err := suite.Seal(nil, sk.Public(), info, aad, msg); return err },
			base: func() error {
				snd, err := bare.NewSender(barePK, info)
				if err != nil {
					return err
				}
				_, sl, err := snd.Setup(nil)
				if err != nil {
					return err
				}
				_, err = sl.Seal(msg, aad)
				return err
			},
		},
		pair{
			name: "hpke_open", baseName: "circl_hpke_open", unit: "ops/s", scale: 1,
			ours: func() error { _, err := suite.Open(sk, enc, info, aad, ct); return err },
			base: func() error {
				rcv, err := bare.NewReceiver(bareSK, info)
				if err != nil {
					return err
				}
				op, err := rcv.Setup(enc)
				if err != nil {
					return err
				}
				_, err = op.Open(ct, aad)
				return err
			},
		})

	// X-Wing KEM beside circl's kem/xwing.
	xw := pqcrypto.XWing()
	xsch := xwing.Scheme()
	kemCT, _, err := xw.Encapsulate(nil, sk.Public())
	if err != nil {
		return fail(err)
	}
	pairs = append(pairs,
		pair{
			name: "xwing_keygen", baseName: "circl_xwing_keygen", unit: "ops/s", scale: 1,
			ours: func() error { _, err := pqcrypto.GenerateXWingKey(nil); return err },
			base: func() error { _, _, err := xwing.GenerateKeyPair(nil); return err },
		},
		pair{
			name: "xwing_encap", baseName: "circl_xwing_encap", unit: "ops/s", scale: 1,
			ours: func() error { _, _, err := xw.Encapsulate(nil, sk.Public()); return err },
			base: func() error { _, _, err := xsch.Encapsulate(barePK); return err },
		},
		pair{
			name: "xwing_decap", baseName: "circl_xwing_decap", unit: "ops/s", scale: 1,
			ours: func() error { _, err := xw.Decapsulate(sk, kemCT); return err },
			base: func() error { _, err := xsch.Decapsulate(bareSK, kemCT); return err },
		})

	// ML-DSA-65 beside circl's mldsa65.
	seed, err := randBytes(pqcrypto.SigningSeedSize)
	if err != nil {
		return fail(err)
	}
	signer, err := pqcrypto.NewSigningKey(seed)
	if err != nil {
		return fail(err)
	}
	var bareSeed [mldsa65.SeedSize]byte
	copy(bareSeed[:], seed)
	barePub, bareSigner := mldsa65.NewKeyFromSeed(&bareSeed)
	const signCtx = "edgefleet/bench"
	signMsg, err := randBytes(256)
	if err != nil {
		return fail(err)
	}
	sig, err := signer.Sign(signCtx, signMsg)
	if err != nil {
		return fail(err)
	}
	bareSig := make([]byte, mldsa65.SignatureSize)
	pairs = append(pairs,
		pair{
			name: "mldsa65_sign", baseName: "circl_mldsa65_sign", unit: "ops/s", scale: 1,
			ours: func() error { _, err := signer.Sign(signCtx, signMsg); return err },
			base: func() error { return mldsa65.SignTo(bareSigner, signMsg, []byte(signCtx), true, bareSig) },
		},
		pair{
			name: "mldsa65_verify", baseName: "circl_mldsa65_verify", unit: "ops/s", scale: 1,
			ours: func() error { return signer.Public().Verify(signCtx, signMsg, sig) },
			base: func() error {
				if !mldsa65.Verify(barePub, signMsg, []byte(signCtx), sig) {
					return errors.New("circl rejected a valid signature")
				}
				return nil
			},
		})
	return pairs, nil
}

// rawGCMSeal is the baseline: a random 96-bit nonce in front of the
// AES-256-GCM ciphertext, appended to dst[:0].
func rawGCMSeal(g cipher.AEAD, dst, pt []byte) ([]byte, error) {
	dst = append(dst[:0], make([]byte, 12)...)
	if _, err := rand.Read(dst[:12]); err != nil {
		return nil, err
	}
	return g.Seal(dst, dst[:12], pt, nil), nil
}

// measureOps runs op repeatedly for at least minTime and returns ops/s.
// Calls are made in batches so reading the clock does not weigh on fast
// operations.
func measureOps(ctx context.Context, now func() time.Time, minTime time.Duration, op func() error) (float64, error) {
	if err := op(); err != nil { // warm-up, also checks the op works
		return 0, err
	}
	n, batch := 0, 1
	start := now()
	for {
		for i := 0; i < batch; i++ {
			if err := op(); err != nil {
				return 0, err
			}
		}
		n += batch
		elapsed := now().Sub(start)
		if elapsed >= minTime {
			return float64(n) / elapsed.Seconds(), nil
		}
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if elapsed < minTime/20 {
			batch *= 2
		}
	}
}

// sizeLabel names a payload size: 1KiB, 64KiB, 1MiB, or bytes (100B).
func sizeLabel(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
