package dkms

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

func headerVersion(t *testing.T, env []byte) uint32 {
	t.Helper()
	h, _, err := pqcrypto.ParseHeader(env)
	if err != nil {
		t.Fatal(err)
	}
	return h.KeyVersion
}

func TestKeyLifecycle(t *testing.T) {
	e := newEnv(t)
	ctx := WithActor(ctxb(), "operator:alice")
	info, err := e.svc.CreateKey(ctx, "telemetry", PurposeData, Policy{})
	if err != nil || info.Primary != 1 || len(info.Versions) != 1 || info.Versions[0].State != StatePrimary {
		t.Fatalf("create: %+v %v", info, err)
	}
	env1, err := e.svc.Encrypt(ctx, "telemetry", []byte("v1 data"), []byte("batch-1"))
	if err != nil || headerVersion(t, env1) != 1 {
		t.Fatal(err)
	}
	vi, err := e.svc.Rotate(ctx, "telemetry")
	if err != nil || vi.Version != 2 || vi.State != StatePrimary {
		t.Fatalf("rotate: %+v %v", vi, err)
	}
	env2, _ := e.svc.Encrypt(ctx, "telemetry", []byte("v2 data"), nil)
	if headerVersion(t, env2) != 2 {
		t.Fatal("encrypt after rotation not under v2")
	}
	// v1 is decrypt-only: it still opens.
	if pt, err := e.svc.Decrypt(ctx, "telemetry", env1, []byte("batch-1")); err != nil || string(pt) != "v1 data" {
		t.Fatalf("decrypt-only version: %v", err)
	}
	// Wrong associated data.
	_, err = e.svc.Decrypt(ctx, "telemetry", env1, []byte("batch-2"))
	mustErr(t, err, pqcrypto.ErrAuthFailed)
	info, _ = e.svc.Key(ctx, "telemetry")
	if info.Versions[0].State != StateDecryptOnly || info.Primary != 2 {
		t.Fatalf("after rotation: %+v", info)
	}
	// The primary can be neither retired nor destroyed.
	_, err = e.svc.Retire(ctx, "telemetry", 2)
	mustErr(t, err, ErrPrimaryVersion)
	_, err = e.svc.Destroy(ctx, "telemetry", 2)
	mustErr(t, err, ErrPrimaryVersion)
	// Retire v1.
	if vi, err := e.svc.Retire(ctx, "telemetry", 1); err != nil || vi.State != StateRetired {
		t.Fatalf("retire: %+v %v", vi, err)
	}
	_, err = e.svc.Decrypt(ctx, "telemetry", env1, []byte("batch-1"))
	mustErr(t, err, ErrKeyVersionRetired)
	if _, err := e.svc.Retire(ctx, "telemetry", 1); err != nil {
		t.Fatalf("retiring twice: %v", err)
	}
	// Destroy v1: its wrapped material leaves the database files.
	var wrapped []byte
	e.store.View(ctx, func(tx Tx) error {
		v, err := tx.GetVersion("telemetry", 1)
		wrapped = v.Wrapped
		return err
	})
	if !fileContains(t, e.path, wrapped) {
		t.Fatal("test premise: wrapped material not found in the files before destroy")
	}
	if vi, err := e.svc.Destroy(ctx, "telemetry", 1); err != nil || vi.State != StateDestroyed {
		t.Fatalf("destroy: %+v %v", vi, err)
	}
	if fileContains(t, e.path, wrapped) {
		t.Fatal("destroyed material still in the database files")
	}
	_, err = e.svc.Decrypt(ctx, "telemetry", env1, []byte("batch-1"))
	mustErr(t, err, ErrKeyVersionDestroyed)
	_, err = e.svc.Retire(ctx, "telemetry", 1)
	mustErr(t, err, ErrKeyVersionDestroyed)
	if _, err := e.svc.Destroy(ctx, "telemetry", 1); err != nil {
		t.Fatalf("destroying twice: %v", err)
	}
	// After a restart the destroyed version stays destroyed.
	e.reopenUnsealed()
	_, err = e.svc.Decrypt(ctx, "telemetry", env1, []byte("batch-1"))
	mustErr(t, err, ErrKeyVersionDestroyed)
	if pt, err := e.svc.Decrypt(ctx, "telemetry", env2, nil); err != nil || string(pt) != "v2 data" {
		t.Fatalf("v2 after restart: %v", err)
	}
	// Audit trail names the actor and never carries material.
	ev := e.audit.find(ActionDestroy, "telemetry")
	if len(ev) != 3 || ev[1].Actor != "operator:alice" || ev[1].Version != 1 || ev[1].Result != ResultOK || ev[0].Result == ResultOK {
		t.Fatalf("destroy audit: %+v", ev)
	}
	if ev := e.audit.find(ActionRetire, "telemetry"); len(ev) < 3 || !strings.Contains(ev[0].Result, "primary") {
		t.Fatalf("failed retire audit: %+v", ev)
	}
}

