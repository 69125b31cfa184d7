package pqcrypto

import (
	"bytes"
	"crypto/sha3"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// hexBytes decodes a JSON hex string.
type hexBytes []byte

func (h *hexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	*h = v
	return err
}

func loadJSON(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatalf("reading test vectors: %v", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decoding %s: %v", name, err)
	}
}

type rfc9180Vector struct {
	Mode        uint8    `json:"mode"`
	KEMID       uint16   `json:"kem_id"`
	KDFID       uint16   `json:"kdf_id"`
	AEADID      uint16   `json:"aead_id"`
	Info        hexBytes `json:"info"`
	IkmR        hexBytes `json:"ikmR"`
	IkmS        hexBytes `json:"ikmS"`
	IkmE        hexBytes `json:"ikmE"`
	SkRm        hexBytes `json:"skRm"`
	SkSm        hexBytes `json:"skSm"`
	PkRm        hexBytes `json:"pkRm"`
	PkSm        hexBytes `json:"pkSm"`
	Enc         hexBytes `json:"enc"`
	Encryptions []struct {
		Seq int      `json:"seq"`
		AAD hexBytes `json:"aad"`
		CT  hexBytes `json:"ct"`
		PT  hexBytes `json:"pt"`
	} `json:"encryptions"`
	Exports []struct {
		Context hexBytes `json:"exporter_context"`
		L       int      `json:"L"`
		Value   hexBytes `json:"exported_value"`
	} `json:"exports"`
}

// TestRFC9180Vectors runs the RFC 9180 test vectors for the suites we
// register (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM and
// ChaCha20-Poly1305; base and auth modes) through this package's API:
// key derivation, encapsulation, every listed encryption (including sequence
// numbers 255 and 256) and the exporter.
func TestRFC9180Vectors(t *testing.T) {
	var vectors []rfc9180Vector
	loadJSON(t, "rfc9180_x25519_sha256.json", &vectors)
	if len(vectors) != 4 {
		t.Fatalf("want 4 vectors, got %d", len(vectors))
	}
	for _, v := range vectors {
		t.Run(fmt.Sprintf("mode%d-aead%d", v.Mode, v.AEADID), func(t *testing.T) {
			var suite *Suite
			for _, name := range SuiteNames() {
				s, _ := LookupSuite(name)
				if s.KEMID() == v.KEMID && s.KDFID() == v.KDFID && s.AEADID() == v.AEADID {
					suite = s
				}
			}
			if suite == nil {
				t.Fatalf("no registered suite for kem %#x kdf %#x aead %#x", v.KEMID, v.KDFID, v.AEADID)
			}
			k := suite.KEM()
			skR, err := k.DeriveKeyPair(v.IkmR)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(skR.Bytes(), v.SkRm) || !bytes.Equal(skR.Public().Bytes(), v.PkRm) {
				t.Fatalf("DeriveKeyPair(ikmR) = %x / %x, want %x / %x", skR.Bytes(), skR.Public().Bytes(), v.SkRm, v.PkRm)
			}
			pkR, err := k.ParsePublicKey(v.PkRm)
			if err != nil {
				t.Fatal(err)
			}
			var (
				enc    []byte
				sealer *HPKESealer
				opener *HPKEOpener
			)
			switch v.Mode {
			case 0:
				enc, sealer, err = suite.NewSealer(bytes.NewReader(v.IkmE), pkR, v.Info)
				if err != nil {
					t.Fatal(err)
				}
				opener, err = suite.NewOpener(skR, enc, v.Info)
			case 2:
				skS, err2 := k.DeriveKeyPair(v.IkmS)
				if err2 != nil {
					t.Fatal(err2)
				}
				if !bytes.Equal(skS.Bytes(), v.SkSm) || !bytes.Equal(skS.Public().Bytes(), v.PkSm) {
					t.Fatal("DeriveKeyPair(ikmS) does not match skSm/pkSm")
				}
				enc, sealer, err = suite.NewAuthSealer(bytes.NewReader(v.IkmE), pkR, skS, v.Info)
				if err != nil {
					t.Fatal(err)
				}
				opener, err = suite.NewAuthOpener(skR, skS.Public(), enc, v.Info)
			default:
				t.Fatalf("unexpected mode %d", v.Mode)
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(enc, v.Enc) {
				t.Fatalf("enc = %x, want %x", enc, v.Enc)
			}
			seq := 0
			for _, e := range v.Encryptions {
				for ; seq < e.Seq; seq++ { // advance both contexts to e.Seq
					ct, err := sealer.Seal(e.PT, e.AAD)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := opener.Open(ct, e.AAD); err != nil {
						t.Fatal(err)
					}
				}
				ct, err := sealer.Seal(e.PT, e.AAD)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(ct, e.CT) {
					t.Fatalf("seq %d: ct = %x, want %x", e.Seq, ct, e.CT)
				}
				pt, err := opener.Open(e.CT, e.AAD)
				if err != nil || !bytes.Equal(pt, e.PT) {
					t.Fatalf("seq %d: open = %x, %v", e.Seq, pt, err)
				}
				seq++
			}
			for i, x := range v.Exports {
				got, err := sealer.Export(x.Context, x.L)
				if err != nil || !bytes.Equal(got, x.Value) {
					t.Fatalf("sealer export %d = %x, %v; want %x", i, got, err, x.Value)
				}
				got, err = opener.Export(x.Context, x.L)
				if err != nil || !bytes.Equal(got, x.Value) {
					t.Fatalf("opener export %d = %x, %v; want %x", i, got, err, x.Value)
				}
			}
			// The single-shot API reproduces the first encryption.
			e := v.Encryptions[0]
			if v.Mode == 0 {
				enc1, ct1, err := suite.Seal(bytes.NewReader(v.IkmE), pkR, v.Info, e.AAD, e.PT)
				if err != nil || !bytes.Equal(enc1, v.Enc) || !bytes.Equal(ct1, e.CT) {
					t.Fatalf("Seal = %x %x %v", enc1, ct1, err)
				}
				pt, err := suite.Open(skR, v.Enc, v.Info, e.AAD, e.CT)
				if err != nil || !bytes.Equal(pt, e.PT) {
					t.Fatalf("Open = %x, %v", pt, err)
				}
			}
		})
	}
}

type xwingVector struct {
	Seed  hexBytes `json:"seed"`
	PK    hexBytes `json:"pk"`
	ESeed hexBytes `json:"eseed"`
	CT    hexBytes `json:"ct"`
	SS    hexBytes `json:"ss"`
}

// TestXWingDraftVector checks the first test vector of the X-Wing draft
// (draft-connolly-cfrg-xwing-kem, appendix C) through this package's API.
func TestXWingDraftVector(t *testing.T) {
	var vectors []xwingVector
	loadJSON(t, "xwing_draft_vectors.json", &vectors)
	for i, v := range vectors {
		sk, err := NewXWingKeyFromSeed(v.Seed)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sk.Bytes(), v.Seed) {
			t.Fatalf("vector %d: private key encoding is not the seed", i)
		}
		if !bytes.Equal(sk.Public().Bytes(), v.PK) {
			t.Fatalf("vector %d: pk = %x, want %x", i, sk.Public().Bytes(), v.PK)
		}
		pk, err := ParseXWingPublicKey(v.PK)
		if err != nil {
			t.Fatal(err)
		}
		ct, ss, err := XWing().Encapsulate(bytes.NewReader(v.ESeed), pk)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ct, v.CT) || !bytes.Equal(ss, v.SS) {
			t.Fatalf("vector %d: encapsulate = %x / %x, want %x / %x", i, ct, ss, v.CT, v.SS)
		}
		ss2, err := XWing().Decapsulate(sk, v.CT)
		if err != nil || !bytes.Equal(ss2, v.SS) {
			t.Fatalf("vector %d: decapsulate = %x, %v", i, ss2, err)
		}
	}
}

