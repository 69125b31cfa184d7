package keys

import "testing"

// FuzzParseRelayEntry: entries of keys.relay come from peers; any bytes
// under any key give a message stored under its own key or an error,
// never a panic.
func FuzzParseRelayEntry(f *testing.F) {
	f.Add("ag_1/telemetry/2", []byte("EFKM\x01"))
	f.Add("a/b", []byte{})
	f.Add("ag_1/gossip/1", make([]byte, 5000))
	f.Add("x/y/z", []byte("EFKM\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		m, err := parseRelayEntry(key, value)
		if err == nil && relayEntryKey(m) != key {
			t.Fatalf("entry %q accepted for message %q", key, relayEntryKey(m))
		}
	})
}
