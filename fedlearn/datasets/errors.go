package datasets

import "fmt"

// FormatError is malformed input in a data file: the file, the line (1 is
// the first; 0 when the error is not on one line) and what is wrong.
type FormatError struct {
	File string
	Line int
	Msg  string
}

func (e *FormatError) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("datasets: %s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("datasets: %s line %d: %s", e.File, e.Line, e.Msg)
}

func formatErr(file string, line int, format string, args ...any) error {
	return &FormatError{File: file, Line: line, Msg: fmt.Sprintf(format, args...)}
}
