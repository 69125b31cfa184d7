package pqcrypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"testing"

	"github.com/cloudflare/circl/hpke"
	"github.com/cloudflare/circl/kem/xwing"
	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
)

// Each benchmark pairs our operation ("ours") with the same work done
// directly ("raw-aes256gcm" with crypto/cipher, "circl" with circl called
// bare). Compare the pairs with benchstat or by eye:
//
//	go test -run=^$ -bench=. -benchtime=2s ./pqcrypto/

var benchSizes = []struct {
	name string
	n    int
}{{"1KiB", 1 << 10}, {"64KiB", 64 << 10}, {"1MiB", 1 << 20}}

func rawGCM(b *testing.B) cipher.AEAD {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		b.Fatal(err)
	}
	blk, err := aes.NewCipher(key)
	if err != nil {
		b.Fatal(err)
	}
	g, err := cipher.NewGCM(blk)
	if err != nil {
		b.Fatal(err)
	}
	return g
}

// rawSeal is the baseline: a fresh random 96-bit nonce per message, stored in
// front of the ciphertext, under a long-lived AES-256-GCM instance.
func rawSeal(g cipher.AEAD, dst, pt []byte) []byte {
	dst = dst[:12]
	if _, err := rand.Read(dst); err != nil {
		panic(err)
	}
	return g.Seal(dst, dst[:12], pt, nil)
}

func rawOpen(g cipher.AEAD, dst, msg []byte) ([]byte, error) {
	return g.Open(dst, msg[:12], msg[12:], nil)
}

func BenchmarkEnvelopeSeal(b *testing.B) {
	f := newFixture(b)
	for _, s := range benchSizes {
		pt := make([]byte, s.n)
		b.Run(s.name+"/ours", func(b *testing.B) {
			buf := make([]byte, 0, s.n+1024)
			b.SetBytes(int64(s.n))
			for b.Loop() {
				out, err := SealWithDataKey(buf[:0], f.dk, pt, nil)
				if err != nil {
					b.Fatal(err)
				}
				buf = out
			}
		})
		b.Run(s.name+"/raw-aes256gcm", func(b *testing.B) {
			g := rawGCM(b)
			buf := make([]byte, 12, s.n+1024)
			b.SetBytes(int64(s.n))
			for b.Loop() {
				buf = rawSeal(g, buf, pt)
			}
		})
	}
}

func BenchmarkEnvelopeOpen(b *testing.B) {
	f := newFixture(b)
	keys := &Keys{DataKey: DataKeys(f.dk)}
	for _, s := range benchSizes {
		pt := make([]byte, s.n)
		b.Run(s.name+"/ours", func(b *testing.B) {
			env, err := SealWithDataKey(nil, f.dk, pt, nil)
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 0, s.n)
			b.SetBytes(int64(s.n))
			for b.Loop() {
				if buf, _, err = Open(buf[:0], env, keys); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(s.name+"/raw-aes256gcm", func(b *testing.B) {
			g := rawGCM(b)
			msg := rawSeal(g, make([]byte, 12, s.n+28), pt)
			buf := make([]byte, 0, s.n)
			var err error
			b.SetBytes(int64(s.n))
			for b.Loop() {
				if buf, err = rawOpen(g, buf[:0], msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkHPKE(b *testing.B) {
	f := newFixture(b)
	s, _ := LookupSuite(SuiteXWingAES256GCM)
	bare := hpke.NewSuite(hpke.KEM_XWING, hpke.KDF_HKDF_SHA256, hpke.AEAD_AES256GCM)
	info, aad, pt := []byte("edgefleet"), []byte("aad"), make([]byte, 1024)
	pkR, skR := f.xwing.Public().pk, f.xwing.sk
	b.Run("seal/ours", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := s.Seal(nil, f.xwing.Public(), info, aad, pt); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("seal/circl", func(b *testing.B) {
		for b.Loop() {
			snd, err := bare.NewSender(pkR, info)
			if err != nil {
				b.Fatal(err)
			}
			_, sl, err := snd.Setup(nil)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := sl.Seal(pt, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	enc, ct, err := s.Seal(nil, f.xwing.Public(), info, aad, pt)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("open/ours", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Open(f.xwing, enc, info, aad, ct); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("open/circl", func(b *testing.B) {
		for b.Loop() {
			rcv, err := bare.NewReceiver(skR, info)
			if err != nil {
				b.Fatal(err)
			}
			op, err := rcv.Setup(enc)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := op.Open(ct, aad); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("envelope-seal-1KiB/ours", func(b *testing.B) {
		to := f.to()
		for b.Loop() {
			if _, err := SealToRecipient(nil, to, pt, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	env, _ := SealToRecipient(nil, f.to(), pt, nil)
	b.Run("envelope-open-1KiB/ours", func(b *testing.B) {
		keys := &Keys{PrivateKey: PrivateKeyFor("agent-7-kem", 1, f.xwing)}
		for b.Loop() {
			if _, _, err := Open(nil, env, keys); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkXWing(b *testing.B) {
	f := newFixture(b)
	sch := xwing.Scheme()
	b.Run("keygen/ours", func(b *testing.B) {
		for b.Loop() {
			if _, err := GenerateXWingKey(nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("keygen/circl", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := xwing.GenerateKeyPair(nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encap/ours", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := XWing().Encapsulate(nil, f.xwing.Public()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encap/circl", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := sch.Encapsulate(f.xwing.Public().pk); err != nil {
				b.Fatal(err)
			}
		}
	})
	enc, _, _ := XWing().Encapsulate(nil, f.xwing.Public())
	b.Run("decap/ours", func(b *testing.B) {
		for b.Loop() {
			if _, err := XWing().Decapsulate(f.xwing, enc); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decap/circl", func(b *testing.B) {
		for b.Loop() {
			if _, err := sch.Decapsulate(f.xwing.sk, enc); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkMLDSA65(b *testing.B) {
	f := newFixture(b)
	msg := make([]byte, 256)
	ctx := "edgefleet/bench"
	b.Run("sign/ours", func(b *testing.B) {
		for b.Loop() {
			if _, err := f.signer.Sign(ctx, msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("sign/circl", func(b *testing.B) {
		sig := make([]byte, mldsa65.SignatureSize)
		for b.Loop() {
			if err := mldsa65.SignTo(f.signer.sk, msg, []byte(ctx), true, sig); err != nil {
				b.Fatal(err)
			}
		}
	})
	sig, _ := f.signer.Sign(ctx, msg)
	b.Run("verify/ours", func(b *testing.B) {
		for b.Loop() {
			if err := f.signer.Public().Verify(ctx, msg, sig); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("verify/circl", func(b *testing.B) {
		for b.Loop() {
			if !mldsa65.Verify(f.signer.Public().pk, msg, []byte(ctx), sig) {
				b.Fatal("verify")
			}
		}
	})
}
