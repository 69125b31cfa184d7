package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/internal/cli"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// cryptoRand supplies the randomness of key generation and sealing; tests
// replace it.
var cryptoRand io.Reader = rand.Reader

// maxCryptoInput bounds what seal and open read: both work in memory, so a
// failed authentication writes nothing.
const maxCryptoInput = 256 << 20

// xwingKEMName names the KEM in key files.
const xwingKEMName = "X-Wing"

// xwingKeyFile is the JSON form of an X-Wing key written by keygen: the
// public key (1216 bytes) and, in the private file, the 32-byte seed the
// X-Wing private key is expanded from. Binary fields are standard base64.
type xwingKeyFile struct {
	KEM     string `json:"kem"`
	Public  []byte `json:"public"`
	Private []byte `json:"private,omitempty"`
}

// hpkeSealed is single-shot RFC 9180 HPKE base-mode output (SealBase):
// algorithm identifiers, the info and aad the context was bound to, the
// encapsulated key and the AEAD ciphertext. Binary fields are standard
// base64.
type hpkeSealed struct {
	KEMID      uint16 `json:"kem_id"`
	KDFID      uint16 `json:"kdf_id"`
	AEADID     uint16 `json:"aead_id"`
	Info       []byte `json:"info"`
	AAD        []byte `json:"aad"`
	Enc        []byte `json:"enc"`
	Ciphertext []byte `json:"ciphertext"`
}

func (a *app) newCryptoCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "crypto",
		Short: "Post-quantum encryption with X-Wing HPKE: keygen, seal, open (offline)",
		Long: `crypto makes X-Wing key pairs and seals and opens data to them, offline
(no control plane involved). X-Wing is the hybrid ML-KEM-768 + X25519 KEM
(HPKE KEM id 0x647a); sealing is RFC 9180 HPKE base mode with HKDF-SHA256
and AES-256-GCM (or ChaCha20-Poly1305).

Two output forms:

  binary (default)  an edgefleet pqcrypto recipient envelope: versioned
                    header (bound as HPKE info and AEAD associated data),
                    then the payload in authenticated chunks. --aad binds
                    extra data that is not stored: open needs it again.
  --json            plain single-shot HPKE: {"kem_id", "kdf_id", "aead_id",
                    "info", "aad", "enc", "ciphertext"}, binary fields in
                    standard base64. Any RFC 9180 implementation with X-Wing
                    opens it: SetupBaseR(enc, skR, info), then
                    Open(aad, ciphertext).

'crypto open' accepts both forms. Input is read from --in or stdin, output
goes to --out (mode 0600) or stdout; both are handled in memory, at most
256 MiB, so a failed open writes nothing.`,
		RunE: cli.GroupRunE,
	}
	c.AddCommand(a.newCryptoKeygenCmd(), a.newCryptoSealCmd(), a.newCryptoOpenCmd())
	return c
}

func (a *app) newCryptoKeygenCmd() *cobra.Command {
	var (
		out           cli.OutputFlags
		path, pubPath string
		force         bool
	)
	c := &cobra.Command{
		Use:   "keygen --out FILE [--public-out FILE]",
		Short: "Make an X-Wing key pair: FILE (0600) holds it, --public-out the public key only",
		Long: `keygen makes an X-Wing key pair and writes it to --out as JSON
{"kem": "X-Wing", "public": base64, "private": base64} with mode 0600; the
private key is the 32-byte X-Wing seed. --public-out writes the same without
"private" (mode 0644), the file to hand to whoever seals to you. An existing
file is not replaced without --force. The command prints the public key's
fingerprint (--json: kem, public, fingerprint).`,
		Example: `  edgectl crypto keygen --out me.key --public-out me.pub
  edgectl crypto seal --recipient me.pub --in notes.txt --out notes.env
  edgectl crypto open --key me.key --in notes.env`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			if path == "" {
				return cli.Usagef("keygen needs --out FILE")
			}
			sk, err := pqcrypto.GenerateXWingKey(cryptoRand)
			if err != nil {
				return err
			}
			pub := sk.Public()
			seed := sk.Bytes()
			defer clear(seed)
			if err := writeJSONFile(path, xwingKeyFile{KEM: xwingKEMName, Public: pub.Bytes(), Private: seed}, 0o600, force); err != nil {
				return err
			}
			if pubPath != "" {
				if err := writeJSONFile(pubPath, xwingKeyFile{KEM: xwingKEMName, Public: pub.Bytes()}, 0o644, force); err != nil {
					return err
				}
			}
			info := struct {
				KEM         string `json:"kem"`
				Public      []byte `json:"public"`
				Fingerprint string `json:"fingerprint"`
			}{xwingKEMName, pub.Bytes(), pub.Fingerprint()}
			return cli.Print(c.OutOrStdout(), format, info, func(w io.Writer) error {
				fmt.Fprintf(w, "X-Wing key pair written to %s (mode 0600).\n", path)
				if pubPath != "" {
					fmt.Fprintf(w, "Public key written to %s.\n", pubPath)
				}
				_, err := fmt.Fprintf(w, "Fingerprint: %s\n", pub.Fingerprint())
				return err
			})
		},
	}
	out.Register(c)
	f := c.Flags()
	f.StringVar(&path, "out", "", "write the key pair here (mode 0600)")
	f.StringVar(&pubPath, "public-out", "", "also write the public key alone here (mode 0644)")
	f.BoolVar(&force, "force", false, "replace existing files")
	return c
}

