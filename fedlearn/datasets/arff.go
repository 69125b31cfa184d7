package datasets

import (
	"bufio"
	"errors"
	"io"
	"strings"
)

// maxLine bounds one line of a data file.
const maxLine = 1 << 20

// arffAttr is one @attribute of an ARFF header.
type arffAttr struct {
	Name string
	// Type is the declared type in lower case ("numeric", "real", ...),
	// "nominal" for a {a,b,c} list, or "" when none is given (WISDM's
	// user and class).
	Type    string
	Nominal []string
}

// readARFF reads a dense ARFF file (Weka's Attribute-Relation File
// Format): comments (%), @relation, @attribute lines, @data, then one
// comma-separated row per line; values may be quoted with ' or ". header is
// called once with the attributes, row once per data line with its line
// number and fields (unquoted, trimmed; reused between calls). Sparse rows
// ({...}) are refused. file names the input in errors.
func readARFF(r io.Reader, file string, header func(attrs []arffAttr) error, row func(line int, fields []string) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	var attrs []arffAttr
	inData := false
	var fields []string
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '%' {
			continue
		}
		if !inData {
			if text[0] != '@' {
				return formatErr(file, line, "expected an @relation, @attribute or @data line before the data, got %q", clip(text))
			}
			kw, rest := text, ""
			if i := strings.IndexAny(text, " \t"); i >= 0 {
				kw, rest = text[:i], strings.TrimSpace(text[i+1:])
			}
			switch strings.ToLower(kw) {
			case "@relation":
			case "@attribute":
				a, err := parseAttr(rest)
				if err != nil {
					return formatErr(file, line, "@attribute: %v", err)
				}
				for _, b := range attrs {
					if strings.EqualFold(a.Name, b.Name) {
						return formatErr(file, line, "attribute %q declared twice", a.Name)
					}
				}
				attrs = append(attrs, a)
			case "@data":
				if len(attrs) == 0 {
					return formatErr(file, line, "@data before any @attribute")
				}
				if err := header(attrs); err != nil {
					return err
				}
				inData = true
			default:
				return formatErr(file, line, "unknown header keyword %q", clip(kw))
			}
			continue
		}
		if text[0] == '{' {
			return formatErr(file, line, "sparse ARFF rows are not supported")
		}
		var err error
		fields, err = splitFields(fields[:0], text)
		if err != nil {
			return formatErr(file, line, "%v", err)
		}
		if len(fields) != len(attrs) {
			return formatErr(file, line, "%d values, the header declares %d attributes", len(fields), len(attrs))
		}
		if err := row(line, fields); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return formatErr(file, line+1, "line longer than %d bytes", maxLine)
		}
		return formatErr(file, line, "read: %v", err)
	}
	if !inData {
		return formatErr(file, line, "no @data section")
	}
	return nil
}

// parseAttr reads the rest of an @attribute line: a name (quoted or not)
// and an optional type.
func parseAttr(s string) (arffAttr, error) {
	var a arffAttr
	name, rest, err := nextToken(s)
	if err != nil {
		return a, err
	}
	if name == "" {
		return a, errors.New("missing name")
	}
	a.Name = name
	rest = strings.TrimSpace(rest)
	switch {
	case rest == "":
	case rest[0] == '{':
		end := strings.LastIndexByte(rest, '}')
		if end < 0 {
			return a, errors.New("nominal list without a closing }")
		}
		if strings.TrimSpace(rest[end+1:]) != "" {
			return a, errors.New("text after the nominal list")
		}
		vals, err := splitFields(nil, rest[1:end])
		if err != nil {
			return a, err
		}
		a.Type, a.Nominal = "nominal", vals
	default:
		a.Type = strings.ToLower(strings.Fields(rest)[0])
	}
	return a, nil
}

// nextToken returns the first token of s (a quoted string, unquoted, or a
// run of non-space characters) and the text after it.
func nextToken(s string) (tok, rest string, err error) {
	s = strings.TrimLeft(s, " \t")
	if s == "" {
		return "", "", nil
	}
	if q := s[0]; q == '\'' || q == '"' {
		v, n, err := unquote(s)
		return v, s[n:], err
	}
	if i := strings.IndexAny(s, " \t{"); i >= 0 {
		return s[:i], s[i:], nil
	}
	return s, "", nil
}

// splitFields appends the comma-separated values of s to dst, unquoted and
// trimmed.
func splitFields(dst []string, s string) ([]string, error) {
	for {
		s = strings.TrimLeft(s, " \t")
		var v string
		if s != "" && (s[0] == '\'' || s[0] == '"') {
			u, n, err := unquote(s)
			if err != nil {
				return dst, err
			}
			v, s = u, strings.TrimLeft(s[n:], " \t")
			if s != "" && s[0] != ',' {
				return dst, errors.New("text after a quoted value")
			}
		} else {
			i := strings.IndexByte(s, ',')
			if i < 0 {
				i = len(s)
			}
			v, s = strings.TrimSpace(s[:i]), s[i:]
		}
		dst = append(dst, v)
		if s == "" {
			return dst, nil
		}
		s = s[1:] // the comma
	}
}

// unquote reads the quoted string at the start of s (quote ' or ", with
// backslash escapes) and returns its value and length in s.
func unquote(s string) (string, int, error) {
	q := s[0]
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\' && i+1 < len(s):
			i++
			b.WriteByte(s[i])
		case c == q:
			return b.String(), i + 1, nil
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, errors.New("unterminated quoted value")
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
