package uplink

import (
	"context"
	"crypto"
	"fmt"
	"os"
	"strings"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/internal/buildinfo"
)

// enrollLoop enrolls with token until it succeeds, the token is refused,
// or the uplink stops.
func (u *Uplink) enrollLoop(ctx context.Context, client *cpapi.Client, key crypto.Signer, token string) {
	csr, err := cpapi.CreateCSR(key, u.name)
	if err != nil {
		u.setError("enroll", err)
		u.log.Error("cannot enroll: CSR", "err", err)
		return
	}
	bi := buildinfo.Get()
	var xwing []byte
	if u.deps.Keyring != nil {
		xwing = u.deps.Keyring.XWingPublic()
	}
	failures := 0
	for {
		if !u.waitReady(ctx) {
			return
		}
		var resp cpapi.EnrollResponse
		o, err := u.do(ctx, "enroll", func(rctx context.Context) (string, error) {
			var err error
			resp, err = client.Enroll(rctx, cpapi.EnrollRequest{
				Token: token, CSR: csr, Name: u.name, Version: bi.Version, OS: bi.OS, Arch: bi.Arch, XWingPublic: xwing,
			})
			return "", err
		})
		switch o {
		case outcomeCanceled:
			return
		case outcomeBlocked:
			continue
		case outcomeOK:
			id, serr := saveIdentity(u.idDir, key, resp, u.cfg.URL, u.clock.Now())
			if serr != nil {
				u.setError("enroll", serr)
				u.log.Error("enrolled, but could not store or use the identity", "agent_id", resp.AgentID, "err", serr)
				return
			}
			if resp.HeartbeatIntervalSeconds > 0 {
				u.setServerInterval(resp.HeartbeatIntervalSeconds)
			}
			if err := u.setIdentity(id); err != nil {
				u.setError("enroll", err)
				u.log.Error("enrolled, but cannot build the control plane client", "err", err)
				return
			}
			u.succeeded("enroll", false)
			u.log.Info("enrolled with the control plane", "agent_id", id.AgentID, "server", u.cfg.URL, "identity_dir", u.idDir)
			return
		case outcomeFailed:
			failures++
			u.setError("enroll", err)
			d := u.backoff(failures)
			if failures == 1 {
				u.log.Warn("enrollment failed; retrying with back-off", "err", err, "retry_in", d)
			} else {
				u.log.Debug("enrollment failed", "attempt", failures, "err", err, "retry_in", d)
			}
			if !u.sleep(ctx, d, nil) {
				return
			}
		default: // refused: used, expired or unknown token, or a bad request
			u.setError("enroll", fmt.Errorf("uplink: enrollment refused: %w", err))
			if u.cfg.EnrollmentTokenFile == "" {
				u.log.Error("enrollment refused by the control plane; the agent runs without it. "+
					"Create a new token (edgectl tokens create) and restart with it", "err", err)
				return
			}
			u.log.Error("enrollment refused by the control plane; the agent runs without it and "+
				"tries again when the token file changes", "token_file", u.cfg.EnrollmentTokenFile, "err", err)
			for {
				if !u.sleep(ctx, u.cfg.BackoffMax, nil) {
					return
				}
				t, err := u.readToken()
				if err == nil && t != "" && t != token {
					token, failures = t, 0
					u.log.Info("enrollment token file changed; enrolling again")
					break
				}
			}
		}
	}
}

// readToken returns the configured enrollment token ("" when none).
func (u *Uplink) readToken() (string, error) {
	if u.cfg.EnrollmentTokenFile == "" {
		return u.cfg.EnrollmentToken, nil
	}
	b, err := os.ReadFile(u.cfg.EnrollmentTokenFile)
	if err != nil {
		return "", fmt.Errorf("uplink: enrollment_token_file: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}
