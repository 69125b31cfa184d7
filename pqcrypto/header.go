package pqcrypto

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Envelope format constants.
const (
	// FormatVersion is the envelope format version this package writes.
	FormatVersion = 1
	// DefaultChunkSize is the plaintext size of each chunk unless the sealer
	// picks another: 64 KiB.
	DefaultChunkSize = 64 << 10
	// MaxChunkSize bounds the chunk size an envelope may declare (4 MiB), and
	// with it the memory a reader allocates for hostile input.
	MaxChunkSize = 4 << 20
	// MaxIDSize bounds key ids, recipient ids and sender ids.
	MaxIDSize = 255

	envelopeMagic = "EFE"
	saltSize      = 32
	flagSigned    = 0x01
	// magic(3) version(1) mode(1) flags(1) suite(2) chunk size(4) key version(4) key id length(1)
	fixedHeaderSize = 17
)

// Header is the cleartext header of an envelope. All of it is bound as AEAD
// associated data (and, for ModeRecipient, as the HPKE info string), so a
// change to any field makes opening fail.
//
// Byte layout, version 1 (integers big-endian):
//
//	offset size  field
//	0      3     magic "EFE"
//	3      1     format version (1)
//	4      1     mode: 1 = recipient (HPKE), 2 = data key
//	5      1     flags: bit 0 = signed; other bits zero
//	6      2     suite id (see SuiteByID)
//	8      4     chunk size: plaintext bytes per chunk, 1..MaxChunkSize
//	12     4     key version
//	16     1     key id length k, 1..255
//	17     k     key id
//	       1     recipient id length r, 0..255
//	       r     recipient id
//	       1     sender id length s, 1..255     (signed only)
//	       s     sender id                      (signed only)
//	       n     recipient mode: HPKE enc (n = KEM's enc size, 1120 for X-Wing)
//	             data-key mode: random salt (n = 32)
//
// The body follows the header: chunks of
//
//	4     chunk word: bit 31 = final chunk, bits 0..30 = plaintext length
//	len+16  AEAD ciphertext of the chunk (tag included)
//
// Every chunk but the last carries exactly chunk-size plaintext bytes, the
// last (final bit set) carries 0..chunk-size bytes (0 only if it is the only
// chunk). A signed envelope ends with a 3309-byte ML-DSA-65 signature over all
// bytes before it.
type Header struct {
	Version     uint8
	Mode        Mode
	Suite       *Suite
	ChunkSize   uint32
	KeyID       string
	KeyVersion  uint32
	RecipientID string
	SenderID    string // set exactly when the envelope is signed
	Enc         []byte // ModeRecipient: HPKE encapsulated key
	Salt        []byte // ModeDataKey: per-message key derivation salt

	tail [saltSize]byte // backing store for Salt
}

// Signed reports whether the envelope carries an ML-DSA signature.
func (h *Header) Signed() bool { return h.SenderID != "" }

// Size is the encoded length of the header.
func (h *Header) Size() int {
	n := fixedHeaderSize + len(h.KeyID) + 1 + len(h.RecipientID) + len(h.Enc) + len(h.Salt)
	if h.Signed() {
		n += 1 + len(h.SenderID)
	}
	return n
}

func (h *Header) validate() error {
	if h.Version != FormatVersion {
		return fmt.Errorf("pqcrypto: header version %d: %w", h.Version, ErrUnsupportedVersion)
	}
	if h.Suite == nil {
		return fmt.Errorf("pqcrypto: header has no suite: %w", ErrUnknownSuite)
	}
	if h.Mode != h.Suite.mode {
		return fmt.Errorf("pqcrypto: suite %s cannot seal %s envelopes: %w", h.Suite.name, h.Mode, ErrUnknownSuite)
	}
	if h.ChunkSize == 0 || h.ChunkSize > MaxChunkSize {
		return fmt.Errorf("pqcrypto: chunk size %d outside 1..%d: %w", h.ChunkSize, MaxChunkSize, ErrMalformed)
	}
	if len(h.KeyID) == 0 || len(h.KeyID) > MaxIDSize || len(h.RecipientID) > MaxIDSize || len(h.SenderID) > MaxIDSize {
		return fmt.Errorf("pqcrypto: key id must be 1..255 bytes, recipient and sender ids at most 255: %w", ErrMalformed)
	}
	switch h.Mode {
	case ModeRecipient:
		if len(h.Enc) != h.Suite.kem.EncapsulatedKeySize() || len(h.Salt) != 0 {
			return fmt.Errorf("pqcrypto: recipient header needs a %d-byte enc and no salt: %w", h.Suite.kem.EncapsulatedKeySize(), ErrMalformed)
		}
	case ModeDataKey:
		if len(h.Salt) != saltSize || len(h.Enc) != 0 {
			return fmt.Errorf("pqcrypto: data-key header needs a %d-byte salt and no enc: %w", saltSize, ErrMalformed)
		}
	}
	return nil
}

// appendPrefix appends every header field except the trailing enc or salt.
func (h *Header) appendPrefix(b []byte) []byte {
	var flags byte
	if h.Signed() {
		flags |= flagSigned
	}
	b = append(b, envelopeMagic...)
	b = append(b, h.Version, byte(h.Mode), flags)
	b = binary.BigEndian.AppendUint16(b, h.Suite.id)
	b = binary.BigEndian.AppendUint32(b, h.ChunkSize)
	b = binary.BigEndian.AppendUint32(b, h.KeyVersion)
	b = append(b, byte(len(h.KeyID)))
	b = append(b, h.KeyID...)
	b = append(b, byte(len(h.RecipientID)))
	b = append(b, h.RecipientID...)
	if h.Signed() {
		b = append(b, byte(len(h.SenderID)))
		b = append(b, h.SenderID...)
	}
	return b
}

