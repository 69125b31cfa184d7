package fedlearn

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

// The model file format, version 1. Integers are big-endian except the
// weights, which are little-endian IEEE 754 float64:
//
//	magic "EFMODEL\x00" (8) | format version (2) | header length H (4) |
//	weight count N (4) | header: H bytes of JSON | weights: 8·N bytes |
//	digest: SHA-256 of every byte before it (32) |
//	optional signature: "EFSG" (4) | len(signer) (1) | signer |
//	                    ML-DSA-65 signature (3309)
//
// The JSON header holds the model's name and version, its architecture, the
// names and shapes of the weight tensors (in the order their values follow),
// the feature schema with its normalisation and imputation, the label
// names, and the training metadata. The signature, added by the control
// plane's model registry, covers the digest and the signer id under the
// ML-DSA context SignatureContext; it is outside the digest, so signing does
// not change a model's digest.
const (
	// FormatVersion is the model file format this package writes and reads.
	FormatVersion = 1
	// SignatureContext is the ML-DSA context string of model signatures.
	SignatureContext = "edgefleet/model/v1"
	// MaxHeaderSize bounds a model file's JSON header (4 MiB).
	MaxHeaderSize = 4 << 20
	// MaxNameLen bounds a model's name, version and signer id.
	MaxNameLen = 64
	// MaxLabelLen bounds one label name.
	MaxLabelLen = 256
)

const (
	fileMagic    = "EFMODEL\x00"
	sigMagic     = "EFSG"
	preludeSize  = len(fileMagic) + 2 + 4 + 4
	digestSize   = sha256.Size
	maxSignerLen = 255
)

// MaxFileSize is the largest model file: the largest header, MaxParams
// weights, the digest and a signature.
const MaxFileSize = preludeSize + MaxHeaderSize + 8*MaxParams + digestSize + len(sigMagic) + 1 + maxSignerLen + pqcrypto.SignatureSize

// Model file errors. Every error Decode, Sign and Verify return for bad
// input wraps one of these or ErrArch, ErrWeights, ErrSchema, and names what
// was wrong.
var (
	// ErrTruncated reports a file shorter than its own lengths say.
	ErrTruncated = errors.New("fedlearn: model file truncated")
	// ErrNotModel reports bytes that do not start with the model file magic.
	ErrNotModel = errors.New("fedlearn: not a model file")
	// ErrFormatVersion reports a format version this build does not read.
	ErrFormatVersion = errors.New("fedlearn: unsupported model file format version")
	// ErrDigest reports content whose SHA-256 differs from the stored digest.
	ErrDigest = errors.New("fedlearn: model file digest mismatch")
	// ErrModelFile reports any other malformed field: a length out of range,
	// a header that is not valid JSON, a bad name or label, trailing bytes.
	ErrModelFile = errors.New("fedlearn: malformed model file")
	// ErrUnsigned reports a file without a signature where one is required.
	ErrUnsigned = errors.New("fedlearn: model file is not signed")
	// ErrBadSignature reports a signature that does not verify with the
	// given key. It also matches pqcrypto.ErrBadSignature.
	ErrBadSignature = fmt.Errorf("fedlearn: model file signature does not verify: %w", pqcrypto.ErrBadSignature)
)

// Training is how a model was made.
type Training struct {
	// Dataset names the data: a data set ("wisdm") or a device's series.
	Dataset string `json:"dataset,omitempty"`
	// From and To bound the training examples' times, when they come from a
	// time series.
	From time.Time `json:"from,omitzero"`
	To   time.Time `json:"to,omitzero"`
	// Epochs completed and the seed of initialisation and shuffling.
	Epochs int    `json:"epochs"`
	Seed   uint64 `json:"seed"`
	// Examples used for training and held out for evaluation.
	Examples int `json:"examples,omitempty"`
	HeldOut  int `json:"held_out,omitempty"`
	// Loss is the last epoch's mean training loss; Accuracy is on the
	// held-out examples (0-1).
	Loss     float64 `json:"loss"`
	Accuracy float64 `json:"accuracy"`
	// Params are free-form hyperparameters ("optimizer": "adam", ...).
	Params map[string]string `json:"params,omitempty"`
	// Created is when the file was made.
	Created time.Time `json:"created"`
}

// File is a model as stored and shipped: everything needed to serve it and
// to know where it came from.
type File struct {
	Name     string
	Version  string
	Arch     Arch
	Weights  Weights
	Schema   Schema
	Labels   []string
	Training Training

	// Digest is the SHA-256 of the encoded content (set by Decode and
	// Encode).
	Digest [32]byte
	// SignerID and Signature are set by Decode when the file carries a
	// signature. Decode does not check it: only a File returned by Verify
	// has a verified signature.
	SignerID  string
	Signature []byte
}

