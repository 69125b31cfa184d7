package pqcrypto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Writer seals a stream into an envelope written to an underlying
// io.Writer. The header is written by the constructor, each full chunk as soon
// as it is known not to be the last, and the final chunk by Close. Not safe
// for concurrent use. Streams cannot be signed (use SealWithDataKey or
// SealToRecipient with SealOptions.Signer).
type Writer struct {
	w         io.Writer
	header    *Header
	cc        *chunkCipher
	chunkSize int
	buf       []byte // pending plaintext, at most chunkSize bytes
	out       []byte // chunk word + sealed chunk
	err       error
	closed    bool
}

// NewDataKeyWriter starts a data-key envelope on w.
func NewDataKeyWriter(w io.Writer, key *DataKey, opt *SealOptions) (*Writer, error) {
	o := opt.orDefault()
	if err := streamable(o); err != nil {
		return nil, err
	}
	s, err := setupDataKey(nil, key, o)
	if err != nil {
		return nil, err
	}
	return newWriter(w, s)
}

// NewRecipientWriter starts an envelope sealed to a recipient's public key on w.
func NewRecipientWriter(w io.Writer, to RecipientKey, opt *SealOptions) (*Writer, error) {
	o := opt.orDefault()
	if err := streamable(o); err != nil {
		return nil, err
	}
	s, err := setupRecipient(nil, to, o)
	if err != nil {
		return nil, err
	}
	return newWriter(w, s)
}

func streamable(o *SealOptions) error {
	if o.Signer != nil || o.SenderID != "" {
		return fmt.Errorf("pqcrypto: streams cannot be signed; seal whole envelopes to sign: %w", ErrUnsupported)
	}
	return nil
}

func newWriter(w io.Writer, s sealSetup) (*Writer, error) {
	if w == nil {
		return nil, fmt.Errorf("pqcrypto: nil writer: %w", ErrUnsupported)
	}
	cs := int(s.header.ChunkSize)
	if _, err := w.Write(s.out); err != nil {
		return nil, fmt.Errorf("pqcrypto: writing envelope header: %w", err)
	}
	return &Writer{
		w: w, header: s.header, cc: s.cc, chunkSize: cs,
		buf: make([]byte, 0, cs),
		out: make([]byte, 0, 4+cs+tagSize),
	}, nil
}

// Header returns the envelope header.
func (w *Writer) Header() *Header { return w.header }

// Write seals p. Chunks are emitted once full and followed by more data.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.closed {
		return 0, fmt.Errorf("pqcrypto: write after Close: %w", ErrUnsupported)
	}
	n := 0
	for len(p) > 0 {
		if len(w.buf) == w.chunkSize {
			// More data follows, so the pending full chunk is not final.
			if err := w.emit(w.buf, false); err != nil {
				return n, err
			}
			w.buf = w.buf[:0]
		}
		if len(w.buf) == 0 && len(p) > w.chunkSize {
			// Seal straight from p: a full chunk with more data after it.
			if err := w.emit(p[:w.chunkSize], false); err != nil {
				return n, err
			}
			p = p[w.chunkSize:]
			n += w.chunkSize
			continue
		}
		k := copy(w.buf[len(w.buf):w.chunkSize], p)
		w.buf = w.buf[:len(w.buf)+k]
		p = p[k:]
		n += k
	}
	return n, nil
}

func (w *Writer) emit(pt []byte, final bool) error {
	out, err := w.cc.seal(w.out[:0], pt, final)
	if err != nil {
		w.err = err
		return err
	}
	if _, err := w.w.Write(out); err != nil {
		w.err = fmt.Errorf("pqcrypto: writing chunk %d: %w", w.cc.counter-1, err)
		return w.err
	}
	return nil
}

// Close seals the pending data as the final chunk. It does not close the
// underlying writer. Without Close the envelope is truncated and will not
// open.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return nil
	}
	w.closed = true
	err := w.emit(w.buf, true)
	clear(w.buf)
	w.buf = w.buf[:0]
	return err
}

// Reader opens an envelope from an io.Reader chunk by chunk. It reads
// exactly the envelope's bytes from the underlying reader and nothing after
// them. Plaintext of a chunk is released only after that chunk
// authenticates, but a stream cut short or tampered with after some chunks
// returns an error only when reached: treat the data as complete only once
// Read has returned io.EOF. Not safe for concurrent use.
type Reader struct {
	r      io.Reader
	header *Header
	cc     *chunkCipher
	ct     []byte // chunk buffer, decrypted in place
	pt     []byte // plaintext not yet returned
	done   bool
	err    error
}

// NewReader reads and checks the header from r and finds the key it names.
// Signed envelopes cannot be streamed (ErrUnsupported): open them with Open.
func NewReader(r io.Reader, keys *Keys) (*Reader, error) {
	if keys == nil {
		keys = &Keys{}
	}
	h, hdr, err := readHeader(r)
	if err != nil {
		return nil, err
	}
	if err := checkRecipientAndSigner(h, keys, true); err != nil {
		return nil, err
	}
	cc, err := openSetup(h, hdr, keys)
	if err != nil {
		return nil, err
	}
	return &Reader{r: r, header: h, cc: cc, ct: make([]byte, 0, int(h.ChunkSize)+tagSize)}, nil
}

// Header returns the envelope header.
func (r *Reader) Header() *Header { return r.header }

// Read returns authenticated plaintext, then io.EOF after the final chunk.
func (r *Reader) Read(p []byte) (int, error) {
	for len(r.pt) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.done {
			return 0, io.EOF
		}
		if err := r.next(); err != nil {
			clear(r.ct[:cap(r.ct)])
			r.err = err
			return 0, err
		}
	}
	n := copy(p, r.pt)
	r.pt = r.pt[n:]
	return n, nil
}

func (r *Reader) next() error {
	var word [4]byte
	if _, err := io.ReadFull(r.r, word[:]); err != nil {
		return readErr(err, "chunk %d header: stream ended before the final chunk", r.cc.counter)
	}
	size, final, err := parseWord(binary.BigEndian.Uint32(word[:]), r.header.ChunkSize, r.cc.counter == 0)
	if err != nil {
		return err
	}
	ct := r.ct[:size+tagSize]
	if _, err := io.ReadFull(r.r, ct); err != nil {
		return readErr(err, "chunk %d: stream ended inside the chunk", r.cc.counter)
	}
	pt, err := r.cc.open(ct[:0], ct, final)
	if err != nil {
		return err
	}
	r.pt = pt
	r.done = final
	return nil
}

func readErr(err error, format string, args ...any) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("pqcrypto: "+format+": %w", append(args, ErrTruncated)...)
	}
	return fmt.Errorf("pqcrypto: reading envelope: %w", err)
}