func TestKeyErrors(t *testing.T) {
	e := newEnv(t)
	e.svc.CreateKey(ctxb(), "data", PurposeData, Policy{})
	e.svc.CreateKey(ctxb(), "gossip", PurposeGossip, Policy{})
	_, err := e.svc.CreateKey(ctxb(), "data", PurposeData, Policy{})
	mustErr(t, err, ErrKeyExists)
	for _, bad := range []string{"", "-x", "a/b", "dkms/kek", "sp ace", strings.Repeat("a", 129)} {
		_, err = e.svc.CreateKey(ctxb(), bad, PurposeData, Policy{})
		mustErr(t, err, ErrInvalidName)
	}
	_, err = e.svc.CreateKey(ctxb(), "x", PurposeKEK, Policy{})
	mustErr(t, err, ErrWrongPurpose)
	_, err = e.svc.CreateKey(ctxb(), "x", "signing", Policy{})
	mustErr(t, err, ErrWrongPurpose)
	_, err = e.svc.CreateKey(ctxb(), "x", PurposeData, Policy{RotationPeriod: time.Millisecond})
	mustErr(t, err, ErrInvalidPolicy)
	_, err = e.svc.CreateKey(ctxb(), "x", PurposeData, Policy{MinDecryptVersion: 2})
	mustErr(t, err, ErrInvalidPolicy)
	_, err = e.svc.CreateKey(ctxb(), "x", PurposeData, Policy{AllowedAgents: []string{"bad id"}})
	mustErr(t, err, ErrInvalidPolicy)
	_, err = e.svc.Rotate(ctxb(), "missing")
	mustErr(t, err, ErrUnknownKey)
	_, err = e.svc.Retire(ctxb(), "data", 7)
	mustErr(t, err, ErrUnknownVersion)
	_, err = e.svc.Retire(ctxb(), "data", 0)
	mustErr(t, err, ErrUnknownVersion)
	_, err = e.svc.Encrypt(ctxb(), "gossip", []byte("x"), nil)
	mustErr(t, err, ErrWrongPurpose)
	_, err = e.svc.PrimaryDataKey(ctxb(), "gossip")
	mustErr(t, err, ErrWrongPurpose)
	_, err = e.svc.GossipKeyring(ctxb(), "data", epoch)
	mustErr(t, err, ErrWrongPurpose)
	// An envelope for another key, and one that is not a data-key envelope.
	e.svc.CreateKey(ctxb(), "other", PurposeData, Policy{})
	envOther, _ := e.svc.Encrypt(ctxb(), "other", []byte("x"), nil)
	_, err = e.svc.Decrypt(ctxb(), "data", envOther, nil)
	mustErr(t, err, ErrWrongKey)
	sk, _ := pqcrypto.GenerateXWingKey(testRand(3))
	recip, _ := pqcrypto.SealToRecipient(nil, pqcrypto.RecipientKey{PublicKey: sk.Public(), KeyID: "data"}, []byte("x"), &pqcrypto.SealOptions{Rand: testRand(4)})
	_, err = e.svc.Decrypt(ctxb(), "data", recip, nil)
	mustErr(t, err, ErrWrongKey)
	// A version number beyond the key's.
	envData, _ := e.svc.Encrypt(ctxb(), "data", []byte("x"), nil)
	h, n, _ := pqcrypto.ParseHeader(envData)
	h.KeyVersion = 9
	hb, _ := h.MarshalBinary()
	_, err = e.svc.Decrypt(ctxb(), "data", append(hb, envData[n:]...), nil)
	mustErr(t, err, ErrUnknownVersion)
}

