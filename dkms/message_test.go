package dkms

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestKeyMessageRoundTrip(t *testing.T) {
	e, a, _, _ := fleet(t)
	e.svc.CreateKey(ctxb(), "g", PurposeGossip, Policy{AllAgents: true, InstallGrace: time.Second})
	e.svc.Rotate(ctxb(), "g")
	for _, v := range []uint32{1, 2} {
		m, err := e.svc.MessageFor(ctxb(), a.id, "g", v)
		if err != nil {
			t.Fatal(err)
		}
		b := msgBytes(t, m)
		if len(b) > MaxKeyMessageSize {
			t.Fatalf("message of %d bytes", len(b))
		}
		got, err := ParseKeyMessage(b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip:\n%+v\n%+v", got, m)
		}
		if v == 2 && !got.ActivateAt.Equal(got.CreatedAt.Add(time.Second)) {
			t.Fatalf("gossip schedule lost: %+v", got)
		}
	}
}

func TestKeyMessageStructure(t *testing.T) {
	e, a, _, _ := fleet(t)
	m, _ := e.svc.MessageFor(ctxb(), a.id, "telemetry", 1)
	good := msgBytes(t, m)
	hdr := len(m.header())
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := map[string][]byte{
		"empty":        {},
		"bad magic":    mutate(func(b []byte) []byte { b[0] = 'X'; return b }),
		"version 2":    mutate(func(b []byte) []byte { b[4] = 2; return b }),
		"state 0":      mutate(func(b []byte) []byte { b[hdr-29] = 0; return b }),
		"state 9":      mutate(func(b []byte) []byte { b[hdr-29] = 9; return b }),
		"retired+key":  mutate(func(b []byte) []byte { b[hdr-29] = byte(StateRetired); return b }),
		"version 0":    mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[hdr-33:], 0); return b }),
		"huge env len": mutate(func(b []byte) []byte { binary.BigEndian.PutUint32(b[hdr:], 1<<30); return b }),
		"trailing":     append(bytes.Clone(good), 1),
		"too big":      append(bytes.Clone(good), make([]byte, MaxKeyMessageSize)...),
		"no signature": good[:len(good)-10],
		"expired before issued": mutate(func(b []byte) []byte {
			binary.BigEndian.PutUint64(b[29:], binary.BigEndian.Uint64(b[21:])-1)
			return b
		}),
		"year 300 million": mutate(func(b []byte) []byte { binary.BigEndian.PutUint64(b[29:], 1<<63); return b }),
		"agent id":         mutate(func(b []byte) []byte { b[38] = ' '; return b }),
	}
	for name, in := range cases {
		if _, err := ParseKeyMessage(in); err == nil {
			t.Errorf("%s: parsed", name)
		} else {
			mustErr(t, err, ErrMalformed)
			if !strings.HasPrefix(err.Error(), "dkms: key message") {
				t.Errorf("%s: %v", name, err)
			}
		}
	}
	unsigned := *m
	unsigned.Signature = nil
	_, err := unsigned.MarshalBinary()
	mustErr(t, err, ErrMalformed)
	mustErr(t, m.Verify(nil), ErrBadSignature)
}
