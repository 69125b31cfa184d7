package dkms

import (
	"context"
	"time"
)

// Audit actions. Every key operation reports one AuditEvent with one of these
// actions.
const (
	ActionInitialize    = "initialize"
	ActionUnseal        = "unseal"
	ActionSeal          = "seal"
	ActionRekeyRoot     = "rekey-root"
	ActionRotateKEK     = "rotate-kek"
	ActionCreateKey     = "create-key"
	ActionRotate        = "rotate"
	ActionSetPolicy     = "set-policy"
	ActionRetire        = "retire"
	ActionDestroy       = "destroy"
	ActionEncrypt       = "encrypt"
	ActionDecrypt       = "decrypt"
	ActionRewrap        = "rewrap"
	ActionRegisterAgent = "register-agent"
	ActionRevokeAgent   = "revoke-agent"
	ActionDistribute    = "distribute"
	ActionAcceptMessage = "accept-key-message"
)

// ResultOK is AuditEvent.Result of an operation that succeeded; a failed
// operation carries its error text instead.
const ResultOK = "ok"

// AuditEvent describes one key operation and its outcome. It never carries
// key material.
type AuditEvent struct {
	Time    time.Time
	Actor   string // who asked: see WithActor; "system" when unset
	Action  string // one of the Action constants
	Key     string // key name, empty for service-wide operations
	Version uint32 // key version the operation touched, 0 when none
	Agent   string // agent id for distribution and revocation, else empty
	Result  string // ResultOK or the error text
}

// Auditor receives every key operation. The control plane plugs its
// hash-chained audit log in here. Audit is called after the operation, with
// its result, from the goroutine that ran it; it must be safe for concurrent
// use and should not block for long. An Auditor that cannot record an event
// decides itself what to do (log, alert, stop the process): dkms does not undo
// an operation that already happened.
type Auditor interface {
	Audit(ctx context.Context, e AuditEvent)
}

// AuditFunc adapts a function to the Auditor interface.
type AuditFunc func(ctx context.Context, e AuditEvent)

// Audit calls f.
func (f AuditFunc) Audit(ctx context.Context, e AuditEvent) { f(ctx, e) }

type nopAuditor struct{}

func (nopAuditor) Audit(context.Context, AuditEvent) {}

type actorKey struct{}

// WithActor returns a context naming who performs the operations run with it
// (an operator, "controlplane", an agent id). Audit events carry it.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// ActorFrom returns the actor WithActor stored in ctx, or "system".
func ActorFrom(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return "system"
}

func resultOf(err error) string {
	if err == nil {
		return ResultOK
	}
	return err.Error()
}