func TestDecryptTamperedAndTruncated(t *testing.T) {
	e := newEnv(t)
	e.svc.CreateKey(ctxb(), "data", PurposeData, Policy{})
	env1, _ := e.svc.Encrypt(ctxb(), "data", bytes.Repeat([]byte("m"), 100), nil)
	for i := 0; i < len(env1); i += 7 {
		b := bytes.Clone(env1)
		b[i] ^= 0x40
		if _, err := e.svc.Decrypt(ctxb(), "data", b, nil); err == nil {
			t.Fatalf("flipped byte %d accepted", i)
		}
	}
	body := bytes.Clone(env1)
	body[len(body)-1] ^= 1
	_, err := e.svc.Decrypt(ctxb(), "data", body, nil)
	mustErr(t, err, pqcrypto.ErrAuthFailed)
	_, err = e.svc.Decrypt(ctxb(), "data", env1[:len(env1)-20], nil)
	mustErr(t, err, pqcrypto.ErrTruncated)
	_, err = e.svc.Decrypt(ctxb(), "data", []byte("nonsense"), nil)
	mustErr(t, err, pqcrypto.ErrMalformed)
}

func TestMinDecryptVersion(t *testing.T) {
	e := newEnv(t)
	e.svc.CreateKey(ctxb(), "data", PurposeData, Policy{})
	env1, _ := e.svc.Encrypt(ctxb(), "data", []byte("one"), nil)
	e.svc.Rotate(ctxb(), "data")
	_, err := e.svc.SetPolicy(ctxb(), "data", Policy{MinDecryptVersion: 3})
	mustErr(t, err, ErrInvalidPolicy)
	info, err := e.svc.SetPolicy(ctxb(), "data", Policy{MinDecryptVersion: 2})
	if err != nil || info.Policy.MinDecryptVersion != 2 {
		t.Fatal(err)
	}
	_, err = e.svc.Decrypt(ctxb(), "data", env1, nil)
	mustErr(t, err, ErrBelowMinVersion)
	// Rewrap is refused too: the old version is no longer trusted.
	_, err = e.svc.Rewrap(ctxb(), "data", env1, nil)
	mustErr(t, err, ErrBelowMinVersion)
	// Lowering the minimum makes it readable again (the version was not destroyed).
	e.svc.SetPolicy(ctxb(), "data", Policy{})
	if _, err := e.svc.Decrypt(ctxb(), "data", env1, nil); err != nil {
		t.Fatal(err)
	}
}

func TestRewrap(t *testing.T) {
	e := newEnv(t)
	e.svc.CreateKey(ctxb(), "data", PurposeData, Policy{})
	aad := []byte("row 17")
	env1, _ := e.svc.Encrypt(ctxb(), "data", []byte("secret row"), aad)
	e.svc.Rotate(ctxb(), "data")
	e.svc.Rotate(ctxb(), "data")
	env3, err := e.svc.Rewrap(ctxb(), "data", env1, aad)
	if err != nil {
		t.Fatal(err)
	}
	if headerVersion(t, env3) != 3 {
		t.Fatalf("rewrapped under v%d", headerVersion(t, env3))
	}
	if bytes.Contains(env3, []byte("secret row")) {
		t.Fatal("plaintext in rewrapped envelope")
	}
	// Old versions can go now.
	e.svc.SetPolicy(ctxb(), "data", Policy{MinDecryptVersion: 3})
	e.svc.Retire(ctxb(), "data", 1)
	e.svc.Destroy(ctxb(), "data", 1)
	if pt, err := e.svc.Decrypt(ctxb(), "data", env3, aad); err != nil || string(pt) != "secret row" {
		t.Fatalf("rewrapped: %q %v", pt, err)
	}
	_, err = e.svc.Rewrap(ctxb(), "data", env3, []byte("other row"))
	mustErr(t, err, pqcrypto.ErrAuthFailed)
	tampered := bytes.Clone(env3)
	tampered[len(tampered)-3] ^= 1
	_, err = e.svc.Rewrap(ctxb(), "data", tampered, aad)
	mustErr(t, err, pqcrypto.ErrAuthFailed)
	if ev := e.audit.find(ActionRewrap, "data"); len(ev) != 3 || ev[0].Version != 3 {
		t.Fatalf("rewrap audit %+v", ev)
	}
}