// writeJSONFile writes v as indented JSON with mode perm, refusing to
// replace an existing file unless force.
func writeJSONFile(path string, v any, perm os.FileMode, force bool) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, perm)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s exists; pass --force to replace it", path)
	}
	if err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// readRecipient reads an X-Wing public key from a file: a key file or
// public-key file of keygen, an agent record ('edgectl agents show --json',
// field xwing_public), the raw 1216 bytes, or their base64.
func readRecipient(path string) (*pqcrypto.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseRecipient(path, data)
}

// parseRecipient reads the recipient file named path from its contents.
func parseRecipient(path string, data []byte) (*pqcrypto.PublicKey, error) {
	var err error
	trimmed := bytes.TrimSpace(data)
	var raw []byte
	switch {
	case bytes.HasPrefix(trimmed, []byte("{")):
		var kf struct {
			KEM         string `json:"kem"`
			Public      []byte `json:"public"`
			XWingPublic []byte `json:"xwing_public"`
		}
		if err := json.Unmarshal(trimmed, &kf); err != nil {
			return nil, fmt.Errorf("recipient %s: not a key file: %v", path, err)
		}
		if kf.KEM != "" && !strings.EqualFold(strings.ReplaceAll(kf.KEM, "-", ""), "xwing") {
			return nil, fmt.Errorf("recipient %s: kem %q, want %s", path, kf.KEM, xwingKEMName)
		}
		raw = kf.Public
		if raw == nil {
			raw = kf.XWingPublic
		}
		if raw == nil {
			return nil, fmt.Errorf("recipient %s: no \"public\" or \"xwing_public\" field", path)
		}
	case len(data) == pqcrypto.XWing().PublicKeySize():
		raw = data
	default:
		if raw, err = base64.StdEncoding.DecodeString(string(trimmed)); err != nil {
			return nil, fmt.Errorf("recipient %s: neither a key file (JSON), %d raw bytes nor base64 of them", path, pqcrypto.XWing().PublicKeySize())
		}
	}
	pub, err := pqcrypto.ParseXWingPublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("recipient %s: %w", path, err)
	}
	return pub, nil
}

// readPrivateKey reads a keygen key file.
func readPrivateKey(path string) (*pqcrypto.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	defer clear(data)
	return parsePrivateKey(path, data)
}

// parsePrivateKey reads the key file named path from its contents.
func parsePrivateKey(path string, data []byte) (*pqcrypto.PrivateKey, error) {
	var kf xwingKeyFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kf); err != nil {
		return nil, fmt.Errorf("key %s: not a key file of 'edgectl crypto keygen': %v", path, err)
	}
	if kf.KEM != xwingKEMName {
		return nil, fmt.Errorf("key %s: kem %q, want %s", path, kf.KEM, xwingKEMName)
	}
	if len(kf.Private) == 0 {
		return nil, fmt.Errorf("key %s holds no private key (a public-key file?)", path)
	}
	sk, err := pqcrypto.NewXWingKeyFromSeed(kf.Private)
	clear(kf.Private)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	if kf.Public != nil && !bytes.Equal(kf.Public, sk.Public().Bytes()) {
		return nil, fmt.Errorf("key %s: its public key does not belong to its private key", path)
	}
	return sk, nil
}

// aeadSuite picks the X-Wing suite for an --aead value.
func aeadSuite(name string) (*pqcrypto.Suite, error) {
	switch strings.ToLower(name) {
	case "aes-256-gcm", "aes256gcm", "aes":
		return pqcrypto.LookupSuite(pqcrypto.SuiteXWingAES256GCM)
	case "chacha20-poly1305", "chacha20poly1305", "chacha":
		return pqcrypto.LookupSuite(pqcrypto.SuiteXWingChaCha20Poly1305)
	}
	return nil, cli.Usagef("--aead %q: want aes-256-gcm or chacha20-poly1305", name)
}