// TestXWingSpecVectorDigest regenerates the X-Wing specification's
// test-vectors.txt (three vectors whose seeds come from SHAKE128 of the empty
// string) through this package's API and compares its SHAKE128 digest with
// the digest of the file published with the specification
// (github.com/dconnolly/draft-connolly-cfrg-xwing-kem, spec/test-vectors.txt).
func TestXWingSpecVectorDigest(t *testing.T) {
	const want = "1bcd0057d861d6b866239936cadcaeee1ec0164dedc181c386e9e54fe46156fe"
	h := sha3.NewSHAKE128()
	var w bytes.Buffer
	writeHex := func(prefix string, val []byte) {
		const width, indent = 74, "  "
		s := hex.EncodeToString(val)
		if len(prefix)+len(s)+5 < width {
			fmt.Fprintf(&w, "%s     %s\n", prefix, s)
			return
		}
		fmt.Fprintf(&w, "%s\n", prefix)
		for len(s) > 0 {
			n := min(len(s), width-len(indent))
			fmt.Fprintf(&w, "%s%s\n", indent, s[:n])
			s = s[n:]
		}
	}
	for i := 0; i < 3; i++ {
		seed := make([]byte, 32)
		_, _ = h.Read(seed)
		writeHex("seed", seed)
		sk, err := NewXWingKeyFromSeed(seed)
		if err != nil {
			t.Fatal(err)
		}
		writeHex("sk", sk.Bytes())
		writeHex("pk", sk.Public().Bytes())
		eseed := make([]byte, 64)
		_, _ = h.Read(eseed)
		writeHex("eseed", eseed)
		ct, ss, err := XWing().Encapsulate(bytes.NewReader(eseed), sk.Public())
		if err != nil {
			t.Fatal(err)
		}
		writeHex("ct", ct)
		writeHex("ss", ss)
		w.WriteString("\n")
	}
	d := sha3.NewSHAKE128()
	_, _ = d.Write(w.Bytes())
	got := make([]byte, 32)
	_, _ = d.Read(got)
	if hex.EncodeToString(got) != want {
		t.Fatalf("digest of regenerated test-vectors.txt = %x, want %s", got, want)
	}
}

// TestMLDSA65KeyGenACVP checks key generation from a seed against NIST ACVP
// ML-DSA-65 keyGen vectors.
func TestMLDSA65KeyGenACVP(t *testing.T) {
	var vectors []struct {
		TcID int      `json:"tcId"`
		Seed hexBytes `json:"seed"`
		PK   hexBytes `json:"pk"`
		SK   hexBytes `json:"sk"`
	}
	loadJSON(t, "mldsa65_keygen_acvp.json", &vectors)
	if len(vectors) == 0 {
		t.Fatal("no vectors")
	}
	for _, v := range vectors {
		k, err := NewSigningKey(v.Seed)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(k.Public().Bytes(), v.PK) {
			t.Fatalf("tc %d: public key mismatch", v.TcID)
		}
		if got := k.sk.Bytes(); !bytes.Equal(got, v.SK) {
			t.Fatalf("tc %d: expanded private key mismatch", v.TcID)
		}
		if !bytes.Equal(k.Bytes(), v.Seed) {
			t.Fatalf("tc %d: encoding is not the seed", v.TcID)
		}
	}
}
