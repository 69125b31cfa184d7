package controlplane

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/fedlearn"
)

// The model registry: operators push model files (fedlearn's format),
// which the control plane checks and signs with the ML-DSA-65 key it signs
// key messages with, then deploy versions to the agents whose labels match
// a selector, and roll deployments back. Agents learn their assignments
// from GET /v1/agent/models (models_agent.go).

// modelState is the registry's share of the server.
type modelState struct {
	// watch wakes held GET /v1/agent/models requests when deployments or
	// agent labels change.
	watch *keyWatch
}

func (s *Server) modelRoutes() []route {
	return []route{
		{method: "POST", path: "/v1/models", access: accessBearer, role: cpapi.RoleAdmin, action: "model.push", handle: s.handlePushModel},
		{method: "GET", path: "/v1/models", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleListModels},
		{method: "GET", path: "/v1/models/{name}", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleModelVersions},
		{method: "GET", path: "/v1/models/{name}/versions/{version}", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleGetModel},
		{method: "GET", path: "/v1/models/{name}/versions/{version}/file", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleDownloadModel},
		{method: "POST", path: "/v1/models/{name}/deploy", access: accessBearer, role: cpapi.RoleAdmin, action: "model.deploy", handle: s.handleDeployModel},
		{method: "POST", path: "/v1/models/{name}/rollback", access: accessBearer, role: cpapi.RoleAdmin, action: "model.rollback", handle: s.handleRollbackModel},
		{method: "POST", path: "/v1/models/{name}/undeploy", access: accessBearer, role: cpapi.RoleAdmin, action: "model.undeploy", handle: s.handleUndeployModel},
		{method: "GET", path: "/v1/agent/models", access: accessAgent, handle: s.handleAgentModels},
		{method: "GET", path: "/v1/agent/models/{name}/versions/{version}", access: accessAgent, handle: s.handleAgentModelFile},
	}
}

// modelSignerID names the control plane in model signatures.
func (s *Server) modelSignerID() string {
	return "controlplane:" + s.keys.signer.Public().Fingerprint()
}

// modelName reads and checks the {name} path value (and {version} when the
// route has one).
func modelName(r *http.Request, c *call) (name, version string, err error) {
	name, version = r.PathValue("name"), r.PathValue("version")
	c.target = name
	if err := checkModelName("name", name); err != nil {
		return "", "", err
	}
	if strings.Contains(r.Pattern, "{version}") {
		if err := checkModelName("version", version); err != nil {
			return "", "", err
		}
		c.target = name + "@" + version
	}
	return name, version, nil
}

// checkModelName answers 400 for a model name or version fedlearn would
// not write into a model file.
func checkModelName(field, v string) error {
	check, chars := fedlearn.CheckName, "letters, digits, '.', '_', '-'"
	if field == "version" {
		check, chars = fedlearn.CheckVersion, "letters, digits, '.', '_', '-', '+'"
	}
	if check(v) != nil {
		return badRequest("%s: %q must be 1-%d %s, starting with a letter or digit", field, v, fedlearn.MaxNameLen, chars)
	}
	return nil
}

// modelInfo describes a decoded, signed model file.
func modelInfo(f *fedlearn.File, size int, signer string) cpapi.Model {
	m := cpapi.Model{
		Name: f.Name, Version: f.Version, Digest: f.DigestHex(), Size: int64(size),
		Arch: f.Arch.String(), Inputs: f.Arch.Inputs, Classes: f.Arch.Classes,
		Labels: f.Labels, Signer: signer,
	}
	for _, ft := range f.Schema.Features {
		m.Features = append(m.Features, ft.Name)
	}
	// Same JSON fields on both sides.
	if b, err := json.Marshal(f.Training); err == nil {
		_ = json.Unmarshal(b, &m.Training)
	}
	return m
}

func (s *Server) handlePushModel(w http.ResponseWriter, r *http.Request, c *call) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != cpapi.ModelContentType && mt != "application/octet-stream") {
			return errorf(http.StatusUnsupportedMediaType, "Content-Type %q: expected %s (a model file)", ct, cpapi.ModelContentType)
		}
	}
	if enc := r.Header.Get("Content-Encoding"); enc != "" && enc != "identity" {
		return errorf(http.StatusUnsupportedMediaType, "Content-Encoding %q not accepted on %s", enc, r.URL.Path)
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(fedlearn.MaxFileSize)))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errorf(http.StatusRequestEntityTooLarge, "model file exceeds the limit of %d bytes", mbe.Limit)
		}
		return badRequest("reading the model file: %v", err)
	}
	f, err := fedlearn.Decode(b)
	if err != nil {
		s.metrics.models.WithLabelValues("refused").Inc()
		return badRequest("model file refused: %s", strings.TrimPrefix(err.Error(), "fedlearn: "))
	}
	c.target = f.Name + "@" + f.Version
	signer := s.modelSignerID()
	signed, err := fedlearn.Sign(b, signer, s.keys.signer)
	if err != nil {
		return fmt.Errorf("controlplane: signing model %s: %w", c.target, err)
	}
	m := modelInfo(f, len(signed), signer)
	m.PushedAt, m.PushedBy = c.now.UTC(), c.actor
	created, err := s.store.PutModel(r.Context(), m, signed, c.entry())
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
		s.metrics.models.WithLabelValues("stored").Inc()
		s.log.Info("model pushed", "model", f.Name, "version", f.Version, "digest", m.Digest, "by", c.actor)
	} else if m, err = s.store.GetModel(r.Context(), f.Name, f.Version); err != nil {
		return err
	}
	writeJSON(w, status, m)
	return nil
}

