package dkms

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

// fleet is a key service with agents a, b and c and a data key every agent
// receives.
func fleet(t testing.TB) (*env, *testAgent, *testAgent, *testAgent) {
	t.Helper()
	e := newEnv(t)
	a := e.newAgent("agent-a", map[string]string{"site": "berlin"})
	b := e.newAgent("agent-b", map[string]string{"site": "berlin"})
	c := e.newAgent("agent-c", map[string]string{"site": "lyon"})
	if _, err := e.svc.CreateKey(ctxb(), "telemetry", PurposeData, Policy{AllAgents: true}); err != nil {
		t.Fatal(err)
	}
	msgs, err := e.svc.Distribute(ctxb(), "telemetry", 1)
	if err != nil || len(msgs) != 3 {
		t.Fatalf("distribute: %d %v", len(msgs), err)
	}
	deliver(t, msgs, a, b, c)
	return e, a, b, c
}

func msgBytes(t testing.TB, m *KeyMessage) []byte {
	t.Helper()
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDistributeAndUse(t *testing.T) {
	e, a, b, _ := fleet(t)
	// Agent -> control plane.
	up, err := a.keys.Encrypt(ctxb(), "telemetry", []byte("batch 1"), []byte("agent-a/1"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := e.svc.Decrypt(ctxb(), "telemetry", up, []byte("agent-a/1")); err != nil || string(pt) != "batch 1" {
		t.Fatalf("control plane opening agent data: %v", err)
	}
	// Control plane -> agents.
	down, _ := e.svc.Encrypt(ctxb(), "telemetry", []byte("config"), nil)
	if pt, err := b.keys.Decrypt(ctxb(), "telemetry", down, nil); err != nil || string(pt) != "config" {
		t.Fatalf("agent opening control plane data: %v", err)
	}
	// Rotation reaches agents; new data goes under v2 on both sides.
	vi, _ := e.svc.Rotate(ctxb(), "telemetry")
	msgs, _ := e.svc.Distribute(ctxb(), "telemetry", vi.Version)
	deliver(t, msgs, a)
	up2, _ := a.keys.Encrypt(ctxb(), "telemetry", []byte("batch 2"), nil)
	if headerVersion(t, up2) != 2 {
		t.Fatal("agent still seals under v1")
	}
	if _, err := e.svc.Decrypt(ctxb(), "telemetry", up2, nil); err != nil {
		t.Fatal(err)
	}
	// b missed the rotation: it keeps working with v1 and the control plane still opens it.
	upB, _ := b.keys.Encrypt(ctxb(), "telemetry", []byte("offline"), nil)
	if headerVersion(t, upB) != 1 {
		t.Fatal("b's version")
	}
	if _, err := e.svc.Decrypt(ctxb(), "telemetry", upB, nil); err != nil {
		t.Fatal(err)
	}
	info := a.keys.Keys()
	if len(info) != 1 || info[0].Primary != 2 || info[0].Versions[0].State != StateDecryptOnly {
		t.Fatalf("agent keyring %+v", info)
	}
	if a.keys.ID() != "agent-a" {
		t.Fatal("id")
	}
}

func TestRelayedMessageOnlyOpensForItsAgent(t *testing.T) {
	e, a, b, _ := fleet(t)
	vi, _ := e.svc.Rotate(ctxb(), "telemetry")
	m, err := e.svc.MessageFor(ctxb(), a.id, "telemetry", vi.Version)
	if err != nil {
		t.Fatal(err)
	}
	relayed := msgBytes(t, m)
	// b holds a's message: a relay can check the signature...
	held, err := ParseKeyMessage(relayed)
	if err != nil {
		t.Fatal(err)
	}
	if err := held.Verify(e.signer.Public()); err != nil {
		t.Fatalf("relay cannot verify: %v", err)
	}
	// ...but b's keyring refuses it and b's private key cannot open it, whatever id b claims.
	_, err = b.keys.Accept(ctxb(), relayed)
	mustErr(t, err, ErrNotForThisAgent)
	_, _, err = pqcrypto.Open(nil, held.Envelope, &pqcrypto.Keys{RecipientID: b.id, PrivateKey: pqcrypto.PrivateKeyFor(b.sk.Public().Fingerprint(), 1, b.sk), AAD: held.header()})
	mustErr(t, err, pqcrypto.ErrWrongRecipient)
	_, _, err = pqcrypto.Open(nil, held.Envelope, &pqcrypto.Keys{RecipientID: a.id, PrivateKey: func(string, uint32) (*pqcrypto.PrivateKey, error) { return b.sk, nil }, AAD: held.header()})
	mustErr(t, err, pqcrypto.ErrAuthFailed)
	if bytes.Contains(relayed, mustSecret(t, e, "telemetry", vi.Version)) {
		t.Fatal("material in the clear in a key message")
	}
	// a opens the relayed bytes.
	res, err := a.keys.Accept(ctxb(), relayed)
	if err != nil || !res.Changed || res.Version != 2 || res.State != StatePrimary {
		t.Fatalf("a accepting relayed message: %+v %v", res, err)
	}
	// And b never got v2.
	down, _ := e.svc.Encrypt(ctxb(), "telemetry", []byte("x"), nil)
	_, err = b.keys.Decrypt(ctxb(), "telemetry", down, nil)
	mustErr(t, err, ErrUnknownVersion)
	if _, err := a.keys.Decrypt(ctxb(), "telemetry", down, nil); err != nil {
		t.Fatal(err)
	}
}

func mustMessage(t *testing.T, e *env, a *testAgent, name string, version uint32) *KeyMessage {
	t.Helper()
	m, err := e.svc.MessageFor(ctxb(), a.id, name, version)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func mustSecret(t *testing.T, e *env, name string, version uint32) []byte {
	t.Helper()
	dk, err := e.svc.versionForOpen(ctxb(), name, version)
	if err != nil {
		t.Fatal(err)
	}
	return dk.Secret()
}

// forger is a second control plane with the same signing key but its own
// store: it signs genuine-looking messages with other material.
func forger(t *testing.T, e *env, agents ...*testAgent) *Service {
	t.Helper()
	st, err := OpenSQLite(filepath.Join(t.TempDir(), "forger.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	c := e.config(false)
	c.Store = st
	f, err := Open(ctxb(), c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Initialize(ctxb(), 1, 1); err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		if _, err := f.RegisterAgent(ctxb(), a.id, a.sk.Public(), nil); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func TestAcceptRejections(t *testing.T) {
	e, a, _, _ := fleet(t)
	before := a.keys.Keys()
	unchanged := func() {
		t.Helper()
		if got := a.keys.Keys(); !reflect.DeepEqual(got, before) {
			t.Fatalf("a rejected message changed the keyring:\n%+v\n%+v", got, before)
		}
	}
	vi, _ := e.svc.Rotate(ctxb(), "telemetry")
	m, _ := e.svc.MessageFor(ctxb(), a.id, "telemetry", vi.Version)
	good := msgBytes(t, m)

	// Malformed.
	_, err := a.keys.Accept(ctxb(), good[:len(good)-1])
	mustErr(t, err, ErrMalformed)
	_, err = a.keys.Accept(ctxb(), append(bytes.Clone(good), 0))
	mustErr(t, err, ErrMalformed)
	_, err = a.keys.Accept(ctxb(), nil)
	mustErr(t, err, ErrMalformed)
	unchanged()

	// Tampered header field (the version) under the original signature.
	tm := *m
	tm.Version = 3
	_, err = a.keys.Accept(ctxb(), msgBytes(t, &tm))
	mustErr(t, err, ErrBadSignature)
	// A flipped byte in the envelope.
	b := bytes.Clone(good)
	b[len(b)-pqcrypto.SignatureSize-5] ^= 1
	_, err = a.keys.Accept(ctxb(), b)
	mustErr(t, err, ErrBadSignature)
	// Signed by another control plane key.
	rogue, _ := pqcrypto.GenerateSigningKey(testRand(666))
	rm := *m
	sig, _ := rogue.Sign(KeyMessageContext, rm.signedBytes())
	rm.Signature = sig
	_, err = a.keys.Accept(ctxb(), msgBytes(t, &rm))
	mustErr(t, err, ErrBadSignature)
	unchanged()

	// Expired, and from the future.
	e.clock.Advance(DefaultMessageTTL)
	_, err = a.keys.Accept(ctxb(), good)
	mustErr(t, err, ErrExpired)
	e.clock.Advance(-DefaultMessageTTL - DefaultMaxClockSkew - time.Second)
	_, err = a.keys.Accept(ctxb(), good)
	mustErr(t, err, ErrNotYetValid)
	e.clock.Advance(DefaultMaxClockSkew + time.Second)
	unchanged()

	// Accepted once, then a replay.
	if _, err := a.keys.Accept(ctxb(), good); err != nil {
		t.Fatal(err)
	}
	before = a.keys.Keys()
	_, err = a.keys.Accept(ctxb(), good)
	mustErr(t, err, ErrReplay)
	unchanged()

	// Rollback: same version, other material, genuinely signed.
	f := forger(t, e, a)
	f.CreateKey(ctxb(), "telemetry", PurposeData, Policy{AllAgents: true})
	f.Rotate(ctxb(), "telemetry")
	f.Rotate(ctxb(), "telemetry")
	for v := uint32(1); v <= 2; v++ {
		fm, err := f.MessageFor(ctxb(), a.id, "telemetry", v)
		if err != nil {
			t.Fatal(err)
		}
		_, err = a.keys.Accept(ctxb(), msgBytes(t, fm))
		mustErr(t, err, ErrRollback)
	}
	unchanged()
	// Purpose change.
	f.CreateKey(ctxb(), "swap", PurposeGossip, Policy{AllAgents: true})
	e.svc.CreateKey(ctxb(), "swap", PurposeData, Policy{AllAgents: true})
	deliver(t, mustDistribute(t, e.svc, "swap", 1), a)
	before = a.keys.Keys()
	fm, _ := f.MessageFor(ctxb(), a.id, "swap", 1)
	_, err = a.keys.Accept(ctxb(), msgBytes(t, fm))
	mustErr(t, err, ErrWrongPurpose)
	unchanged()

	// Below the minimum decryption version.
	e.svc.SetPolicy(ctxb(), "telemetry", Policy{AllAgents: true, MinDecryptVersion: 2})
	old, _ := e.svc.MessageFor(ctxb(), a.id, "telemetry", 1)
	_, err = a.keys.Accept(ctxb(), msgBytes(t, old))
	mustErr(t, err, ErrBelowMinVersion)
	unchanged()

	// Every rejection was audited and counted by reason.
	rejected := 0
	for _, ev := range e.audit.find(ActionAcceptMessage, "") {
		if ev.Result != ResultOK {
			rejected++
		}
	}
	if rejected < 13 {
		t.Fatalf("rejections audited: %d", rejected)
	}
}

func mustDistribute(t testing.TB, s *Service, name string, v uint32) []*KeyMessage {
	t.Helper()
	msgs, err := s.Distribute(ctxb(), name, v)
	if err != nil {
		t.Fatal(err)
	}
	return msgs
}

func TestDestroyedVersionCannotComeBack(t *testing.T) {
	e, a, _, _ := fleet(t)
	early, _ := e.svc.MessageFor(ctxb(), a.id, "telemetry", 1) // a second copy of v1, held back
	env1, _ := a.keys.Encrypt(ctxb(), "telemetry", []byte("x"), nil)
	e.svc.Rotate(ctxb(), "telemetry")
	deliver(t, mustDistribute(t, e.svc, "telemetry", 2), a)
	if _, err := a.keys.Decrypt(ctxb(), "telemetry", env1, nil); err != nil {
		t.Fatal(err)
	}
	e.svc.Destroy(ctxb(), "telemetry", 1)
	deliver(t, mustDistribute(t, e.svc, "telemetry", 1), a)
	_, err := a.keys.Decrypt(ctxb(), "telemetry", env1, nil)
	mustErr(t, err, ErrKeyVersionDestroyed)
	_, err = a.keys.Accept(ctxb(), msgBytes(t, early))
	mustErr(t, err, ErrRollback)
	_, err = a.keys.Decrypt(ctxb(), "telemetry", env1, nil)
	mustErr(t, err, ErrKeyVersionDestroyed)
}

func TestStatesOnlyMoveForward(t *testing.T) {
	e, a, _, _ := fleet(t)
	v1again, _ := e.svc.MessageFor(ctxb(), a.id, "telemetry", 1) // says v1 is primary
	v1copy, _ := e.svc.MessageFor(ctxb(), a.id, "telemetry", 1)  // the same, another id
	e.svc.Rotate(ctxb(), "telemetry")
	deliver(t, mustDistribute(t, e.svc, "telemetry", 2), a)
	res, err := a.keys.Accept(ctxb(), msgBytes(t, v1again))
	if err != nil || res.Changed || res.State != StateDecryptOnly {
		t.Fatalf("stale primary message: %+v %v", res, err)
	}
	if a.keys.Keys()[0].Primary != 2 {
		t.Fatal("an old primary message took the primary back")
	}
	e.svc.Retire(ctxb(), "telemetry", 1)
	deliver(t, mustDistribute(t, e.svc, "telemetry", 1), a)
	info := a.keys.Keys()[0]
	if info.Versions[0].State != StateRetired {
		t.Fatalf("v1 state on agent: %v", info.Versions[0].State)
	}
	// The earlier material message for v1 cannot bring it back to decrypt-only.
	res, err = a.keys.Accept(ctxb(), msgBytes(t, v1copy))
	if err != nil || res.Changed || res.State != StateRetired {
		t.Fatalf("retired version revived: %+v %v", res, err)
	}
}

func TestCatchUpAfterBeingOffline(t *testing.T) {
	e, a, b, _ := fleet(t)
	// b is offline through two rotations and a retirement.
	for range 2 {
		vi, _ := e.svc.Rotate(ctxb(), "telemetry")
		deliver(t, mustDistribute(t, e.svc, "telemetry", vi.Version), a)
	}
	e.svc.Retire(ctxb(), "telemetry", 1)
	e.svc.CreateKey(ctxb(), "late", PurposeData, Policy{AllowedAgents: []string{b.id}})
	msgs, err := e.svc.CatchUp(ctxb(), b.id)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 4 {
		t.Fatalf("catch-up messages: %d", len(msgs))
	}
	// Delivered newest first to show order does not matter.
	for i := len(msgs) - 1; i >= 0; i-- {
		if _, err := b.keys.Accept(ctxb(), msgBytes(t, msgs[i])); err != nil {
			t.Fatalf("catch-up message %s v%d: %v", msgs[i].Key, msgs[i].Version, err)
		}
	}
	keys := b.keys.Keys()
	if len(keys) != 2 || keys[1].Name != "telemetry" || keys[1].Primary != 3 || keys[1].Versions[0].State != StateRetired {
		t.Fatalf("b after catch-up: %+v", keys)
	}
	down, _ := e.svc.Encrypt(ctxb(), "telemetry", []byte("new"), nil)
	if _, err := b.keys.Decrypt(ctxb(), "telemetry", down, nil); err != nil {
		t.Fatal(err)
	}
	// Catching up again changes nothing.
	again, _ := e.svc.CatchUp(ctxb(), b.id)
	for _, m := range again {
		res, err := b.keys.Accept(ctxb(), msgBytes(t, m))
		if err != nil || res.Changed {
			t.Fatalf("second catch-up: %+v %v", res, err)
		}
	}
	_, err = e.svc.CatchUp(ctxb(), "nobody")
	mustErr(t, err, ErrUnknownAgent)
}

func TestDistributionFollowsPolicy(t *testing.T) {
	e, a, b, c := fleet(t)
	e.svc.CreateKey(ctxb(), "berlin", PurposeData, Policy{AllowedLabels: map[string]string{"site": "berlin"}})
	e.svc.CreateKey(ctxb(), "only-c", PurposeData, Policy{AllowedAgents: []string{c.id}})
	e.svc.CreateKey(ctxb(), "cp-only", PurposeData, Policy{})
	to := func(name string) []string {
		var ids []string
		for _, m := range mustDistribute(t, e.svc, name, 1) {
			ids = append(ids, m.AgentID)
		}
		return ids
	}
	if got := to("berlin"); !reflect.DeepEqual(got, []string{a.id, b.id}) {
		t.Fatalf("berlin key to %v", got)
	}
	if got := to("only-c"); !reflect.DeepEqual(got, []string{c.id}) {
		t.Fatalf("only-c key to %v", got)
	}
	if got := to("cp-only"); len(got) != 0 {
		t.Fatalf("control-plane key to %v", got)
	}
	_, err := e.svc.MessageFor(ctxb(), c.id, "berlin", 1)
	mustErr(t, err, ErrNotAuthorized)
	_, err = e.svc.MessageFor(ctxb(), "ghost", "berlin", 1)
	mustErr(t, err, ErrUnknownAgent)
	// Labels change at re-registration.
	if _, err := e.svc.RegisterAgent(ctxb(), c.id, c.sk.Public(), map[string]string{"site": "berlin"}); err != nil {
		t.Fatal(err)
	}
	if got := to("berlin"); len(got) != 3 {
		t.Fatalf("after relabel: %v", got)
	}
	other, _ := pqcrypto.GenerateXWingKey(testRand(77))
	_, err = e.svc.RegisterAgent(ctxb(), c.id, other.Public(), nil)
	mustErr(t, err, ErrAgentExists)
	_, err = e.svc.RegisterAgent(ctxb(), "bad id", other.Public(), nil)
	mustErr(t, err, ErrInvalidName)
	classical, _ := pqcrypto.LookupKEM("x25519")
	csk, _ := classical.GenerateKeyPair(testRand(5))
	_, err = e.svc.RegisterAgent(ctxb(), "classical", csk.Public(), nil)
	mustErr(t, err, pqcrypto.ErrWrongKey)
	agents, _ := e.svc.Agents(ctxb())
	if len(agents) != 3 {
		t.Fatalf("agents %d", len(agents))
	}
}

func TestRevocation(t *testing.T) {
	e, a, b, _ := fleet(t)
	e.svc.CreateKey(ctxb(), "gossip", PurposeGossip, Policy{AllAgents: true})
	e.svc.CreateKey(ctxb(), "only-b", PurposeData, Policy{AllowedAgents: []string{b.id}})
	deliver(t, mustDistribute(t, e.svc, "gossip", 1), a, b)
	before, _ := e.svc.Encrypt(ctxb(), "telemetry", []byte("before"), nil)

	// The attacker copies a's keyring and device key before a is decommissioned.
	stolen := filepath.Join(t.TempDir(), "stolen.keyring")
	raw, err := os.ReadFile(a.path)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(stolen, raw, 0o600)

	rotated, err := e.svc.Revoke(ctxb(), a.id)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, vi := range rotated {
		names = append(names, vi.Key)
	}
	if !reflect.DeepEqual(names, []string{"gossip", "telemetry"}) {
		t.Fatalf("revocation rotated %v", names)
	}
	info, _ := e.svc.Agent(ctxb(), a.id)
	if !info.Revoked() {
		t.Fatal("agent not marked revoked")
	}
	// Distribution of the new versions skips a.
	for _, vi := range rotated {
		for _, m := range mustDistribute(t, e.svc, vi.Key, vi.Version) {
			if m.AgentID == a.id {
				t.Fatalf("new version of %s sealed to the revoked agent", vi.Key)
			}
		}
		deliver(t, mustDistribute(t, e.svc, vi.Key, vi.Version), b)
	}
	_, err = e.svc.MessageFor(ctxb(), a.id, "telemetry", 2)
	mustErr(t, err, ErrRevoked)
	_, err = e.svc.CatchUp(ctxb(), a.id)
	mustErr(t, err, ErrRevoked)
	_, err = e.svc.RegisterAgent(ctxb(), a.id, a.sk.Public(), nil)
	mustErr(t, err, ErrRevoked)
	if again, err := e.svc.Revoke(ctxb(), a.id); err != nil || len(again) != 0 {
		t.Fatalf("second revoke: %v %v", again, err)
	}

	// Later rotations never reach a either.
	vi, _ := e.svc.Rotate(ctxb(), "telemetry")
	for _, m := range mustDistribute(t, e.svc, "telemetry", vi.Version) {
		if m.AgentID == a.id {
			t.Fatal("rotation after revocation sealed to the revoked agent")
		}
	}
	deliver(t, mustDistribute(t, e.svc, "telemetry", vi.Version), b)

	// The stolen copy opens what was sealed before, and nothing sealed after.
	copyKeys := e.openAgent(a, stolen)
	if _, err := copyKeys.Decrypt(ctxb(), "telemetry", before, nil); err != nil {
		t.Fatalf("stolen copy and old data: %v", err)
	}
	for i := range 3 {
		after, _ := e.svc.Encrypt(ctxb(), "telemetry", []byte{byte(i)}, nil)
		_, err := copyKeys.Decrypt(ctxb(), "telemetry", after, nil)
		mustErr(t, err, ErrUnknownVersion)
		fromB, _ := b.keys.Encrypt(ctxb(), "telemetry", []byte{byte(i)}, nil)
		_, err = copyKeys.Decrypt(ctxb(), "telemetry", fromB, nil)
		mustErr(t, err, ErrUnknownVersion)
	}
	// Its gossip keyring shares no future primary with the fleet.
	e.clock.Advance(DefaultGossipInstallGrace + DefaultGossipRemoveGrace)
	fleetRing, _ := b.keys.GossipKeyring("gossip", e.clock.Now())
	copyRing, _ := copyKeys.GossipKeyring("gossip", e.clock.Now())
	for _, k := range copyRing.Keys {
		for _, fk := range fleetRing.Keys {
			if bytes.Equal(k.Key, fk.Key) {
				t.Fatalf("revoked copy still shares gossip key v%d with the fleet", k.Version)
			}
		}
	}
	if ev := e.audit.find(ActionRevokeAgent, ""); len(ev) != 2 || ev[0].Agent != a.id {
		t.Fatalf("revoke audit %+v", ev)
	}
}

func TestAgentKeyringAtRest(t *testing.T) {
	e, a, _, _ := fleet(t)
	m, _ := e.svc.MessageFor(ctxb(), a.id, "telemetry", 1)
	accepted := msgBytes(t, m)
	if _, err := a.keys.Accept(ctxb(), accepted); err != nil {
		t.Fatal(err)
	}
	secret := mustSecret(t, e, "telemetry", 1)
	raw, _ := os.ReadFile(a.path)
	if bytes.Contains(raw, secret) || bytes.Contains(raw, []byte("telemetry")) {
		t.Fatal("keyring file holds names or material in the clear")
	}
	// Restart: keys and the replay memory survive.
	re := e.openAgent(a, a.path)
	env1, _ := e.svc.Encrypt(ctxb(), "telemetry", []byte("x"), nil)
	if _, err := re.Decrypt(ctxb(), "telemetry", env1, nil); err != nil {
		t.Fatal(err)
	}
	_, err := re.Accept(ctxb(), accepted)
	mustErr(t, err, ErrReplay)
	// Another device key cannot open it.
	other, _ := NewDeviceKey(bytes.Repeat([]byte{7}, 32))
	_, err = OpenAgentKeys(ctxb(), AgentConfig{AgentID: a.id, PrivateKey: a.sk, ControlPlaneKey: e.signer.Public(), DeviceKey: other, Store: FileBlobStore{Path: a.path}})
	mustErr(t, err, pqcrypto.ErrAuthFailed)
	// Another agent id cannot open it either (bound as associated data).
	_, err = OpenAgentKeys(ctxb(), AgentConfig{AgentID: "agent-z", PrivateKey: a.sk, ControlPlaneKey: e.signer.Public(), DeviceKey: a.dev, Store: FileBlobStore{Path: a.path}})
	mustErr(t, err, pqcrypto.ErrAuthFailed)
	// A damaged file.
	raw[len(raw)-3] ^= 1
	os.WriteFile(a.path, raw, 0o600)
	_, err = OpenAgentKeys(ctxb(), AgentConfig{AgentID: a.id, PrivateKey: a.sk, ControlPlaneKey: e.signer.Public(), DeviceKey: a.dev, Store: FileBlobStore{Path: a.path}})
	mustErr(t, err, pqcrypto.ErrAuthFailed)
}

func TestAgentKeyringInSQLite(t *testing.T) {
	e, a, _, _ := fleet(t)
	st, err := OpenSQLite(filepath.Join(t.TempDir(), "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := AgentConfig{AgentID: a.id, PrivateKey: a.sk, ControlPlaneKey: e.signer.Public(), DeviceKey: a.dev, Store: st.Blob("keyring"), Clock: e.clock}
	k, err := OpenAgentKeys(ctxb(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := e.svc.MessageFor(ctxb(), a.id, "telemetry", 1)
	if _, err := k.Accept(ctxb(), msgBytes(t, m)); err != nil {
		t.Fatal(err)
	}
	k2, err := OpenAgentKeys(ctxb(), cfg)
	if err != nil || len(k2.Keys()) != 1 {
		t.Fatalf("reopen from sqlite: %v", err)
	}
	if fileContains(t, st.Path(), mustSecret(t, e, "telemetry", 1)) {
		t.Fatal("material in the clear in the agent database")
	}
}

// failSave is a blob store whose saves fail.
type failSave struct{ FileBlobStore }

func (f failSave) Save(context.Context, []byte) error { return os.ErrPermission }

func TestAcceptLosesNothingWhenSaveFails(t *testing.T) {
	e, a, _, _ := fleet(t)
	k, err := OpenAgentKeys(ctxb(), AgentConfig{AgentID: a.id, PrivateKey: a.sk, ControlPlaneKey: e.signer.Public(), DeviceKey: a.dev, Store: failSave{FileBlobStore{Path: a.path}}, Clock: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	before := k.Keys()
	vi, _ := e.svc.Rotate(ctxb(), "telemetry")
	m, _ := e.svc.MessageFor(ctxb(), a.id, "telemetry", vi.Version)
	_, err = k.Accept(ctxb(), msgBytes(t, m))
	if err == nil || !reflect.DeepEqual(k.Keys(), before) {
		t.Fatalf("failed save: %v; keyring changed: %v", err, !reflect.DeepEqual(k.Keys(), before))
	}
	if len(k.seenIDs()) != 1 {
		t.Fatalf("seen ids after a failed save: %v", k.seenIDs())
	}
}

func TestAgentKeysErrors(t *testing.T) {
	e, a, _, _ := fleet(t)
	e.svc.CreateKey(ctxb(), "gossip", PurposeGossip, Policy{AllAgents: true})
	deliver(t, mustDistribute(t, e.svc, "gossip", 1), a)
	_, err := a.keys.Encrypt(ctxb(), "missing", nil, nil)
	mustErr(t, err, ErrUnknownKey)
	_, err = a.keys.Encrypt(ctxb(), "gossip", nil, nil)
	mustErr(t, err, ErrWrongPurpose)
	_, err = a.keys.GossipKeyring("telemetry", epoch)
	mustErr(t, err, ErrWrongPurpose)
	env1, _ := e.svc.Encrypt(ctxb(), "telemetry", []byte("x"), nil)
	_, err = a.keys.Decrypt(ctxb(), "gossip", env1, nil)
	mustErr(t, err, ErrWrongKey)
	_, err = a.keys.Decrypt(ctxb(), "telemetry", []byte("junk"), nil)
	mustErr(t, err, pqcrypto.ErrMalformed)
	e.svc.Rotate(ctxb(), "telemetry")
	deliver(t, mustDistribute(t, e.svc, "telemetry", 2), a)
	e.svc.Retire(ctxb(), "telemetry", 1)
	deliver(t, mustDistribute(t, e.svc, "telemetry", 1), a)
	_, err = a.keys.Decrypt(ctxb(), "telemetry", env1, nil)
	mustErr(t, err, ErrKeyVersionRetired)
	e.svc.SetPolicy(ctxb(), "telemetry", Policy{AllAgents: true, MinDecryptVersion: 2})
	deliver(t, mustDistribute(t, e.svc, "telemetry", 2), a)
	_, err = a.keys.DataKey("telemetry", 1)
	mustErr(t, err, ErrBelowMinVersion)
	_, err = a.keys.OpenKeys("telemetry", nil).DataKey("other", 2)
	mustErr(t, err, ErrWrongKey)
	if _, err := a.keys.OpenKeys("telemetry", nil).DataKey("telemetry", 2); err != nil {
		t.Fatal(err)
	}

	// Configuration.
	base := AgentConfig{AgentID: a.id, PrivateKey: a.sk, ControlPlaneKey: e.signer.Public(), DeviceKey: a.dev}
	classical, _ := pqcrypto.LookupKEM("x25519")
	csk, _ := classical.GenerateKeyPair(testRand(5))
	for name, mut := range map[string]func(*AgentConfig){
		"bad id":     func(c *AgentConfig) { c.AgentID = "" },
		"no key":     func(c *AgentConfig) { c.PrivateKey = nil },
		"classical":  func(c *AgentConfig) { c.PrivateKey = csk },
		"no cp key":  func(c *AgentConfig) { c.ControlPlaneKey = nil },
		"no device":  func(c *AgentConfig) { c.DeviceKey = nil },
		"bad suite":  func(c *AgentConfig) { c.Suite = pqcrypto.SuiteXWingAES256GCM },
		"neg skew":   func(c *AgentConfig) { c.MaxClockSkew = -1 },
		"neg replay": func(c *AgentConfig) { c.ReplayCacheSize = -1 },
	} {
		c := base
		mut(&c)
		_, err := OpenAgentKeys(ctxb(), c)
		mustErr(t, err, ErrInvalidConfig)
		_ = name
	}
	reg := prometheus.NewRegistry()
	base.Registry = reg
	k, err := OpenAgentKeys(ctxb(), base)
	if err != nil {
		t.Fatal(err)
	}
	k.Accept(ctxb(), []byte("EFKM"))
	if v := metricValue(t, reg, "dkms_agent_key_messages_total", map[string]string{"result": "malformed"}); v != 1 {
		t.Fatalf("malformed messages counted %v", v)
	}
}

func TestReplayMemoryIsBounded(t *testing.T) {
	seen := map[string]time.Time{}
	now := epoch
	for i := range 10 {
		rememberSeen(seen, string(rune('a'+i)), now.Add(time.Duration(i+1)*time.Hour), now, 4)
	}
	if len(seen) != 4 {
		t.Fatalf("kept %d ids, bound 4", len(seen))
	}
	for _, id := range []string{"g", "h", "i", "j"} {
		if _, ok := seen[id]; !ok {
			t.Fatalf("dropped %s, a later-expiring id", id)
		}
	}
	// Expired ids go first.
	rememberSeen(seen, "k", now.Add(20*time.Hour), now.Add(8*time.Hour), 4)
	if _, ok := seen["g"]; ok {
		t.Fatal("expired id kept")
	}
	if _, ok := seen["h"]; ok {
		t.Fatal("id expiring now kept")
	}
	if len(seen) != 3 {
		t.Fatalf("after expiry: %d", len(seen))
	}

	// Through the keyring: with a bound of 2, replays within the bound are caught.
	e, a, _, _ := fleet(t)
	k, _ := OpenAgentKeys(ctxb(), AgentConfig{AgentID: a.id, PrivateKey: a.sk, ControlPlaneKey: e.signer.Public(), DeviceKey: a.dev, ReplayCacheSize: 2, Clock: e.clock})
	var raw [][]byte
	for range 3 {
		m, _ := e.svc.MessageFor(ctxb(), a.id, "telemetry", 1)
		raw = append(raw, msgBytes(t, m))
		e.clock.Advance(time.Second)
	}
	for _, r := range raw {
		if _, err := k.Accept(ctxb(), r); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(k.seenIDs()); n != 2 {
		t.Fatalf("keyring remembers %d ids", n)
	}
	_, err := k.Accept(ctxb(), raw[2])
	mustErr(t, err, ErrReplay)
	// The forgotten one is accepted again and changes nothing.
	res, err := k.Accept(ctxb(), raw[0])
	if err != nil || res.Changed {
		t.Fatalf("forgotten replay: %+v %v", res, err)
	}
}

func TestDeviceKeyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "device.key")
	k1, err := LoadOrCreateDeviceKeyFile(p, testRand(1))
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("device key file mode %v", fi.Mode())
	}
	k2, err := LoadOrCreateDeviceKeyFile(p, testRand(2))
	if err != nil || !k1.Equal(k2) {
		t.Fatalf("reload: %v", err)
	}
	os.WriteFile(p, []byte("abc"), 0o600)
	_, err = LoadOrCreateDeviceKeyFile(p, nil)
	mustErr(t, err, ErrMalformed)
	_, err = NewDeviceKey([]byte("short"))
	mustErr(t, err, pqcrypto.ErrInvalidKey)
}
