package membership

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"strings"
)

// Rejection reasons of gossip traffic refused below replication (label
// values of edgefleet_gossip_rejected_total).
const (
	ReasonForeignCluster = "foreign_cluster" // memberlist label of another cluster
	ReasonDecrypt        = "decrypt_failed"  // wrong gossip key, or unencrypted traffic
	ReasonOversized      = "oversized"
	ReasonMalformed      = "malformed"
)

// Logger returns a *log.Logger for memberlist that forwards its
// lines to slog at the matching level and counts the lines that report
// rejected traffic (failed decryption, oversized or undecodable messages)
// through reject. memberlist drops that traffic itself before it reaches
// the agent; its log line is the only signal. (Foreign cluster labels are
// checked and counted earlier, by the agent's transport.) Every line
// carries component=memberlist, added here once: pass l without it.
func Logger(l *slog.Logger, reject func(reason string)) *log.Logger {
	return log.New(&mlLogWriter{log: l.With("component", "memberlist"), reject: reject}, "", 0)
}

type mlLogWriter struct {
	log    *slog.Logger
	reject func(reason string)
}

func (w *mlLogWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte{'\n'}) {
		w.line(string(line))
	}
	return len(p), nil
}

func (w *mlLogWriter) line(s string) {
	level := slog.LevelInfo
	for _, lv := range []struct {
		prefix string
		level  slog.Level
	}{
		{"[DEBUG]", slog.LevelDebug},
		{"[INFO]", slog.LevelInfo},
		{"[WARN]", slog.LevelWarn},
		{"[ERR]", slog.LevelError},
		{"[ERROR]", slog.LevelError},
	} {
		if rest, ok := strings.CutPrefix(s, lv.prefix); ok {
			level, s = lv.level, strings.TrimSpace(rest)
			break
		}
	}
	s = strings.TrimPrefix(s, "memberlist: ")
	if level >= slog.LevelWarn {
		if reason := classifyMemberlistError(s); reason != "" {
			w.reject(reason)
			w.log.Warn("gossip rejected", "reason", reason, "detail", s)
			return
		}
	}
	if w.log.Enabled(context.Background(), level) {
		w.log.Log(context.Background(), level, s)
	}
}

// classifyMemberlistError maps a memberlist error line to a rejection
// reason, or "" when the line does not report rejected input.
func classifyMemberlistError(s string) string {
	l := strings.ToLower(s)
	switch {
	case strings.Contains(l, "decrypt packet failed"),
		strings.Contains(l, "no installed keys could decrypt"),
		strings.Contains(l, "encryption is configured but remote state is not encrypted"),
		strings.Contains(l, "remote state is encrypted and encryption is not configured"),
		strings.Contains(l, "payload is too small to decrypt"),
		strings.Contains(l, "unsupported encryption version"):
		return ReasonDecrypt
	case strings.Contains(l, "exceeds limit"),
		strings.Contains(l, "larger than limit"):
		return ReasonOversized
	case strings.Contains(l, "failed to decode"),
		strings.Contains(l, "invalid checksum"),
		strings.Contains(l, "not supported"),
		strings.Contains(l, "failed to decompress"),
		strings.Contains(l, "label header"),
		strings.Contains(l, "missing message type"),
		strings.Contains(l, "invalid msgtype"),
		strings.Contains(l, "truncated messages"):
		return ReasonMalformed
	}
	return ""
}