// suiteByIDs finds the X-Wing suite with these HPKE identifiers.
func suiteByIDs(kem, kdf, aead uint16) (*pqcrypto.Suite, error) {
	for _, name := range pqcrypto.SuiteNames() {
		s, err := pqcrypto.LookupSuite(name)
		if err != nil || s.Mode() != pqcrypto.ModeRecipient {
			continue
		}
		if s.KEMID() == kem && s.KDFID() == kdf && s.AEADID() == aead {
			if kem != pqcrypto.XWing().ID() {
				break
			}
			return s, nil
		}
	}
	return nil, fmt.Errorf("HPKE suite kem_id %#04x kdf_id %#04x aead_id %#04x is not supported: want kem_id %#04x (X-Wing), kdf_id 0x0001 (HKDF-SHA256), aead_id 0x0002 (AES-256-GCM) or 0x0003 (ChaCha20-Poly1305)",
		kem, kdf, aead, pqcrypto.XWing().ID())
}

func (a *app) newCryptoSealCmd() *cobra.Command {
	var (
		recipient, in, outFile string
		info, aad, aead        string
		asJSON                 bool
	)
	c := &cobra.Command{
		Use:   "seal --recipient PUBFILE [--json] [--info TEXT] [--aad TEXT] [--in FILE] [--out FILE]",
		Short: "Encrypt to an X-Wing public key (binary envelope, or standard HPKE as --json)",
		Long: `seal encrypts its input to the X-Wing public key in PUBFILE (a file of
'crypto keygen', an agent record of 'edgectl agents show --json', or the raw
or base64 public key).

Without --json the output is an edgefleet pqcrypto recipient envelope
(binary; not written to a terminal). --aad binds extra data to it; --info is
refused there, since the envelope binds its own header as the HPKE info.

With --json the output is single-shot RFC 9180 HPKE (SealBase with info
--info and aad --aad) as JSON: kem_id (25722 = 0x647a, X-Wing), kdf_id
(1, HKDF-SHA256), aead_id (2 AES-256-GCM or 3 ChaCha20-Poly1305), info, aad,
enc (1120 bytes) and ciphertext, binary fields in standard base64.`,
		Example: `  edgectl crypto seal --recipient me.pub --in notes.txt --out notes.env
  echo hello | edgectl crypto seal --recipient me.pub --json --info app-v1 --aad record-42`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if recipient == "" {
				return cli.Usagef("seal needs --recipient PUBFILE")
			}
			if !asJSON && c.Flags().Changed("info") {
				return cli.Usagef("--info applies to --json output; the binary envelope binds its own header as the HPKE info (use --aad to bind your data)")
			}
			suite, err := aeadSuite(aead)
			if err != nil {
				return err
			}
			pub, err := readRecipient(recipient)
			if err != nil {
				return err
			}
			pt, err := readInput(c, in, maxCryptoInput)
			if err != nil {
				return err
			}
			defer clear(pt)
			if !asJSON {
				env, err := pqcrypto.SealToRecipient(nil, pqcrypto.RecipientKey{PublicKey: pub, KeyVersion: 1}, pt,
					&pqcrypto.SealOptions{Suite: suite.Name(), AAD: []byte(aad), Rand: cryptoRand})
				if err != nil {
					return err
				}
				return writeOutput(c, outFile, env, true)
			}
			enc, ct, err := suite.Seal(cryptoRand, pub, []byte(info), []byte(aad), pt)
			if err != nil {
				return err
			}
			data, err := json.MarshalIndent(hpkeSealed{
				KEMID: suite.KEMID(), KDFID: suite.KDFID(), AEADID: suite.AEADID(),
				Info: []byte(info), AAD: []byte(aad), Enc: enc, Ciphertext: ct,
			}, "", "  ")
			if err != nil {
				return err
			}
			return writeOutput(c, outFile, append(data, '\n'), false)
		},
	}
	f := c.Flags()
	f.StringVar(&recipient, "recipient", "", "X-Wing public key file to seal to")
	f.BoolVar(&asJSON, "json", false, "write standard single-shot HPKE as JSON instead of the binary envelope")
	f.StringVar(&info, "info", "", "HPKE info string (--json only)")
	f.StringVar(&aad, "aad", "", "associated data bound to the ciphertext")
	f.StringVar(&aead, "aead", "aes-256-gcm", "AEAD: aes-256-gcm or chacha20-poly1305")
	f.StringVar(&in, "in", "", "read the plaintext from this file (default stdin)")
	f.StringVar(&outFile, "out", "", "write the output here, mode 0600 (default stdout)")
	return c
}

