package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// GenesisHash is the prev_hash of the first audit record.
const GenesisHash = "0000000000000000000000000000000000000000000000000000000000000000"

// auditHashInput is the canonical form hashed for each record. Field order
// is fixed by the struct, times are UTC RFC 3339 with nanoseconds.
type auditHashInput struct {
	Seq      int64  `json:"seq"`
	Time     string `json:"time"`
	Actor    string `json:"actor"`
	Action   string `json:"action"`
	Target   string `json:"target"`
	Result   string `json:"result"`
	PrevHash string `json:"prev_hash"`
}

// AuditHash computes the hash of a record from its fields and PrevHash:
// hex(SHA-256(canonical JSON)). The record's own Hash field is ignored.
func AuditHash(r cpapi.AuditRecord) string {
	b, err := json.Marshal(auditHashInput{
		Seq:      r.Seq,
		Time:     r.Time.UTC().Format(time.RFC3339Nano),
		Actor:    r.Actor,
		Action:   r.Action,
		Target:   r.Target,
		Result:   r.Result,
		PrevHash: r.PrevHash,
	})
	if err != nil {
		// Marshalling strings and an int cannot fail.
		panic("controlplane: audit hash: " + err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// auditChecker verifies records fed to it in sequence order.
type auditChecker struct {
	v        cpapi.AuditVerification
	prevSeq  int64
	prevHash string
}

func newAuditChecker() *auditChecker { return &auditChecker{prevHash: GenesisHash} }

func (c *auditChecker) fail(seq int64, format string, args ...any) bool {
	c.v.BadSeq = seq
	c.v.Problem = fmt.Sprintf(format, args...)
	return false
}

// add checks one record; it returns false at the first problem.
func (c *auditChecker) add(r cpapi.AuditRecord) bool {
	if r.Seq != c.prevSeq+1 {
		return c.fail(r.Seq, "record %d follows record %d: records %d..%d are missing or reordered", r.Seq, c.prevSeq, c.prevSeq+1, r.Seq-1)
	}
	if r.PrevHash != c.prevHash {
		return c.fail(r.Seq, "record %d: prev_hash %s does not match hash %s of record %d", r.Seq, short(r.PrevHash), short(c.prevHash), c.prevSeq)
	}
	if h := AuditHash(r); h != r.Hash {
		return c.fail(r.Seq, "record %d: content does not match its hash (stored %s, computed %s): the record was edited", r.Seq, short(r.Hash), short(h))
	}
	c.prevSeq, c.prevHash = r.Seq, r.Hash
	c.v.Records++
	return true
}

func (c *auditChecker) finish(headSeq int64, headHash string) cpapi.AuditVerification {
	c.v.HeadSeq, c.v.HeadHash = headSeq, headHash
	if c.v.Problem != "" {
		return c.v
	}
	if c.prevSeq != headSeq || c.prevHash != headHash {
		c.v.Problem = fmt.Sprintf("newest record is %d (%s) but the recorded head is %d (%s): records were removed from the end", c.prevSeq, short(c.prevHash), headSeq, short(headHash))
		return c.v
	}
	c.v.OK = true
	return c.v
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// VerifyAuditRecords checks a complete, ordered audit log against its
// recorded head.
func VerifyAuditRecords(records []cpapi.AuditRecord, headSeq int64, headHash string) cpapi.AuditVerification {
	c := newAuditChecker()
	for _, r := range records {
		if !c.add(r) {
			break
		}
	}
	return c.finish(headSeq, headHash)
}

// VerifyAudit reads the whole audit log of s page by page and checks the
// chain. The returned error is non-nil only when the store cannot be read;
// a broken chain is reported in the result (OK false, with Problem) and is
// not an error.
func VerifyAudit(ctx context.Context, s Store) (cpapi.AuditVerification, error) {
	headSeq, headHash, err := s.AuditHead(ctx)
	if err != nil {
		return cpapi.AuditVerification{}, fmt.Errorf("controlplane: verify audit: %w", err)
	}
	c := newAuditChecker()
	var after int64
	const page = 1000
	for {
		recs, err := s.ListAudit(ctx, after, page)
		if err != nil {
			return cpapi.AuditVerification{}, fmt.Errorf("controlplane: verify audit: %w", err)
		}
		for _, r := range recs {
			if !c.add(r) {
				return c.finish(headSeq, headHash), nil
			}
		}
		if len(recs) < page {
			break
		}
		after = recs[len(recs)-1].Seq
	}
	return c.finish(headSeq, headHash), nil
}

// auditResult formats the result field for a failed call.
func auditResult(err error) string {
	if err == nil {
		return "ok"
	}
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "controlplane: ")
	if he, ok := err.(*httpError); ok {
		if he.status == 403 {
			return "denied: " + msg
		}
		return fmt.Sprintf("error %d: %s", he.status, msg)
	}
	return "error: " + msg
}
