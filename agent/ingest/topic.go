package ingest

import (
	"fmt"
	"strings"

	"github.com/edgefleet/edgefleet/agent/devcred"
)

// DefaultTopicPattern is the topic devices publish readings to.
const DefaultTopicPattern = "devices/{device_id}/telemetry"

// deviceIDLevel marks the topic level holding the device id.
const deviceIDLevel = "{device_id}"

// MaxDeviceIDLen is the longest device id accepted, in bytes.
const MaxDeviceIDLen = devcred.MaxIDLen

// TopicPattern maps topics such as devices/{device_id}/telemetry to
// device ids. Exactly one level of the pattern is {device_id}; the
// others are literal (no MQTT wildcards).
type TopicPattern struct {
	levels []string
	idx    int // index of the device id level
}

// ParseTopicPattern parses a pattern ("" means DefaultTopicPattern).
func ParseTopicPattern(p string) (TopicPattern, error) {
	if p == "" {
		p = DefaultTopicPattern
	}
	levels := strings.Split(p, "/")
	tp := TopicPattern{levels: levels, idx: -1}
	for i, l := range levels {
		switch {
		case l == deviceIDLevel:
			if tp.idx >= 0 {
				return TopicPattern{}, fmt.Errorf("%w: topic pattern %q has more than one %s", ErrInvalidConfig, p, deviceIDLevel)
			}
			tp.idx = i
		case strings.ContainsAny(l, "+#{}\x00"):
			return TopicPattern{}, fmt.Errorf("%w: topic pattern %q: level %q may not hold wildcards or braces", ErrInvalidConfig, p, l)
		}
	}
	if tp.idx < 0 {
		return TopicPattern{}, fmt.Errorf("%w: topic pattern %q has no %s level", ErrInvalidConfig, p, deviceIDLevel)
	}
	return tp, nil
}

// String returns the pattern.
func (tp TopicPattern) String() string { return strings.Join(tp.levels, "/") }

// Filter returns the MQTT subscription filter: the pattern with the
// device id level replaced by "+".
func (tp TopicPattern) Filter() string {
	ls := append([]string(nil), tp.levels...)
	ls[tp.idx] = "+"
	return strings.Join(ls, "/")
}

// Topic returns the topic of a device.
func (tp TopicPattern) Topic(device string) string {
	ls := append([]string(nil), tp.levels...)
	ls[tp.idx] = device
	return strings.Join(ls, "/")
}

// Matches reports whether topic matches the pattern's subscription
// filter (Filter): its device id is checked by Device.
func (tp TopicPattern) Matches(topic string) bool {
	rest := topic
	for i, l := range tp.levels {
		var level string
		if i == len(tp.levels)-1 {
			if strings.IndexByte(rest, '/') >= 0 {
				return false
			}
			level = rest
		} else {
			j := strings.IndexByte(rest, '/')
			if j < 0 {
				return false
			}
			level, rest = rest[:j], rest[j+1:]
		}
		if i != tp.idx && level != l {
			return false
		}
	}
	return true
}

// Device extracts and validates the device id of a topic.
func (tp TopicPattern) Device(topic string) (string, error) {
	rest := topic
	var id string
	for i, l := range tp.levels {
		var level string
		if i == len(tp.levels)-1 {
			level, rest = rest, ""
			if strings.IndexByte(level, '/') >= 0 {
				return "", decodeErr(ReasonTopic, -1, "", "topic %.128q does not match %q", topic, tp.String())
			}
		} else {
			j := strings.IndexByte(rest, '/')
			if j < 0 {
				return "", decodeErr(ReasonTopic, -1, "", "topic %.128q does not match %q", topic, tp.String())
			}
			level, rest = rest[:j], rest[j+1:]
		}
		if i == tp.idx {
			id = level
		} else if level != l {
			return "", decodeErr(ReasonTopic, -1, "", "topic %.128q does not match %q", topic, tp.String())
		}
	}
	if err := CheckDeviceID(id); err != nil {
		return "", err
	}
	return id, nil
}

// CheckDeviceID validates a device id: 1 to MaxDeviceIDLen bytes of
// A-Z a-z 0-9 and - _ . : @ (devcred.CheckID, the one definition).
func CheckDeviceID(id string) error {
	if err := devcred.CheckID(id); err != nil {
		return decodeErr(ReasonTopic, -1, "", "%s", strings.TrimPrefix(err.Error(), "devcred: "))
	}
	return nil
}