func TestStreamingThroughService(t *testing.T) {
	e := newEnv(t)
	e.svc.CreateKey(ctxb(), "blobs", PurposeData, Policy{})
	dk, err := e.svc.PrimaryDataKey(ctxb(), "blobs")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	w, err := pqcrypto.NewDataKeyWriter(&buf, dk, &pqcrypto.SealOptions{ChunkSize: 1024, Rand: testRand(8), AAD: []byte("m")})
	if err != nil {
		t.Fatal(err)
	}
	payload := bytes.Repeat([]byte("0123456789"), 500)
	w.Write(payload)
	w.Close()
	sealed := buf.Bytes()
	r, err := pqcrypto.NewReader(bytes.NewReader(sealed), e.svc.OpenKeys(ctxb(), "blobs", []byte("m")))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if _, err := out.ReadFrom(r); err != nil || !bytes.Equal(out.Bytes(), payload) {
		t.Fatalf("stream: %v", err)
	}
	e.svc.Rotate(ctxb(), "blobs")
	e.svc.Retire(ctxb(), "blobs", 1)
	_, err = pqcrypto.NewReader(bytes.NewReader(sealed), e.svc.OpenKeys(ctxb(), "blobs", []byte("m")))
	mustErr(t, err, ErrKeyVersionRetired)
	_, err = pqcrypto.NewReader(bytes.NewReader(sealed), e.svc.OpenKeys(ctxb(), "other", []byte("m")))
	mustErr(t, err, ErrWrongKey)
}

func TestRotationDue(t *testing.T) {
	k := KeyInfo{Primary: 1, RotatedAt: epoch, Policy: Policy{RotationPeriod: time.Hour}}
	for _, c := range []struct {
		at   time.Duration
		want bool
	}{{0, false}, {59 * time.Minute, false}, {time.Hour, true}, {5 * time.Hour, true}} {
		if got := RotationDue(k, epoch.Add(c.at)); got != c.want {
			t.Errorf("due at +%v = %v", c.at, got)
		}
	}
	if NextRotation(k) != epoch.Add(time.Hour) {
		t.Error("next rotation")
	}
	manual := KeyInfo{Primary: 1, RotatedAt: epoch}
	if RotationDue(manual, epoch.Add(1000*time.Hour)) || !NextRotation(manual).IsZero() {
		t.Error("key without a period is due")
	}

	e := newEnv(t)
	e.svc.CreateKey(ctxb(), "hourly", PurposeData, Policy{RotationPeriod: time.Hour})
	e.svc.CreateKey(ctxb(), "daily-gossip", PurposeGossip, Policy{RotationPeriod: 24 * time.Hour})
	e.svc.CreateKey(ctxb(), "manual", PurposeData, Policy{})
	got, err := e.svc.RotateDue(ctxb(), epoch.Add(59*time.Minute))
	if err != nil || len(got) != 0 {
		t.Fatalf("early tick rotated %v %v", got, err)
	}
	got, err = e.svc.RotateDue(ctxb(), epoch.Add(time.Hour))
	if err != nil || len(got) != 1 || got[0].Key != "hourly" || got[0].Version != 2 || !got[0].CreatedAt.Equal(epoch.Add(time.Hour)) {
		t.Fatalf("tick at +1h: %+v %v", got, err)
	}
	// The period restarts from the rotation.
	if got, _ := e.svc.RotateDue(ctxb(), epoch.Add(90*time.Minute)); len(got) != 0 {
		t.Fatalf("rotated again too soon: %+v", got)
	}
	got, _ = e.svc.RotateDue(ctxb(), epoch.Add(25*time.Hour))
	if len(got) != 2 {
		t.Fatalf("tick at +25h: %+v", got)
	}
	info, _ := e.svc.Key(ctxb(), "manual")
	if info.Primary != 1 {
		t.Fatal("manual key rotated")
	}
	e.svc.Seal(ctxb())
	_, err = e.svc.RotateDue(ctxb(), epoch.Add(100*time.Hour))
	mustErr(t, err, ErrSealed)
}

// TestConcurrentUse runs encryptions and decryptions while the key rotates;
// every envelope opens. Meaningful under -race.
func TestConcurrentUse(t *testing.T) {
	e := newEnv(t)
	e.svc.CreateKey(ctxb(), "data", PurposeData, Policy{})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 15 {
				msg := []byte{byte(g), byte(i)}
				env1, err := e.svc.Encrypt(ctxb(), "data", msg, nil)
				if err != nil {
					errs <- err
					return
				}
				pt, err := e.svc.Decrypt(ctxb(), "data", env1, nil)
				if err != nil || !bytes.Equal(pt, msg) {
					errs <- err
					return
				}
			}
		}()
	}
	for range 3 {
		if _, err := e.svc.Rotate(ctxb(), "data"); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
