package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cloudflare/circl/hpke"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

func keygen(t *testing.T, e *testEnv, name string) (keyPath, pubPath string) {
	t.Helper()
	keyPath, pubPath = filepath.Join(e.dir, name+".key"), filepath.Join(e.dir, name+".pub")
	e.must("crypto", "keygen", "--out", keyPath, "--public-out", pubPath)
	return keyPath, pubPath
}

func TestCryptoKeygenFiles(t *testing.T) {
	e := bareEnv(t)
	keyPath, pubPath := keygen(t, e, "me")
	st, _ := os.Stat(keyPath)
	pst, _ := os.Stat(pubPath)
	if st.Mode().Perm() != 0o600 || pst.Mode().Perm() != 0o644 {
		t.Fatalf("modes %v %v", st.Mode(), pst.Mode())
	}
	var kf, pf map[string]any
	b, _ := os.ReadFile(keyPath)
	json.Unmarshal(b, &kf)
	b, _ = os.ReadFile(pubPath)
	json.Unmarshal(b, &pf)
	priv, _ := base64.StdEncoding.DecodeString(kf["private"].(string))
	pub, _ := base64.StdEncoding.DecodeString(kf["public"].(string))
	if kf["kem"] != "X-Wing" || len(priv) != 32 || len(pub) != 1216 || pf["public"] != kf["public"] || pf["private"] != nil {
		t.Fatalf("key file %v, public file %v", kf, pf)
	}
	sk, err := pqcrypto.NewXWingKeyFromSeed(priv)
	if err != nil || !bytes.Equal(sk.Public().Bytes(), pub) {
		t.Fatalf("seed does not give the public key: %v", err)
	}
	if r := e.run("crypto", "keygen", "--out", keyPath); r.code != 1 || !strings.Contains(r.stderr, "--force") {
		t.Fatalf("overwrite: %+v", r)
	}
	e.must("crypto", "keygen", "--out", keyPath, "--force")
	if b2, _ := os.ReadFile(keyPath); bytes.Equal(b, b2) {
		t.Fatal("--force did not replace the key")
	}
	info := decodeJSON[map[string]any](t, e.must("crypto", "keygen", "--out", filepath.Join(e.dir, "j.key"), "--json"))
	if info["fingerprint"] == "" || info["kem"] != "X-Wing" || info["private"] != nil {
		t.Fatalf("keygen --json: %v", info)
	}
	if r := e.run("crypto", "keygen"); r.code != 2 {
		t.Fatalf("keygen without --out: %+v", r)
	}
}

func TestCryptoSealOpenBinaryEnvelope(t *testing.T) {
	e := bareEnv(t)
	keyPath, pubPath := keygen(t, e, "me")
	otherKey, _ := keygen(t, e, "other")
	ctx := context.Background()
	msg := "attack at dawn\n" + strings.Repeat("x", 200000)
	envPath := filepath.Join(e.dir, "m.env")
	r := e.runWith(ctx, strings.NewReader(msg), "crypto", "seal", "--recipient", pubPath, "--aad", "ctx-1", "--out", envPath)
	if r.code != 0 {
		t.Fatalf("seal: %+v", r)
	}
	env, _ := os.ReadFile(envPath)
	if h, _, err := pqcrypto.ParseHeader(env); err != nil || h.Mode != pqcrypto.ModeRecipient || bytes.Contains(env, []byte("attack")) {
		t.Fatalf("envelope header %+v %v", h, err)
	}
	if out := e.must("crypto", "open", "--key", keyPath, "--aad", "ctx-1", "--in", envPath); out != msg {
		t.Fatalf("open gave %d bytes", len(out))
	}
	// Sealing to the private key file works too (its public half).
	out := e.mustIn([]byte("hi"), "crypto", "seal", "--recipient", keyPath, "--aead", "chacha20-poly1305")
	if got := e.mustIn([]byte(out), "crypto", "open", "--key", keyPath); got != "hi" {
		t.Fatalf("chacha round trip: %q", got)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"crypto", "open", "--key", keyPath, "--in", envPath}, 1, "wrong --aad"},
		{[]string{"crypto", "open", "--key", otherKey, "--aad", "ctx-1", "--in", envPath}, 1, "sealed to key"},
		{[]string{"crypto", "open", "--key", keyPath, "--in", envPath, "--info", "x"}, 2, "--info applies"},
		{[]string{"crypto", "seal", "--recipient", pubPath, "--info", "x", "--in", envPath}, 2, "--info applies to --json"},
		{[]string{"crypto", "seal", "--in", envPath}, 2, "--recipient"},
		{[]string{"crypto", "seal", "--recipient", pubPath, "--aead", "des", "--in", envPath}, 2, "--aead"},
		{[]string{"crypto", "open", "--key", pubPath, "--in", envPath}, 1, "no private key"},
		{[]string{"crypto", "seal", "--recipient", envPath, "--in", envPath}, 1, "recipient"},
	} {
		r := e.run(c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("%v: exit %d (want %d), stderr %q (want %q)", c.args, r.code, c.code, r.stderr, c.want)
		}
	}
	// A flipped byte fails, and nothing is written.
	env[len(env)-5] ^= 1
	bad := filepath.Join(e.dir, "bad.out")
	r = e.runWith(ctx, bytes.NewReader(env), "crypto", "open", "--key", keyPath, "--aad", "ctx-1", "--out", bad)
	if r.code != 1 || !strings.Contains(r.stderr, "authentication failed") {
		t.Fatalf("tampered envelope: %+v", r)
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Fatal("output written for a tampered envelope")
	}
}

