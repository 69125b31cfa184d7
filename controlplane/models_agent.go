package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"slices"
	"strings"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// Model delivery to agents, along the key service's path: an agent asks
// for its assignments (GET /v1/agent/models, long poll with "wait" as GET
// /v1/agent/keys), then fetches each version it does not serve yet (GET
// /v1/agent/models/{name}/versions/{version}): the control plane's signed
// model file sealed to the agent's X-Wing key, bound to the agent, name
// and version (cpapi.ModelAAD).

// agentModelsParams are the query parameters of GET /v1/agent/models.
var agentModelsParams = []string{"after", "wait"}

// agentAssignments computes the calling agent's assignments: per model
// name, the newest active deployment whose selector its labels match.
func (s *Server) agentAssignments(ctx context.Context, c *call) (cpapi.Agent, []cpapi.ModelAssignment, error) {
	a, err := s.store.GetAgent(ctx, c.agentID)
	if err != nil {
		return a, nil, err
	}
	if a.DecommissionedAt != nil {
		return a, nil, s.agentGone(c, ErrDecommissioned)
	}
	deps, err := s.store.ModelDeployments(ctx, "", true) // newest first
	if err != nil {
		return a, nil, err
	}
	out := []cpapi.ModelAssignment{}
	seen := map[string]bool{}
	for _, d := range deps {
		if seen[d.Name] {
			continue
		}
		sel, err := cpapi.ParseSelector(d.Selector)
		if err != nil || !cpapi.SelectorMatches(sel, a.Labels) {
			continue
		}
		m, err := s.store.GetModel(ctx, d.Name, d.Version)
		if err != nil {
			return a, nil, err
		}
		seen[d.Name] = true
		out = append(out, cpapi.ModelAssignment{Name: d.Name, Version: d.Version, Digest: m.Digest, Size: m.Size, Selector: d.Selector})
	}
	slices.SortFunc(out, func(x, y cpapi.ModelAssignment) int { return strings.Compare(x.Name, y.Name) })
	return a, out, nil
}

// assignmentsCursor names a set of assignments: equal sets, equal cursors.
func assignmentsCursor(as []cpapi.ModelAssignment) string {
	h := sha256.New()
	for _, a := range as {
		h.Write([]byte(a.Name + "\x00" + a.Version + "\x00" + a.Digest + "\n"))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// handleAgentModels answers the calling agent's model assignments. With
// "after" equal to the current cursor and a "wait", the request is held
// until the assignments change (a deployment, a rollback, the agent's
// labels) or the wait ends.
func (s *Server) handleAgentModels(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	if err := checkQuery(q, agentModelsParams...); err != nil {
		return err
	}
	after := q.Get("after")
	wait, err := parseKeyWait(q.Get("wait"))
	if err != nil {
		return err
	}
	var as []cpapi.ModelAssignment
	var cur string
	answer, err := s.longPoll(w, r, s.models.watch, wait, "model", c.agentID, func() (bool, error) {
		var err error
		if _, as, err = s.agentAssignments(r.Context(), c); err != nil {
			return false, err
		}
		cur = assignmentsCursor(as)
		return after != cur, nil
	})
	if !answer {
		return err
	}
	writeJSON(w, http.StatusOK, cpapi.AgentModelsResponse{Assignments: as, Cursor: cur})
	return nil
}

// handleAgentModelFile answers an assigned model version sealed to the
// calling agent. A version that is not assigned to the agent (any more) is
// 404.
func (s *Server) handleAgentModelFile(w http.ResponseWriter, r *http.Request, c *call) error {
	name, version, err := modelName(r, c)
	if err != nil {
		return err
	}
	a, as, err := s.agentAssignments(r.Context(), c)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(as, func(x cpapi.ModelAssignment) bool { return x.Name == name && x.Version == version }) {
		return errorf(http.StatusNotFound, "model %s version %s is not assigned to agent %s", name, version, c.agentID)
	}
	if len(a.XWingPublic) == 0 {
		return errorf(http.StatusConflict, "agent %s enrolled without an X-Wing public key, so no model can be sealed to it: enroll it again with xwing_public", c.agentID)
	}
	pub, err := pqcrypto.ParseXWingPublicKey(a.XWingPublic)
	if err != nil {
		return errorf(http.StatusConflict, "stored X-Wing key of agent %s: %v", c.agentID, err)
	}
	file, err := s.store.ModelFile(r.Context(), name, version)
	if err != nil {
		return err
	}
	env, err := pqcrypto.SealToRecipient(nil, pqcrypto.RecipientKey{KeyID: pub.Fingerprint(), KeyVersion: 1, PublicKey: pub}, file,
		&pqcrypto.SealOptions{RecipientID: c.agentID, AAD: cpapi.ModelAAD(c.agentID, name, version), Rand: s.cfg.Rand})
	if err != nil {
		return err
	}
	s.metrics.models.WithLabelValues("delivered").Inc()
	s.log.Debug("model delivered", "agent", c.agentID, "model", name, "version", version, "bytes", len(env))
	writeBinary(w, cpapi.EnvelopeContentType, env)
	return nil
}