// DigestHex is the digest in lower-case hex.
func (f *File) DigestHex() string { return hex.EncodeToString(f.Digest[:]) }

// tensorHeader describes one weight tensor in the header.
type tensorHeader struct {
	Name  string `json:"name"`
	Shape []int  `json:"shape"`
}

type fileHeader struct {
	Name     string         `json:"name"`
	Version  string         `json:"version"`
	Arch     Arch           `json:"arch"`
	Tensors  []tensorHeader `json:"tensors"`
	Schema   Schema         `json:"schema"`
	Labels   []string       `json:"labels"`
	Training Training       `json:"training"`
}

// Validate checks everything Decode checks of a decoded file's content:
// name and version, architecture, weights (names, shapes, finiteness),
// schema (and that it has one feature per input), labels (one per class,
// distinct, non-empty) and training metadata.
func (f *File) Validate() error {
	if err := checkName("name", f.Name, false); err != nil {
		return err
	}
	if err := checkName("version", f.Version, true); err != nil {
		return err
	}
	if err := f.Arch.Validate(); err != nil {
		return err
	}
	if err := f.Weights.Check(f.Arch); err != nil {
		return err
	}
	if err := f.Schema.Validate(); err != nil {
		return err
	}
	if len(f.Schema.Features) != f.Arch.Inputs {
		return fmt.Errorf("%w: %d features, architecture %s takes %d inputs", ErrSchema, len(f.Schema.Features), f.Arch, f.Arch.Inputs)
	}
	if len(f.Labels) != f.Arch.Classes {
		return fmt.Errorf("%w: %d label names, architecture has %d classes", ErrModelFile, len(f.Labels), f.Arch.Classes)
	}
	seen := make(map[string]bool, len(f.Labels))
	for i, l := range f.Labels {
		if l == "" || len(l) > MaxLabelLen {
			return fmt.Errorf("%w: label %d is empty or longer than %d bytes", ErrModelFile, i, MaxLabelLen)
		}
		if seen[l] {
			return fmt.Errorf("%w: label %q appears twice", ErrModelFile, l)
		}
		seen[l] = true
	}
	t := f.Training
	if t.Epochs < 0 || t.Examples < 0 || t.HeldOut < 0 {
		return fmt.Errorf("%w: training: negative epochs, examples or held-out count", ErrModelFile)
	}
	if math.IsNaN(t.Loss) || math.IsInf(t.Loss, 0) {
		return fmt.Errorf("%w: training loss is %v", ErrModelFile, t.Loss)
	}
	if !(t.Accuracy >= 0 && t.Accuracy <= 1) {
		return fmt.Errorf("%w: training accuracy %v is not within 0-1", ErrModelFile, t.Accuracy)
	}
	if t.Created.IsZero() {
		return fmt.Errorf("%w: training: no creation time", ErrModelFile)
	}
	return nil
}

// checkName accepts 1-MaxNameLen bytes of [A-Za-z0-9._-] (and '+' when
// plus is set) starting with a letter or digit: safe in URLs, file names
// and metric labels.
func checkName(what, s string, plus bool) error {
	if s == "" || len(s) > MaxNameLen {
		return fmt.Errorf("%w: model %s %q must be 1-%d bytes", ErrModelFile, what, s, MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !ok && i > 0 {
			ok = c == '.' || c == '_' || c == '-' || plus && c == '+'
		}
		if !ok {
			return fmt.Errorf("%w: model %s %q: character %q at %d (want letters, digits, '.', '_', '-', starting with a letter or digit)", ErrModelFile, what, s, c, i)
		}
	}
	return nil
}

// CheckName reports whether s is a valid model name.
func CheckName(s string) error { return checkName("name", s, false) }

// CheckVersion reports whether s is a valid model version.
func CheckVersion(s string) error { return checkName("version", s, true) }

// Encode validates f and returns its unsigned encoding. It sets f.Digest
// and clears any signature fields.
func (f *File) Encode() ([]byte, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	h := fileHeader{Name: f.Name, Version: f.Version, Arch: f.Arch, Schema: f.Schema, Labels: f.Labels, Training: f.Training}
	for _, t := range f.Weights {
		h.Tensors = append(h.Tensors, tensorHeader{Name: t.Name, Shape: t.Shape})
	}
	hj, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("fedlearn: encoding model header: %w", err)
	}
	if len(hj) > MaxHeaderSize {
		return nil, fmt.Errorf("%w: header of %d bytes exceeds %d", ErrModelFile, len(hj), MaxHeaderSize)
	}
	n := f.Weights.Len()
	b := make([]byte, 0, preludeSize+len(hj)+8*n+digestSize)
	b = append(b, fileMagic...)
	b = binary.BigEndian.AppendUint16(b, FormatVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(len(hj)))
	b = binary.BigEndian.AppendUint32(b, uint32(n))
	b = append(b, hj...)
	for _, t := range f.Weights {
		for _, v := range t.Data {
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
		}
	}
	f.Digest = sha256.Sum256(b)
	f.SignerID, f.Signature = "", nil
	return append(b, f.Digest[:]...), nil
}

