package dkms

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/internal/testutil"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

func TestSealedUntilThresholdShares(t *testing.T) {
	e := newEnv(t)
	if _, err := e.svc.CreateKey(ctxb(), "telemetry", PurposeData, Policy{}); err != nil {
		t.Fatal(err)
	}
	env1, err := e.svc.Encrypt(ctxb(), "telemetry", []byte("reading"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.open(false); err != nil {
		t.Fatal(err)
	}
	st := e.svc.Status()
	if !st.Initialized || !st.Sealed || st.Threshold != 3 || st.Shares != 5 || st.DevMode {
		t.Fatalf("status after restart: %+v", st)
	}
	// Sealed: material operations fail, metadata stays readable.
	_, err = e.svc.Decrypt(ctxb(), "telemetry", env1, nil)
	mustErr(t, err, ErrSealed)
	_, err = e.svc.Encrypt(ctxb(), "telemetry", nil, nil)
	mustErr(t, err, ErrSealed)
	_, err = e.svc.Rotate(ctxb(), "telemetry")
	mustErr(t, err, ErrSealed)
	_, err = e.svc.CreateKey(ctxb(), "other", PurposeData, Policy{})
	mustErr(t, err, ErrSealed)
	if info, err := e.svc.Key(ctxb(), "telemetry"); err != nil || info.Primary != 1 {
		t.Fatalf("metadata while sealed: %+v %v", info, err)
	}

	// One share: progress 1.
	us, err := e.svc.Unseal(ctxb(), e.shares[4])
	if err != nil || !us.Sealed || us.Progress != 1 || us.Threshold != 3 {
		t.Fatalf("first share: %+v %v", us, err)
	}
	// The same share again.
	_, err = e.svc.Unseal(ctxb(), e.shares[4])
	mustErr(t, err, ErrDuplicateShare)
	// A share of another root.
	_, foreign, _ := splitRoot(testRand(50), 1, 3, 5)
	_, err = e.svc.Unseal(ctxb(), foreign[0])
	mustErr(t, err, ErrBadShare)
	if !strings.Contains(err.Error(), "kcv") {
		t.Fatalf("foreign share error does not name the kcv: %v", err)
	}
	// A share whose value was altered (valid checksum, valid scalar).
	altered := e.shares[0]
	altered.Value[0] ^= 1
	_, err = e.svc.Unseal(ctxb(), altered)
	mustErr(t, err, ErrBadShare)
	if !strings.Contains(err.Error(), "share 1 does not match") {
		t.Fatalf("altered share not named: %v", err)
	}
	// A share claiming another split.
	claims := e.shares[0]
	claims.Threshold = 2
	_, err = e.svc.Unseal(ctxb(), claims)
	mustErr(t, err, ErrBadShare)
	if st := e.svc.Status(); st.Progress != 1 {
		t.Fatalf("rejected shares counted: progress %d", st.Progress)
	}
	if _, err := e.svc.Unseal(ctxb(), e.shares[2]); err != nil {
		t.Fatal(err)
	}
	us, err = e.svc.Unseal(ctxb(), e.shares[0])
	if err != nil || us.Sealed {
		t.Fatalf("third share: %+v %v", us, err)
	}
	pt, err := e.svc.Decrypt(ctxb(), "telemetry", env1, nil)
	if err != nil || string(pt) != "reading" {
		t.Fatalf("decrypt after unseal: %q %v", pt, err)
	}
	// Unseal on an unsealed service reports status.
	if us, err := e.svc.Unseal(ctxb(), e.shares[1]); err != nil || us.Sealed {
		t.Fatalf("unseal when unsealed: %+v %v", us, err)
	}
	// Seal again.
	e.svc.Seal(ctxb())
	_, err = e.svc.Decrypt(ctxb(), "telemetry", env1, nil)
	mustErr(t, err, ErrSealed)
	if got := e.audit.find(ActionUnseal, ""); len(got) < 7 {
		t.Fatalf("unseal attempts audited: %d", len(got))
	}
}

// TestUnsealCombinationChecked covers shares that pass every per-share check
// but combine to another key (stored digests replaced): the key-check value
// catches it and the attempt starts over.
func TestUnsealCombinationChecked(t *testing.T) {
	e := newEnv(t)
	if err := e.open(false); err != nil {
		t.Fatal(err)
	}
	bad := e.shares[2]
	bad.Value[1] ^= 0x10
	err := e.store.Update(ctxb(), func(tx Tx) error {
		b, err := tx.GetMeta(metaRoot)
		if err != nil {
			return err
		}
		var m rootMeta
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		d := bad.digest()
		m.Digests[2] = hex.EncodeToString(d[:])
		b, _ = json.Marshal(m)
		return tx.PutMeta(metaRoot, b)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.open(false); err != nil {
		t.Fatal(err)
	}
	for _, s := range []Share{e.shares[0], e.shares[1]} {
		if _, err := e.svc.Unseal(ctxb(), s); err != nil {
			t.Fatal(err)
		}
	}
	st, err := e.svc.Unseal(ctxb(), bad)
	mustErr(t, err, ErrBadShare)
	if !st.Sealed || st.Progress != 0 {
		t.Fatalf("after failed combination: %+v", st)
	}
	if !strings.Contains(err.Error(), "combine") {
		t.Fatalf("error does not say the combination failed: %v", err)
	}
}

func TestInitializeRules(t *testing.T) {
	e := newEnv(t)
	_, err := e.svc.Initialize(ctxb(), 2, 3)
	mustErr(t, err, ErrAlreadyInitialized)

	// A fresh store: not initialized.
	e2 := &env{t: t, dir: t.TempDir(), clock: newClock(), audit: &recorder{}, logs: &testutil.SyncBuffer{}, signer: e.signer}
	e2.path = filepath.Join(e2.dir, "keys.db")
	if err := e2.open(false); err != nil {
		t.Fatal(err)
	}
	if st := e2.svc.Status(); st.Initialized {
		t.Fatalf("fresh store initialized: %+v", st)
	}
	_, err = e2.svc.CreateKey(ctxb(), "k", PurposeData, Policy{})
	mustErr(t, err, ErrNotInitialized)
	_, err = e2.svc.Unseal(ctxb(), e.shares[0])
	mustErr(t, err, ErrNotInitialized)
	_, err = e2.svc.Initialize(ctxb(), 4, 3)
	mustErr(t, err, ErrInvalidConfig)
	if _, err := e2.svc.Initialize(ctxb(), 1, 1); err != nil {
		t.Fatal(err)
	}
}

func TestDevMode(t *testing.T) {
	e := &env{t: t, dir: t.TempDir(), clock: newClock(), audit: &recorder{}, logs: &testutil.SyncBuffer{}}
	e.path = filepath.Join(e.dir, "dev.db")
	var err error
	if e.signer, err = pqcrypto.GenerateSigningKey(testRand(4)); err != nil {
		t.Fatal(err)
	}
	if err := e.open(true); err != nil {
		t.Fatal(err)
	}
	if st := e.svc.Status(); st.Sealed || !st.DevMode {
		t.Fatalf("dev mode status %+v", st)
	}
	if _, err := e.svc.CreateKey(ctxb(), "sim", PurposeData, Policy{}); err != nil {
		t.Fatal(err)
	}
	env1, err := e.svc.Encrypt(ctxb(), "sim", []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(e.logs.String(), "DEV MODE"); n != 1 {
		t.Fatalf("dev warnings after first start: %d", n)
	}
	// Restart: unsealed again, warned again.
	if err := e.open(true); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(e.logs.String(), "DEV MODE"); n != 2 {
		t.Fatalf("dev warnings after restart: %d", n)
	}
	if _, err := e.svc.Decrypt(ctxb(), "sim", env1, nil); err != nil {
		t.Fatal(err)
	}
	// The root really is in the clear in the store.
	var rootKey []byte
	e.store.View(ctxb(), func(tx Tx) error { rootKey, err = tx.GetMeta(metaDevRoot); return err })
	if len(rootKey) != KeySize || hex.EncodeToString(func() []byte { k := KeyCheckValue(rootKey); return k[:] }()) != e.svc.Status().RootKCV {
		t.Fatal("dev root not stored in the clear")
	}
	_, err = e.svc.RekeyRoot(ctxb(), 2, 3)
	mustErr(t, err, ErrDevStore)
	// A dev store refuses production mode, and the other way round.
	mustErr(t, e.open(false), ErrDevStore)
	p := newEnv(t)
	mustErr(t, p.open(true), ErrDevStore)
}

func TestRekeyRoot(t *testing.T) {
	e := newEnv(t)
	if _, err := e.svc.CreateKey(ctxb(), "telemetry", PurposeData, Policy{}); err != nil {
		t.Fatal(err)
	}
	env1, _ := e.svc.Encrypt(ctxb(), "telemetry", []byte("old data"), nil)
	old := e.shares
	newShares, err := e.svc.RekeyRoot(ctxb(), 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	if newShares[0].RootVersion != 2 || e.svc.Status().RootVersion != 2 {
		t.Fatalf("root version after rekey: %v", newShares[0])
	}
	if err := e.open(false); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.Unseal(ctxb(), old[0])
	mustErr(t, err, ErrBadShare)
	for _, s := range newShares[1:] {
		if _, err := e.svc.Unseal(ctxb(), s); err != nil {
			t.Fatal(err)
		}
	}
	if pt, err := e.svc.Decrypt(ctxb(), "telemetry", env1, nil); err != nil || string(pt) != "old data" {
		t.Fatalf("decrypt after rekey: %v", err)
	}
}

func TestRotateKEK(t *testing.T) {
	e := newEnv(t)
	e.svc.CreateKey(ctxb(), "a", PurposeData, Policy{})
	e.svc.CreateKey(ctxb(), "g", PurposeGossip, Policy{})
	e.svc.Rotate(ctxb(), "a")
	envA, _ := e.svc.Encrypt(ctxb(), "a", []byte("payload"), nil)
	var before []byte
	e.store.View(ctxb(), func(tx Tx) error {
		v, err := tx.GetVersion("a", 2)
		before = v.Wrapped
		return err
	})
	v, err := e.svc.RotateKEK(ctxb())
	if err != nil || v != 2 {
		t.Fatalf("rotate kek: %d %v", v, err)
	}
	e.store.View(ctxb(), func(tx Tx) error {
		old, _ := tx.GetVersion(KEKName, 1)
		if old.State != StateDestroyed || old.Wrapped != nil {
			t.Errorf("old KEK: %v", old.State)
		}
		kv, _ := tx.GetVersion("a", 2)
		h, _, err := pqcrypto.ParseHeader(kv.Wrapped)
		if err != nil || h.KeyID != KEKName || h.KeyVersion != 2 {
			t.Errorf("data key not rewrapped under KEK v2: %+v %v", h, err)
		}
		return nil
	})
	if fileContains(t, e.path, before) {
		t.Fatal("material wrapped under the destroyed KEK still in the database files")
	}
	e.reopenUnsealed()
	if pt, err := e.svc.Decrypt(ctxb(), "a", envA, nil); err != nil || string(pt) != "payload" {
		t.Fatalf("decrypt after KEK rotation and restart: %v", err)
	}
	if _, err := e.svc.GossipKeyring(ctxb(), "g", epoch); err != nil {
		t.Fatal(err)
	}
}

func TestOpenConfigValidation(t *testing.T) {
	e := newEnv(t)
	base := e.config(false)
	for name, mut := range map[string]func(*Config){
		"no store":        func(c *Config) { c.Store = nil },
		"no signer":       func(c *Config) { c.SigningKey = nil },
		"bad signer id":   func(c *Config) { c.SignerID = "with space" },
		"negative ttl":    func(c *Config) { c.MessageTTL = -1 },
		"recipient suite": func(c *Config) { c.Suite = pqcrypto.SuiteXWingAES256GCM },
		"classical suite": func(c *Config) { c.RecipientSuite = pqcrypto.SuiteX25519AES256GCM },
		"unknown suite":   func(c *Config) { c.Suite = "rot13" },
	} {
		c := base
		mut(&c)
		if _, err := Open(ctxb(), c); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			mustErr(t, err, ErrInvalidConfig)
		}
	}
	_, err := OpenSQLite("")
	mustErr(t, err, ErrInvalidConfig)
}

// TestNoMaterialInTheClear checks that neither data key material nor the
// root key appears in the database files.
func TestNoMaterialInTheClear(t *testing.T) {
	e := newEnv(t)
	e.svc.CreateKey(ctxb(), "telemetry", PurposeData, Policy{})
	dk, err := e.svc.PrimaryDataKey(ctxb(), "telemetry")
	if err != nil {
		t.Fatal(err)
	}
	root, err := combineShares(e.shares[:3])
	if err != nil {
		t.Fatal(err)
	}
	for name, secret := range map[string][]byte{"data key": dk.Secret(), "root key": root} {
		if fileContains(t, e.path, secret) {
			t.Fatalf("%s in the clear in the store", name)
		}
	}
	// The share digests are stored, the shares are not.
	for _, s := range e.shares {
		if fileContains(t, e.path, s.Value[:]) {
			t.Fatal("a share value is in the store")
		}
	}
	_ = sha256.Sum256
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	c := e.config(false)
	c.Registry = reg
	e.store.Close()
	var err error
	if e.store, err = OpenSQLite(e.path); err != nil {
		t.Fatal(err)
	}
	c.Store = e.store
	svc, err := Open(ctxb(), c)
	if err != nil {
		t.Fatal(err)
	}
	if v := metricValue(t, reg, "dkms_sealed", nil); v != 1 {
		t.Fatalf("sealed gauge %v", v)
	}
	for _, s := range e.shares[:3] {
		svc.Unseal(ctxb(), s)
	}
	if v := metricValue(t, reg, "dkms_sealed", nil); v != 0 {
		t.Fatalf("sealed gauge after unseal %v", v)
	}
	svc.Encrypt(ctxb(), "missing", nil, nil)
	if v := metricValue(t, reg, "dkms_operations_total", map[string]string{"action": ActionEncrypt, "result": "error"}); v != 1 {
		t.Fatalf("failed encrypts counted %v", v)
	}
	if _, err := Open(ctxb(), c); err == nil {
		t.Fatal("registering metrics twice on one registry succeeded")
	}
	_ = bytes.Equal
}

// metricValue reads one gauge or counter from reg.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if want, ok := labels[lp.GetName()]; ok && want != lp.GetValue() {
					continue metrics
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}
