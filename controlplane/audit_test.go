package controlplane

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// auditFixture runs some audited operations and stops the server, leaving
// the database for tampering.
func auditFixture(t *testing.T) *testEnv {
	t.Helper()
	// Dev unseal: the key service's first start then writes no audit
	// record but the creation of the two built-in keys (after the admin
	// token's), so the sequence numbers below are known.
	e := newTestEnv(t, func(c *Config) { c.Keys.DevUnseal = true })
	a := e.enroll("au", map[string]string{"site": "x"})
	if _, err := e.admin.UpdateLabels(e.ctx(), a.id, cpapi.LabelsPatch{Set: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	tok, err := e.admin.CreateAPIToken(e.ctx(), "v", cpapi.RoleViewer, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.RevokeAPIToken(e.ctx(), tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Decommission(e.ctx(), a.id); err != nil {
		t.Fatal(err)
	}
	v, err := e.admin.VerifyAudit(e.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if !v.OK || v.Records != 9 || v.HeadSeq != 9 {
		t.Fatalf("untampered log: %+v", v)
	}
	recs, _ := e.admin.ListAudit(e.ctx(), 0, 100)
	wantActions := []string{"token.create", "key.create-key", "key.create-key", "enrollment-token.create", "agent.enroll", "agent.labels", "token.create", "token.revoke", "agent.decommission"}
	for i, r := range recs.Records {
		if r.Action != wantActions[i] || r.Result != "ok" || r.Seq != int64(i+1) {
			t.Errorf("record %d: %+v, want action %s ok", i, r, wantActions[i])
		}
		if i > 0 && r.PrevHash != recs.Records[i-1].Hash {
			t.Errorf("record %d not linked", i)
		}
	}
	if recs.Records[4].Actor != "enrollment-token:"+recs.Records[3].Target || recs.Records[5].Actor == "" {
		t.Errorf("actors: %+v", recs.Records)
	}
	if err := e.srv.Close(); err != nil {
		t.Fatal(err)
	}
	return e
}

func tamper(t *testing.T, dir, stmt string) {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, DatabaseFile))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	res, err := db.Exec(stmt)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("%s changed %d rows", stmt, n)
	}
}

func verifyDir(t *testing.T, dir string) cpapi.AuditVerification {
	t.Helper()
	st, err := OpenSQLite(filepath.Join(dir, DatabaseFile), SQLiteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	v, err := VerifyAudit(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestAuditVerifyDetectsEditedRecord(t *testing.T) {
	e := auditFixture(t)
	tamper(t, e.dir, `UPDATE audit_log SET actor = 'token:someone-else' WHERE seq = 4`)
	v := verifyDir(t, e.dir)
	if v.OK || v.BadSeq != 4 || !strings.Contains(v.Problem, "edited") {
		t.Fatalf("edited record: %+v", v)
	}
	// The same through the API.
	e.start()
	av, err := e.admin.VerifyAudit(e.ctx())
	if err != nil {
		t.Fatal(err)
	}
	if av.OK || av.BadSeq != 4 {
		t.Fatalf("API verify: %+v", av)
	}
}

func TestAuditVerifyDetectsEditedTime(t *testing.T) {
	e := auditFixture(t)
	tamper(t, e.dir, `UPDATE audit_log SET time = time + 1 WHERE seq = 2`)
	if v := verifyDir(t, e.dir); v.OK || v.BadSeq != 2 {
		t.Fatalf("edited time: %+v", v)
	}
}

func TestAuditVerifyDetectsDeletedRecord(t *testing.T) {
	e := auditFixture(t)
	tamper(t, e.dir, `DELETE FROM audit_log WHERE seq = 3`)
	v := verifyDir(t, e.dir)
	if v.OK || v.BadSeq != 4 || !strings.Contains(v.Problem, "missing") {
		t.Fatalf("deleted record: %+v", v)
	}
}

func TestAuditVerifyDetectsDeletedNewestRecord(t *testing.T) {
	e := auditFixture(t)
	tamper(t, e.dir, `DELETE FROM audit_log WHERE seq = 9`)
	v := verifyDir(t, e.dir)
	if v.OK || !strings.Contains(v.Problem, "removed from the end") {
		t.Fatalf("deleted newest record: %+v", v)
	}
}

func TestAuditVerifyDetectsRehashedRecordWithoutRelinking(t *testing.T) {
	e := auditFixture(t)
	// Edit a record and recompute its own hash: the next record's
	// prev_hash no longer matches.
	st, err := OpenSQLite(filepath.Join(e.dir, DatabaseFile), SQLiteOptions{})
	if err != nil {
		t.Fatal(err)
	}
	recs, err := st.ListAudit(context.Background(), 4, 1)
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	r := recs[0]
	r.Result = "ok (nothing happened)"
	r.Hash = AuditHash(r)
	tamper(t, e.dir, `UPDATE audit_log SET result = '`+r.Result+`', hash = '`+r.Hash+`' WHERE seq = 5`)
	v := verifyDir(t, e.dir)
	if v.OK || v.BadSeq != 6 || !strings.Contains(v.Problem, "prev_hash") {
		t.Fatalf("rehashed record: %+v", v)
	}
}

func TestVerifyAuditRecordsUnit(t *testing.T) {
	var recs []cpapi.AuditRecord
	prev := GenesisHash
	for i := int64(1); i <= 3; i++ {
		r := cpapi.AuditRecord{Seq: i, Time: time.Unix(i, 0).UTC(), Actor: "a", Action: "x", Target: "t", Result: "ok", PrevHash: prev}
		r.Hash = AuditHash(r)
		prev = r.Hash
		recs = append(recs, r)
	}
	if v := VerifyAuditRecords(recs, 3, prev); !v.OK || v.Records != 3 {
		t.Fatalf("%+v", v)
	}
	if v := VerifyAuditRecords(nil, 0, GenesisHash); !v.OK {
		t.Fatalf("empty: %+v", v)
	}
	swapped := []cpapi.AuditRecord{recs[1], recs[0], recs[2]}
	if v := VerifyAuditRecords(swapped, 3, prev); v.OK {
		t.Fatal("reordered log verified")
	}
}