func (s *Server) handleListModels(w http.ResponseWriter, r *http.Request, c *call) error {
	if len(r.URL.Query()) > 0 {
		return badRequest("GET /v1/models takes no query parameters")
	}
	models, err := s.store.ListModels(r.Context())
	if err != nil {
		return err
	}
	deps, err := s.store.ModelDeployments(r.Context(), "", true)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, cpapi.ModelsResponse{Models: models, Deployments: deps})
	return nil
}

func (s *Server) handleModelVersions(w http.ResponseWriter, r *http.Request, c *call) error {
	name, _, err := modelName(r, c)
	if err != nil {
		return err
	}
	all, err := s.store.ListModels(r.Context())
	if err != nil {
		return err
	}
	out := cpapi.ModelVersionsResponse{Name: name, Versions: []cpapi.Model{}}
	for _, m := range all {
		if m.Name == name {
			out.Versions = append(out.Versions, m)
		}
	}
	if len(out.Versions) == 0 {
		return errorf(http.StatusNotFound, "model %s: no version in the registry", name)
	}
	if out.Deployments, err = s.store.ModelDeployments(r.Context(), name, false); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) handleGetModel(w http.ResponseWriter, r *http.Request, c *call) error {
	name, version, err := modelName(r, c)
	if err != nil {
		return err
	}
	m, err := s.store.GetModel(r.Context(), name, version)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, m)
	return nil
}

func (s *Server) handleDownloadModel(w http.ResponseWriter, r *http.Request, c *call) error {
	name, version, err := modelName(r, c)
	if err != nil {
		return err
	}
	b, err := s.store.ModelFile(r.Context(), name, version)
	if err != nil {
		return err
	}
	writeBinary(w, cpapi.ModelContentType, b)
	return nil
}

// writeBinary answers 200 with a binary body.
func writeBinary(w http.ResponseWriter, contentType string, b []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	w.Write(b)
}

// parseModelSelector checks a selector and returns its canonical text.
func parseModelSelector(v string) (string, error) {
	sel, err := cpapi.ParseSelector(v)
	if err != nil {
		return "", badRequest("%s", strings.TrimPrefix(err.Error(), cpapi.ErrBadRequest.Error()+": "))
	}
	if err := validLabels("selector", sel); err != nil {
		return "", err
	}
	return cpapi.FormatSelector(sel), nil
}

func (s *Server) handleDeployModel(w http.ResponseWriter, r *http.Request, c *call) error {
	name, _, err := modelName(r, c)
	if err != nil {
		return err
	}
	var req cpapi.DeployModelRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	if err := checkModelName("version", req.Version); err != nil {
		return err
	}
	sel, err := parseModelSelector(req.Selector)
	if err != nil {
		return err
	}
	c.target = name + "@" + req.Version + " to " + sel
	d, changed, err := s.store.DeployModel(r.Context(), cpapi.ModelDeployment{
		Name: name, Version: req.Version, Selector: sel, DeployedAt: c.now.UTC(), DeployedBy: c.actor,
	}, c.entry())
	if err != nil {
		return err
	}
	if changed {
		s.log.Info("model deployed", "model", name, "version", req.Version, "selector", sel, "by", c.actor)
		s.models.watch.notify()
	}
	writeJSON(w, http.StatusOK, d)
	return nil
}

func (s *Server) handleRollbackModel(w http.ResponseWriter, r *http.Request, c *call) error {
	name, _, err := modelName(r, c)
	if err != nil {
		return err
	}
	var req cpapi.RollbackModelRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	var sel string
	if req.Selector != "" {
		if sel, err = parseModelSelector(req.Selector); err != nil {
			return err
		}
	} else {
		active, err := s.store.ModelDeployments(r.Context(), name, true)
		if err != nil {
			return err
		}
		switch len(active) {
		case 0:
			return errorf(http.StatusNotFound, "model %s is not deployed", name)
		case 1:
			sel = active[0].Selector
		default:
			var sels []string
			for _, d := range active {
				sels = append(sels, d.Selector)
			}
			return badRequest("selector: model %s is deployed to %d selectors (%s); name one", name, len(active), strings.Join(sels, "; "))
		}
	}
	c.target = name + " on " + sel
	rolled, active, err := s.store.RollbackModel(r.Context(), name, sel, c.now.UTC(), c.actor, c.entry())
	if err != nil {
		return err
	}
	s.log.Info("model deployment rolled back", "model", name, "selector", sel, "from", rolled.Version, "to", active.Version, "by", c.actor)
	s.models.watch.notify()
	writeJSON(w, http.StatusOK, cpapi.RollbackModelResponse{RolledBack: rolled, Active: active})
	return nil
}

// handleUndeployModel ends every deployment of a model on a selector:
// its agents that received the model through that selector stop serving
// it (unless another selector they match deploys it).
func (s *Server) handleUndeployModel(w http.ResponseWriter, r *http.Request, c *call) error {
	name, _, err := modelName(r, c)
	if err != nil {
		return err
	}
	var req cpapi.UndeployModelRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	if req.Selector == "" {
		return badRequest("selector: name the selector to undeploy model %s from", name)
	}
	sel, err := parseModelSelector(req.Selector)
	if err != nil {
		return err
	}
	c.target = name + " on " + sel
	ended, err := s.store.UndeployModel(r.Context(), name, sel, c.now.UTC(), c.actor, c.entry())
	if err != nil {
		return err
	}
	s.log.Info("model undeployed", "model", name, "selector", sel, "version", ended[0].Version, "deployments", len(ended), "by", c.actor)
	s.models.watch.notify()
	writeJSON(w, http.StatusOK, cpapi.UndeployModelResponse{Ended: ended})
	return nil
}