func (a *app) newCryptoOpenCmd() *cobra.Command {
	var (
		keyPath, in, outFile string
		info, aad            string
	)
	c := &cobra.Command{
		Use:   "open --key FILE [--aad TEXT] [--in FILE] [--out FILE]",
		Short: "Decrypt what 'crypto seal' produced (binary envelope or --json HPKE)",
		Long: `open decrypts a binary envelope or the --json HPKE output of 'crypto seal'
with the private key in FILE (from 'crypto keygen'); the form is recognised
by its first byte. A binary envelope needs --aad when it was sealed with
one. The JSON form carries its info and aad; --info or --aad, when given,
must equal them. Nothing is written unless the whole input authenticates.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if keyPath == "" {
				return cli.Usagef("open needs --key FILE")
			}
			sk, err := readPrivateKey(keyPath)
			if err != nil {
				return err
			}
			data, err := readInput(c, in, maxCryptoInput)
			if err != nil {
				return err
			}
			var pt []byte
			if t := bytes.TrimSpace(data); len(t) > 0 && t[0] == '{' {
				var wantInfo, wantAAD *string
				if c.Flags().Changed("info") {
					wantInfo = &info
				}
				if c.Flags().Changed("aad") {
					wantAAD = &aad
				}
				pt, err = openHPKEJSON(sk, t, wantInfo, wantAAD)
			} else {
				if c.Flags().Changed("info") {
					return cli.Usagef("--info applies to the JSON form; this input is a binary envelope")
				}
				pt, err = openEnvelope(sk, data, []byte(aad))
			}
			if err != nil {
				return err
			}
			defer clear(pt)
			return writeOutput(c, outFile, pt, false)
		},
	}
	f := c.Flags()
	f.StringVar(&keyPath, "key", "", "X-Wing key file of 'crypto keygen'")
	f.StringVar(&info, "info", "", "expected HPKE info (JSON form)")
	f.StringVar(&aad, "aad", "", "associated data the input was sealed with")
	f.StringVar(&in, "in", "", "read the sealed input from this file (default stdin)")
	f.StringVar(&outFile, "out", "", "write the plaintext here, mode 0600 (default stdout)")
	return c
}

func openEnvelope(sk *pqcrypto.PrivateKey, env, aad []byte) ([]byte, error) {
	h, _, err := pqcrypto.ParseHeader(env)
	if err != nil {
		return nil, fmt.Errorf("input is neither HPKE JSON nor an envelope: %w", err)
	}
	if h.Mode != pqcrypto.ModeRecipient {
		return nil, fmt.Errorf("the envelope is sealed under a %s key (key %q v%d), not to a public key: the key service opens it", h.Mode, h.KeyID, h.KeyVersion)
	}
	fp := sk.Public().Fingerprint()
	if h.KeyID != fp {
		return nil, fmt.Errorf("the envelope is sealed to key %s; the key file holds %s", h.KeyID, fp)
	}
	pt, _, err := pqcrypto.Open(nil, env, &pqcrypto.Keys{
		RecipientID: h.RecipientID, PrivateKey: pqcrypto.PrivateKeyFor(fp, h.KeyVersion, sk), AAD: aad,
	})
	if errors.Is(err, pqcrypto.ErrAuthFailed) {
		return nil, fmt.Errorf("%w (wrong --aad, or the envelope was altered)", err)
	}
	return pt, err
}

// openHPKEJSON opens the --json form of seal; wantInfo and wantAAD, when
// not nil, must equal what the input records.
func openHPKEJSON(sk *pqcrypto.PrivateKey, data []byte, wantInfo, wantAAD *string) ([]byte, error) {
	var s hpkeSealed
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("input is not the JSON of 'crypto seal --json': %v", err)
	}
	if dec.More() {
		return nil, errors.New("input has data after the JSON object")
	}
	if s.Enc == nil || s.Ciphertext == nil {
		return nil, errors.New("input JSON lacks enc or ciphertext")
	}
	if wantInfo != nil && *wantInfo != string(s.Info) {
		return nil, fmt.Errorf("--info %q differs from the info the input was sealed with (%q)", *wantInfo, s.Info)
	}
	if wantAAD != nil && *wantAAD != string(s.AAD) {
		return nil, fmt.Errorf("--aad %q differs from the aad the input was sealed with (%q)", *wantAAD, s.AAD)
	}
	suite, err := suiteByIDs(s.KEMID, s.KDFID, s.AEADID)
	if err != nil {
		return nil, err
	}
	pt, err := suite.Open(sk, s.Enc, s.Info, s.AAD, s.Ciphertext)
	if err != nil {
		return nil, fmt.Errorf("HPKE open failed (another recipient's key, or altered input): %w", err)
	}
	return pt, nil
}