// layout is where the parts of an encoded file lie.
type layout struct {
	headerLen int
	count     int
	digestAt  int // offset of the digest = length of the digested content
	sigAt     int // offset of the signature block (= digestAt+32)
}

// parseLayout checks magic, format version, lengths and the digest.
func parseLayout(b []byte) (layout, error) {
	if len(b) < len(fileMagic) {
		if bytes.HasPrefix([]byte(fileMagic), b) {
			return layout{}, fmt.Errorf("%w: %d bytes, the prelude alone is %d", ErrTruncated, len(b), preludeSize)
		}
		return layout{}, fmt.Errorf("%w: %d bytes without the magic", ErrNotModel, len(b))
	}
	if string(b[:len(fileMagic)]) != fileMagic {
		return layout{}, fmt.Errorf("%w: magic is %q, want %q", ErrNotModel, b[:len(fileMagic)], fileMagic)
	}
	if len(b) < preludeSize {
		return layout{}, fmt.Errorf("%w: %d bytes, the prelude alone is %d", ErrTruncated, len(b), preludeSize)
	}
	if len(b) > MaxFileSize {
		return layout{}, fmt.Errorf("%w: %d bytes exceeds the limit of %d", ErrModelFile, len(b), MaxFileSize)
	}
	if v := binary.BigEndian.Uint16(b[8:]); v != FormatVersion {
		return layout{}, fmt.Errorf("%w: version %d (this build reads %d)", ErrFormatVersion, v, FormatVersion)
	}
	hl := binary.BigEndian.Uint32(b[10:])
	n := binary.BigEndian.Uint32(b[14:])
	if hl == 0 || hl > MaxHeaderSize {
		return layout{}, fmt.Errorf("%w: header length %d (want 1-%d)", ErrModelFile, hl, MaxHeaderSize)
	}
	if n > MaxParams {
		return layout{}, fmt.Errorf("%w: %d weights exceeds the limit of %d", ErrModelFile, n, MaxParams)
	}
	l := layout{headerLen: int(hl), count: int(n)}
	l.digestAt = preludeSize + l.headerLen + 8*l.count
	l.sigAt = l.digestAt + digestSize
	if len(b) < l.sigAt {
		return layout{}, fmt.Errorf("%w: %d bytes, header of %d and %d weights need %d", ErrTruncated, len(b), hl, n, l.sigAt)
	}
	sum := sha256.Sum256(b[:l.digestAt])
	if !bytes.Equal(sum[:], b[l.digestAt:l.sigAt]) {
		return layout{}, fmt.Errorf("%w: stored %x, content hashes to %x", ErrDigest, b[l.digestAt:l.sigAt], sum)
	}
	return l, nil
}

// Decode reads and checks a model file: magic, format version, lengths,
// digest, then the header (architecture limits, tensor names and shapes,
// schema against the inputs, labels against the classes), then the weights
// (every value finite). A signature block, if present, is parsed but not
// verified; use Verify for that. Decode never panics, and allocates only in
// proportion to len(b).
func Decode(b []byte) (*File, error) {
	l, err := parseLayout(b)
	if err != nil {
		return nil, err
	}
	var h fileHeader
	dec := json.NewDecoder(bytes.NewReader(b[preludeSize : preludeSize+l.headerLen]))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrModelFile, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: header: data after the JSON object", ErrModelFile)
	}
	if err := h.Arch.Validate(); err != nil {
		return nil, err
	}
	// Compare the header's tensors with the architecture's before
	// allocating any weights.
	layers := h.Arch.Layers()
	if len(h.Tensors) != 2*len(layers) {
		return nil, fmt.Errorf("%w: header lists %d tensors, architecture %s needs %d", ErrWeights, len(h.Tensors), h.Arch, 2*len(layers))
	}
	for i, t := range h.Tensors {
		l := layers[i/2]
		want := tensorHeader{Name: fmt.Sprintf("w%d", i/2), Shape: []int{l[0], l[1]}}
		if i%2 == 1 {
			want = tensorHeader{Name: fmt.Sprintf("b%d", i/2), Shape: []int{l[1]}}
		}
		if t.Name != want.Name || !sameShape(t.Shape, want.Shape) {
			return nil, fmt.Errorf("%w: tensor %d is %q %v, architecture %s needs %q %v", ErrWeights, i, t.Name, t.Shape, h.Arch, want.Name, want.Shape)
		}
	}
	if np := h.Arch.NumParams(); np != l.count {
		return nil, fmt.Errorf("%w: file holds %d weights, architecture %s has %d", ErrWeights, l.count, h.Arch, np)
	}
	f := &File{Name: h.Name, Version: h.Version, Arch: h.Arch, Schema: h.Schema, Labels: h.Labels, Training: h.Training}
	copy(f.Digest[:], b[l.digestAt:l.sigAt])
	f.Weights = NewWeights(h.Arch)
	off := preludeSize + l.headerLen
	for _, t := range f.Weights {
		for j := range t.Data {
			t.Data[j] = math.Float64frombits(binary.LittleEndian.Uint64(b[off:]))
			off += 8
		}
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	if err := parseSignature(f, b[l.sigAt:]); err != nil {
		return nil, err
	}
	return f, nil
}

