package devcred

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxFilterLen bounds one allowed topic filter.
const MaxFilterLen = 256

// CheckFilter validates an MQTT topic filter used in an access rule: not
// empty, valid UTF-8 without NUL, "+" and "#" only as whole levels and
// "#" only last, not a shared ($share/) filter.
func CheckFilter(f string) error {
	switch {
	case f == "":
		return fmt.Errorf("devcred: empty topic filter")
	case len(f) > MaxFilterLen:
		return fmt.Errorf("devcred: topic filter of %d bytes, at most %d", len(f), MaxFilterLen)
	case !utf8.ValidString(f) || strings.ContainsRune(f, 0):
		return fmt.Errorf("devcred: topic filter %q is not valid UTF-8 without NUL", f)
	case strings.HasPrefix(f, "$"):
		return fmt.Errorf("devcred: topic filter %q starts with $ (system and shared topics are not grantable)", f)
	case strings.ContainsAny(f, " \t\r\n"):
		return fmt.Errorf("devcred: topic filter %q holds white space (Mosquitto's ACL file cannot express it)", f)
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.ContainsAny(l, "+#") && len(l) > 1 {
			return fmt.Errorf("devcred: topic filter %q: wildcard inside level %q", f, l)
		}
		if l == "#" && i != len(levels)-1 {
			return fmt.Errorf("devcred: topic filter %q: # not last", f)
		}
	}
	return nil
}

// Matches reports whether topic name (no wildcards) matches filter.
func Matches(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && !strings.HasPrefix(filter, "$") {
		return false // [MQTT-4.7.2-1]
	}
	for {
		fl, frest, fmore := strings.Cut(filter, "/")
		tl, trest, tmore := strings.Cut(topic, "/")
		switch {
		case fl == "#":
			return true
		case fl == "+":
		case fl != tl:
			return false
		}
		if !fmore || !tmore {
			// "a/#" also matches "a".
			return fmore == tmore || (fmore && frest == "#")
		}
		filter, topic = frest, trest
	}
}

// Covers reports whether every topic that filter req can match is also
// matched by the allowed filter: a subscription to req then receives
// nothing allowed forbids.
func Covers(allowed, req string) bool {
	if strings.HasPrefix(req, "$") && !strings.HasPrefix(allowed, "$") {
		return false
	}
	for {
		al, arest, amore := strings.Cut(allowed, "/")
		rl, rrest, rmore := strings.Cut(req, "/")
		switch {
		case al == "#":
			return true
		case rl == "#":
			return false // req reaches deeper or wider than al
		case al == "+":
		case rl == "+" || al != rl:
			return false
		}
		if !amore || !rmore {
			return amore == rmore || (amore && arest == "#")
		}
		allowed, req = arest, rrest
	}
}

// MaxIDLen is the longest device id, in bytes.
const MaxIDLen = 128

// CheckID validates a device id (its MQTT user name and client id): 1 to
// MaxIDLen bytes of A-Z a-z 0-9 and - _ . : @.
func CheckID(id string) error {
	if id == "" {
		return fmt.Errorf("devcred: empty device id")
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("devcred: device id of %d bytes exceeds %d", len(id), MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && c != '-' && c != '_' && c != '.' && c != ':' && c != '@' {
			return fmt.Errorf("devcred: device id %.64q holds %q (allowed: A-Z a-z 0-9 - _ . : @)", id, c)
		}
	}
	return nil
}