// AppendBinary appends the encoded header to b.
func (h *Header) AppendBinary(b []byte) ([]byte, error) {
	if err := h.validate(); err != nil {
		return nil, err
	}
	b = h.appendPrefix(b)
	b = append(b, h.Enc...)
	return append(b, h.Salt...), nil
}

// MarshalBinary encodes the header.
func (h *Header) MarshalBinary() ([]byte, error) { return h.AppendBinary(make([]byte, 0, h.Size())) }

// ParseHeader decodes the header at the start of an envelope and returns it
// with its encoded length. It checks structure only: nothing in it is
// authenticated until the envelope opens. dkms uses the key id and version to
// pick the key and to enforce minimum versions.
func ParseHeader(b []byte) (*Header, int, error) {
	h, n, _, err := parseHeader(b)
	return h, n, err
}

// parseHeader is ParseHeader that, when b is too short, also reports how many
// bytes it needs to make progress (need > len(b)), so a stream reader can
// read exactly the header and nothing after it.
func parseHeader(b []byte) (h *Header, n int, need int, err error) {
	short := func(need int) (*Header, int, int, error) {
		return nil, 0, need, fmt.Errorf("pqcrypto: envelope header: have %d bytes, need at least %d: %w", len(b), need, ErrTruncated)
	}
	m := min(len(b), len(envelopeMagic))
	if string(b[:m]) != envelopeMagic[:m] {
		return nil, 0, 0, fmt.Errorf("pqcrypto: envelope header: bad magic %x: %w", b[:m], ErrMalformed)
	}
	if len(b) < 4 {
		return short(fixedHeaderSize)
	}
	if b[3] != FormatVersion {
		return nil, 0, 0, fmt.Errorf("pqcrypto: envelope format version %d: %w", b[3], ErrUnsupportedVersion)
	}
	if len(b) < fixedHeaderSize {
		return short(fixedHeaderSize)
	}
	h = &Header{Version: b[3], Mode: Mode(b[4])}
	if h.Mode != ModeRecipient && h.Mode != ModeDataKey {
		return nil, 0, 0, fmt.Errorf("pqcrypto: envelope header: unknown mode %d: %w", b[4], ErrMalformed)
	}
	flags := b[5]
	if flags&^flagSigned != 0 {
		return nil, 0, 0, fmt.Errorf("pqcrypto: envelope header: unknown flags %#02x: %w", flags, ErrMalformed)
	}
	if h.Suite, err = SuiteByID(binary.BigEndian.Uint16(b[6:])); err != nil {
		return nil, 0, 0, err
	}
	if h.Suite.mode != h.Mode {
		return nil, 0, 0, fmt.Errorf("pqcrypto: envelope header: suite %s in a %s envelope: %w", h.Suite.name, h.Mode, ErrUnknownSuite)
	}
	h.ChunkSize = binary.BigEndian.Uint32(b[8:])
	if h.ChunkSize == 0 || h.ChunkSize > MaxChunkSize {
		return nil, 0, 0, fmt.Errorf("pqcrypto: envelope header: chunk size %d outside 1..%d: %w", h.ChunkSize, MaxChunkSize, ErrMalformed)
	}
	h.KeyVersion = binary.BigEndian.Uint32(b[12:])
	kl := int(b[16])
	if kl == 0 {
		return nil, 0, 0, fmt.Errorf("pqcrypto: envelope header: empty key id: %w", ErrMalformed)
	}
	off := fixedHeaderSize
	if len(b) < off+kl+1 {
		return short(off + kl + 1)
	}
	h.KeyID = string(b[off : off+kl])
	off += kl
	rl := int(b[off])
	off++
	if len(b) < off+rl {
		return short(off + rl)
	}
	h.RecipientID = string(b[off : off+rl])
	off += rl
	if flags&flagSigned != 0 {
		if len(b) < off+1 {
			return short(off + 1)
		}
		sl := int(b[off])
		off++
		if sl == 0 {
			return nil, 0, 0, fmt.Errorf("pqcrypto: envelope header: signed but empty sender id: %w", ErrMalformed)
		}
		if len(b) < off+sl {
			return short(off + sl)
		}
		h.SenderID = string(b[off : off+sl])
		off += sl
	}
	tail := saltSize
	if h.Mode == ModeRecipient {
		tail = h.Suite.kem.EncapsulatedKeySize()
	}
	if len(b) < off+tail {
		return short(off + tail)
	}
	if h.Mode == ModeRecipient {
		h.Enc = append([]byte(nil), b[off:off+tail]...)
	} else {
		h.Salt = h.tail[:copy(h.tail[:], b[off:off+tail])]
	}
	return h, off + tail, 0, nil
}

// readHeader reads exactly one header from r and returns it with its bytes.
func readHeader(r io.Reader) (*Header, []byte, error) {
	buf := make([]byte, 0, 64)
	need := fixedHeaderSize
	for {
		if cap(buf) < need {
			nb := make([]byte, len(buf), need+64)
			copy(nb, buf)
			buf = nb
		}
		if _, err := io.ReadFull(r, buf[len(buf):need]); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return nil, nil, fmt.Errorf("pqcrypto: envelope header: stream ended within %d bytes: %w", need, ErrTruncated)
			}
			return nil, nil, fmt.Errorf("pqcrypto: reading envelope header: %w", err)
		}
		buf = buf[:need]
		h, n, more, err := parseHeader(buf)
		if err == nil {
			return h, buf[:n], nil
		}
		if more <= len(buf) {
			return nil, nil, err
		}
		need = more
	}
}