// parseSignature reads the optional signature block after the digest.
func parseSignature(f *File, rest []byte) error {
	if len(rest) == 0 {
		return nil
	}
	if len(rest) < len(sigMagic)+1 {
		return fmt.Errorf("%w: %d bytes after the digest are neither nothing nor a signature block", ErrTruncated, len(rest))
	}
	if string(rest[:len(sigMagic)]) != sigMagic {
		return fmt.Errorf("%w: %d trailing bytes after the digest (no signature magic)", ErrModelFile, len(rest))
	}
	n := int(rest[len(sigMagic)])
	rest = rest[len(sigMagic)+1:]
	if n == 0 {
		return fmt.Errorf("%w: signature block with an empty signer id", ErrModelFile)
	}
	if len(rest) < n+pqcrypto.SignatureSize {
		return fmt.Errorf("%w: signature block needs %d bytes, has %d", ErrTruncated, n+pqcrypto.SignatureSize, len(rest))
	}
	if len(rest) > n+pqcrypto.SignatureSize {
		return fmt.Errorf("%w: %d trailing bytes after the signature", ErrModelFile, len(rest)-n-pqcrypto.SignatureSize)
	}
	f.SignerID = string(rest[:n])
	f.Signature = append([]byte(nil), rest[n:]...)
	return nil
}

// signedMessage is what a model signature covers: the digest and the
// signer id.
func signedMessage(digest []byte, signerID string) []byte {
	m := make([]byte, 0, len(digest)+1+len(signerID))
	m = append(m, digest...)
	m = append(m, byte(len(signerID)))
	return append(m, signerID...)
}

// Sign checks the model file b (as Decode does) and returns it signed by k
// as signerID (1-255 bytes), replacing any signature it had.
func Sign(b []byte, signerID string, k *pqcrypto.SigningKey) ([]byte, error) {
	if k == nil {
		return nil, errors.New("fedlearn: sign model: no signing key")
	}
	if signerID == "" || len(signerID) > maxSignerLen {
		return nil, fmt.Errorf("%w: signer id must be 1-%d bytes, got %d", ErrModelFile, maxSignerLen, len(signerID))
	}
	if _, err := Decode(b); err != nil {
		return nil, err
	}
	l, _ := parseLayout(b) // cannot fail: Decode succeeded
	sig, err := k.Sign(SignatureContext, signedMessage(b[l.digestAt:l.sigAt], signerID))
	if err != nil {
		return nil, fmt.Errorf("fedlearn: sign model: %w", err)
	}
	out := make([]byte, 0, l.sigAt+len(sigMagic)+1+len(signerID)+len(sig))
	out = append(out, b[:l.sigAt]...)
	out = append(out, sigMagic...)
	out = append(out, byte(len(signerID)))
	out = append(out, signerID...)
	return append(out, sig...), nil
}

// Verify decodes b and checks its signature with vk. A file without a
// signature is ErrUnsigned; one whose signature does not verify is
// ErrBadSignature. The returned File's SignerID is then trustworthy.
func Verify(b []byte, vk *pqcrypto.VerifyingKey) (*File, error) {
	if vk == nil {
		return nil, errors.New("fedlearn: verify model: no verifying key")
	}
	f, err := Decode(b)
	if err != nil {
		return nil, err
	}
	if f.Signature == nil {
		return nil, fmt.Errorf("%w: model %s version %s", ErrUnsigned, f.Name, f.Version)
	}
	if err := vk.Verify(SignatureContext, signedMessage(f.Digest[:], f.SignerID), f.Signature); err != nil {
		return nil, fmt.Errorf("%w: model %s version %s, signer %q, key %s", ErrBadSignature, f.Name, f.Version, f.SignerID, vk.Fingerprint())
	}
	return f, nil
}
