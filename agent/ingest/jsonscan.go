package ingest

import (
	"math"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// scanner is a small, strict JSON reader (RFC 8259) for the two payload
// shapes the decoders accept. It is hand-written rather than built on
// encoding/json because SenML needs case-sensitive keys, detection of
// duplicate and must-understand ("_"-suffixed) keys, and precise errors,
// and because it runs once per ingested message: it does not allocate
// except for strings it returns and escaped keys.
type scanner struct {
	data []byte
	pos  int
	buf  []byte // scratch for unescaping
}

// countElements counts the elements of the JSON array whose contents
// (after the opening bracket) data holds, stopping past limit: it only
// follows strings and nesting, without checking the syntax, which the
// decoder does. Malformed data yields some count; the decoder then
// refuses it either way.
func countElements(data []byte, limit int) int {
	n, depth, inStr, empty := 0, 0, false, true
	for i := 0; i < len(data); i++ {
		c := data[i]
		if inStr {
			switch c {
			case '\\':
				i++
			case '"':
				inStr = false
			}
			continue
		}
		switch c {
		case ' ', '\t', '\n', '\r':
			continue
		case '"':
			inStr = true
		case '[', '{':
			depth++
		case ']', '}':
			if depth == 0 {
				if !empty {
					n++
				}
				return n
			}
			depth--
		case ',':
			if depth == 0 {
				if n++; n > limit {
					return n
				}
			}
		}
		empty = false
	}
	if !empty {
		n++
	}
	return n
}

// maxJSONDepth bounds the nesting of values the decoders skip over.
const maxJSONDepth = 32

func (s *scanner) syntax(format string, args ...any) *DecodeError {
	e := decodeErr(ReasonSyntax, -1, "", format, args...)
	e.Msg += " at offset " + strconv.Itoa(s.pos)
	return e
}

// ws skips white space and returns the next byte (0 at the end).
func (s *scanner) ws() byte {
	for s.pos < len(s.data) {
		switch c := s.data[s.pos]; c {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return c
		}
	}
	return 0
}

func (s *scanner) atEnd() bool { return s.pos >= len(s.data) }

// expect consumes byte c after white space.
func (s *scanner) expect(c byte) error {
	if s.ws() != c || s.atEnd() {
		if s.atEnd() {
			return s.syntax("unexpected end of input, want %q", c)
		}
		return s.syntax("unexpected %q, want %q", s.data[s.pos], c)
	}
	s.pos++
	return nil
}

// str reads a JSON string at s.pos (which must be '"') and returns its
// unescaped bytes. The result aliases the input when the string has no
// escapes, else the scratch buffer: it is valid until the next call.
func (s *scanner) str() ([]byte, error) {
	if s.pos >= len(s.data) || s.data[s.pos] != '"' {
		return nil, s.syntax("want a string")
	}
	s.pos++
	start := s.pos
	// Fast path: no escapes, plain ASCII or valid UTF-8.
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		switch {
		case c == '"':
			out := s.data[start:s.pos]
			s.pos++
			return out, nil
		case c == '\\':
			return s.strSlow(start)
		case c < 0x20:
			return nil, s.syntax("control character in string")
		case c < utf8.RuneSelf:
			s.pos++
		default:
			r, n := utf8.DecodeRune(s.data[s.pos:])
			if r == utf8.RuneError && n <= 1 {
				return nil, s.syntax("invalid UTF-8 in string")
			}
			s.pos += n
		}
	}
	return nil, s.syntax("unterminated string")
}

func (s *scanner) strSlow(start int) ([]byte, error) {
	s.buf = append(s.buf[:0], s.data[start:s.pos]...)
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		switch {
		case c == '"':
			s.pos++
			return s.buf, nil
		case c < 0x20:
			return nil, s.syntax("control character in string")
		case c == '\\':
			if s.pos+1 >= len(s.data) {
				return nil, s.syntax("unterminated escape")
			}
			e := s.data[s.pos+1]
			s.pos += 2
			switch e {
			case '"', '\\', '/':
				s.buf = append(s.buf, e)
			case 'b':
				s.buf = append(s.buf, '\b')
			case 'f':
				s.buf = append(s.buf, '\f')
			case 'n':
				s.buf = append(s.buf, '\n')
			case 'r':
				s.buf = append(s.buf, '\r')
			case 't':
				s.buf = append(s.buf, '\t')
			case 'u':
				r, ok := s.hex4()
				if !ok {
					return nil, s.syntax("bad \\u escape")
				}
				if utf16.IsSurrogate(r) {
					// A high surrogate must be followed by an escaped low one.
					save := s.pos
					var r2 rune = -1
					if s.pos+1 < len(s.data) && s.data[s.pos] == '\\' && s.data[s.pos+1] == 'u' {
						s.pos += 2
						if v, ok := s.hex4(); ok {
							r2 = v
						}
					}
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						r = dec
					} else {
						s.pos = save
						r = utf8.RuneError
					}
				}
				s.buf = utf8.AppendRune(s.buf, r)
			default:
				return nil, s.syntax("bad escape \\%c", e)
			}
		case c < utf8.RuneSelf:
			s.buf = append(s.buf, c)
			s.pos++
		default:
			r, n := utf8.DecodeRune(s.data[s.pos:])
			if r == utf8.RuneError && n <= 1 {
				return nil, s.syntax("invalid UTF-8 in string")
			}
			s.buf = append(s.buf, s.data[s.pos:s.pos+n]...)
			s.pos += n
		}
	}
	return nil, s.syntax("unterminated string")
}