func TestCryptoSealJSONIsStandardHPKE(t *testing.T) {
	e := bareEnv(t)
	keyPath, pubPath := keygen(t, e, "me")
	out := e.mustIn([]byte("hello, hpke"), "crypto", "seal", "--recipient", pubPath, "--json", "--info", "edgefleet test", "--aad", "row 7")
	var s struct {
		KEMID      uint16 `json:"kem_id"`
		KDFID      uint16 `json:"kdf_id"`
		AEADID     uint16 `json:"aead_id"`
		Info       []byte `json:"info"`
		AAD        []byte `json:"aad"`
		Enc        []byte `json:"enc"`
		Ciphertext []byte `json:"ciphertext"`
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	if s.KEMID != 0x647a || s.KDFID != 1 || s.AEADID != 2 || string(s.Info) != "edgefleet test" || string(s.AAD) != "row 7" || len(s.Enc) != 1120 {
		t.Fatalf("sealed JSON: %+v", s)
	}
	// Interop: circl's HPKE opens it directly, with the seed from the key
	// file as the X-Wing private key.
	var kf struct{ Private []byte }
	b, _ := os.ReadFile(keyPath)
	json.Unmarshal(b, &kf)
	sk, err := hpke.KEM_XWING.Scheme().UnmarshalBinaryPrivateKey(kf.Private)
	if err != nil {
		t.Fatal(err)
	}
	suite := hpke.NewSuite(hpke.KEM(s.KEMID), hpke.KDF(s.KDFID), hpke.AEAD(s.AEADID))
	recv, err := suite.NewReceiver(sk, s.Info)
	if err != nil {
		t.Fatal(err)
	}
	opener, err := recv.Setup(s.Enc)
	if err != nil {
		t.Fatal(err)
	}
	pt, err := opener.Open(s.Ciphertext, s.AAD)
	if err != nil || string(pt) != "hello, hpke" {
		t.Fatalf("circl opens %q, %v", pt, err)
	}
	// And edgectl opens it, checking --info and --aad when given.
	if got := e.mustIn([]byte(out), "crypto", "open", "--key", keyPath, "--aad", "row 7", "--info", "edgefleet test"); got != "hello, hpke" {
		t.Fatalf("open: %q", got)
	}
	if r := e.runWith(context.Background(), strings.NewReader(out), "crypto", "open", "--key", keyPath, "--aad", "row 8"); r.code != 1 || !strings.Contains(r.stderr, "differs") {
		t.Fatalf("other aad: %+v", r)
	}

	// The other way: circl seals, edgectl opens.
	pkBytes, _ := os.ReadFile(pubPath)
	var pf struct{ Public []byte }
	json.Unmarshal(pkBytes, &pf)
	pk, err := hpke.KEM_XWING.Scheme().UnmarshalBinaryPublicKey(pf.Public)
	if err != nil {
		t.Fatal(err)
	}
	chacha := hpke.NewSuite(hpke.KEM_XWING, hpke.KDF_HKDF_SHA256, hpke.AEAD_ChaCha20Poly1305)
	sender, err := chacha.NewSender(pk, []byte("from circl"))
	if err != nil {
		t.Fatal(err)
	}
	enc, sealer, err := sender.Setup(nil)
	if err != nil {
		t.Fatal(err)
	}
	ct, err := sealer.Seal([]byte("sealed by circl"), nil)
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := json.Marshal(map[string]any{"kem_id": 0x647a, "kdf_id": 1, "aead_id": 3, "info": []byte("from circl"), "aad": []byte{}, "enc": enc, "ciphertext": ct})
	if got := e.mustIn(doc, "crypto", "open", "--key", keyPath); got != "sealed by circl" {
		t.Fatalf("open circl's output: %q", got)
	}
	// A tampered ciphertext and an unsupported suite are refused.
	ct[0] ^= 1
	doc, _ = json.Marshal(map[string]any{"kem_id": 0x647a, "kdf_id": 1, "aead_id": 3, "info": []byte("from circl"), "aad": []byte{}, "enc": enc, "ciphertext": ct})
	if r := e.runWith(context.Background(), bytes.NewReader(doc), "crypto", "open", "--key", keyPath); r.code != 1 || !strings.Contains(r.stderr, "HPKE open failed") {
		t.Fatalf("tampered: %+v", r)
	}
	doc, _ = json.Marshal(map[string]any{"kem_id": 0x20, "kdf_id": 1, "aead_id": 1, "enc": enc, "ciphertext": ct})
	if r := e.runWith(context.Background(), bytes.NewReader(doc), "crypto", "open", "--key", keyPath); r.code != 1 || !strings.Contains(r.stderr, "not supported") {
		t.Fatalf("other suite: %+v", r)
	}
}

func TestCryptoSealToAgentRecord(t *testing.T) {
	e := bareEnv(t)
	keyPath, _ := keygen(t, e, "agent")
	sk, err := readPrivateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(map[string]any{"id": "ag_1", "xwing_public": sk.Public().Bytes()})
	recPath := filepath.Join(e.dir, "agent.json")
	os.WriteFile(recPath, rec, 0o644)
	rawPath := filepath.Join(e.dir, "agent.raw")
	os.WriteFile(rawPath, sk.Public().Bytes(), 0o644)
	b64Path := filepath.Join(e.dir, "agent.b64")
	os.WriteFile(b64Path, []byte(base64.StdEncoding.EncodeToString(sk.Public().Bytes())+"\n"), 0o644)
	for _, p := range []string{recPath, rawPath, b64Path} {
		env := e.mustIn([]byte("for the agent"), "crypto", "seal", "--recipient", p)
		if got := e.mustIn([]byte(env), "crypto", "open", "--key", keyPath); got != "for the agent" {
			t.Fatalf("%s: %q", p, got)
		}
	}
}

// FuzzCryptoInputs feeds arbitrary bytes to the parsers of key files,
// recipient files and sealed input: no panic, and a refusal is an error.
func FuzzCryptoInputs(f *testing.F) {
	sk, err := pqcrypto.NewXWingKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		f.Fatal(err)
	}
	keyFile, _ := json.Marshal(xwingKeyFile{KEM: xwingKEMName, Public: sk.Public().Bytes(), Private: sk.Bytes()})
	env, _ := pqcrypto.SealToRecipient(nil, pqcrypto.RecipientKey{PublicKey: sk.Public(), KeyVersion: 1}, []byte("x"), nil)
	suite, _ := pqcrypto.LookupSuite(pqcrypto.SuiteXWingAES256GCM)
	enc, ct, _ := suite.Seal(nil, sk.Public(), []byte("i"), []byte("a"), []byte("p"))
	sealed, _ := json.Marshal(hpkeSealed{KEMID: 0x647a, KDFID: 1, AEADID: 2, Info: []byte("i"), AAD: []byte("a"), Enc: enc, Ciphertext: ct})
	for _, seed := range [][]byte{keyFile, env, sealed, []byte(`{"kem":"X-Wing","public":"AAAA"}`), []byte(`{"xwing_public":null}`), []byte("{"), nil} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		parseRecipient("fuzz", data)
		parsePrivateKey("fuzz", data)
		if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '{' {
			openHPKEJSON(sk, t, nil, nil)
		} else {
			openEnvelope(sk, data, nil)
		}
	})
}