func (s *scanner) hex4() (rune, bool) {
	if s.pos+4 > len(s.data) {
		return 0, false
	}
	var r rune
	for _, c := range s.data[s.pos : s.pos+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	s.pos += 4
	return r, true
}

// number reads a JSON number at s.pos. A number too large for float64
// is a ReasonNotFinite error (JSON itself has no NaN or infinities).
func (s *scanner) number() (float64, error) {
	start := s.pos
	d := s.data
	i := s.pos
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	default:
		s.pos = i
		return 0, s.syntax("bad number")
	}
	if i < len(d) && d[i] == '.' {
		i++
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			s.pos = i
			return 0, s.syntax("bad number")
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			s.pos = i
			return 0, s.syntax("bad number")
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	s.pos = i
	lit := d[start:i]
	f, err := strconv.ParseFloat(bytesToString(lit), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return 0, decodeErr(ReasonNotFinite, -1, "", "number %.40s does not fit a float64", lit)
	}
	return f, nil
}

// literal reads true, false or null.
func (s *scanner) literal() (isBool, val bool, err error) {
	rest := s.data[s.pos:]
	switch {
	case len(rest) >= 4 && string(rest[:4]) == "true":
		s.pos += 4
		return true, true, nil
	case len(rest) >= 5 && string(rest[:5]) == "false":
		s.pos += 5
		return true, false, nil
	case len(rest) >= 4 && string(rest[:4]) == "null":
		s.pos += 4
		return false, false, nil
	}
	return false, false, s.syntax("unexpected character")
}

// skip reads and discards any JSON value.
func (s *scanner) skip(depth int) error {
	if depth > maxJSONDepth {
		return s.syntax("nesting deeper than %d", maxJSONDepth)
	}
	switch c := s.ws(); {
	case s.atEnd():
		return s.syntax("unexpected end of input, want a value")
	case c == '"':
		_, err := s.str()
		return err
	case c == '-' || (c >= '0' && c <= '9'):
		_, err := s.number()
		if err != nil && reasonOf(err) == ReasonNotFinite {
			return nil // skipped values are not used
		}
		return err
	case c == '{':
		s.pos++
		if s.ws() == '}' {
			s.pos++
			return nil
		}
		for {
			if s.ws() != '"' {
				return s.syntax("want an object key")
			}
			if _, err := s.str(); err != nil {
				return err
			}
			if err := s.expect(':'); err != nil {
				return err
			}
			if err := s.skip(depth + 1); err != nil {
				return err
			}
			switch s.ws() {
			case ',':
				s.pos++
			case '}':
				s.pos++
				return nil
			default:
				return s.syntax("want ',' or '}' in object")
			}
		}
	case c == '[':
		s.pos++
		if s.ws() == ']' {
			s.pos++
			return nil
		}
		for {
			if err := s.skip(depth + 1); err != nil {
				return err
			}
			switch s.ws() {
			case ',':
				s.pos++
			case ']':
				s.pos++
				return nil
			default:
				return s.syntax("want ',' or ']' in array")
			}
		}
	default:
		_, _, err := s.literal()
		return err
	}
}

// end checks that only white space follows.
func (s *scanner) end() error {
	s.ws()
	if !s.atEnd() {
		return s.syntax("trailing data after the JSON value")
	}
	return nil
}

// valueKind names the JSON type of the value at s.pos for error messages.
func (s *scanner) valueKind() string {
	switch c := s.ws(); {
	case c == '"':
		return "a string"
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case c == '-' || (c >= '0' && c <= '9'):
		return "a number"
	}
	return "an invalid value"
}
