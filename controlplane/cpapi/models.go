package cpapi

import (
	"context"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Wire types and client calls of the model registry (/v1/models) and of
// model delivery to agents (/v1/agent/models).

// ModelContentType is the media type of a model file in a request or an
// answer (fedlearn's model file format).
const ModelContentType = "application/vnd.edgefleet.model"

// MaxModelWatchWait bounds the "wait" parameter of GET /v1/agent/models.
const MaxModelWatchWait = MaxKeyWatchWait

// ModelTraining is how a model was made (fedlearn.Training on the wire).
type ModelTraining struct {
	Dataset  string            `json:"dataset,omitempty"`
	From     time.Time         `json:"from,omitzero"`
	To       time.Time         `json:"to,omitzero"`
	Epochs   int               `json:"epochs"`
	Seed     uint64            `json:"seed"`
	Examples int               `json:"examples,omitempty"`
	HeldOut  int               `json:"held_out,omitempty"`
	Loss     float64           `json:"loss"`
	Accuracy float64           `json:"accuracy"`
	Params   map[string]string `json:"params,omitempty"`
	Created  time.Time         `json:"created"`
}

// Model describes one stored model version.
type Model struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	// Digest is the hex SHA-256 of the model file's content (signing does
	// not change it).
	Digest string `json:"digest"`
	// Size is the length of the signed file in bytes.
	Size     int64         `json:"size"`
	Arch     string        `json:"arch"`
	Inputs   int           `json:"inputs"`
	Classes  int           `json:"classes"`
	Features []string      `json:"features"`
	Labels   []string      `json:"labels"`
	Training ModelTraining `json:"training"`
	// Signer is the signer id of the control plane's signature.
	Signer   string    `json:"signer"`
	PushedAt time.Time `json:"pushed_at"`
	PushedBy string    `json:"pushed_by"`
}

// ModelDeployment is one deployment of a model version to the agents whose
// labels match Selector. Deployments of a name and selector form a stack:
// the newest one not rolled back is active, and a rollback marks it rolled
// back, which makes the one below it active again.
type ModelDeployment struct {
	Seq          int64      `json:"seq"`
	Name         string     `json:"name"`
	Version      string     `json:"version"`
	Selector     string     `json:"selector"`
	DeployedAt   time.Time  `json:"deployed_at"`
	DeployedBy   string     `json:"deployed_by"`
	RolledBackAt *time.Time `json:"rolled_back_at,omitempty"`
	RolledBackBy string     `json:"rolled_back_by,omitempty"`
	Active       bool       `json:"active"`
}

// ModelsResponse is the answer of GET /v1/models: every stored version
// (by name, then push time) and the active deployments.
type ModelsResponse struct {
	Models      []Model           `json:"models"`
	Deployments []ModelDeployment `json:"deployments"`
}

// ModelVersionsResponse is the answer of GET /v1/models/{name}: its
// versions, oldest first, and its deployment history, newest first.
type ModelVersionsResponse struct {
	Name        string            `json:"name"`
	Versions    []Model           `json:"versions"`
	Deployments []ModelDeployment `json:"deployments"`
}

// DeployModelRequest is the body of POST /v1/models/{name}/deploy.
type DeployModelRequest struct {
	Version string `json:"version"`
	// Selector is "key=value[,key=value...]": the agents whose labels
	// have all these values receive the model.
	Selector string `json:"selector"`
}

// RollbackModelRequest is the body of POST /v1/models/{name}/rollback.
// Selector may be empty when the model is deployed to one selector only.
type RollbackModelRequest struct {
	Selector string `json:"selector,omitempty"`
}

// RollbackModelResponse says which deployment was rolled back and which is
// active now.
type RollbackModelResponse struct {
	RolledBack ModelDeployment `json:"rolled_back"`
	Active     ModelDeployment `json:"active"`
}

// UndeployModelRequest is the body of POST /v1/models/{name}/undeploy.
type UndeployModelRequest struct {
	Selector string `json:"selector"`
}

// UndeployModelResponse lists the deployments of the stack that the
// undeploy ended (marked rolled back), newest first.
type UndeployModelResponse struct {
	Ended []ModelDeployment `json:"ended"`
}

// ModelAssignment is a model an agent should serve.
type ModelAssignment struct {
	Name     string `json:"name"`
	Version  string `json:"version"`
	Digest   string `json:"digest"`
	Size     int64  `json:"size"`
	Selector string `json:"selector"`
}

// AgentModelsResponse is the answer of GET /v1/agent/models: the calling
// agent's assignments (one per model name) and a cursor naming them.
type AgentModelsResponse struct {
	Assignments []ModelAssignment `json:"assignments"`
	Cursor      string            `json:"cursor"`
}

// ModelAAD is the associated data of a model file sealed to an agent: it
// binds the envelope to the agent, the model and the version.
func ModelAAD(agentID, name, version string) []byte {
	return []byte("edgefleet/model-delivery/v1\x00" + agentID + "\x00" + name + "\x00" + version)
}

// ParseSelector reads "key=value[,key=value...]" into labels. Keys must
// be distinct; values may be empty.
func ParseSelector(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, fmt.Errorf("%w: selector: empty (want key=value[,key=value...])", ErrBadRequest)
	}
	out := map[string]string{}
	for _, part := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%w: selector %q: %q is not key=value", ErrBadRequest, s, part)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("%w: selector %q: key %q given twice", ErrBadRequest, s, k)
		}
		out[k] = v
	}
	return out, nil
}

// FormatSelector is the canonical text of a selector: keys sorted.
func FormatSelector(l map[string]string) string {
	parts := make([]string, 0, len(l))
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

// SelectorMatches reports whether labels have every key=value of sel.
func SelectorMatches(sel, labels map[string]string) bool {
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

func modelPath(name string, rest ...string) string {
	p := "/v1/models/" + url.PathEscape(name)
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

// PushModel uploads a model file (admin). The control plane checks it,
// signs it with its ML-DSA-65 key and stores it. Pushing the same version
// again with the same content is accepted and changes nothing; with other
// content it is a conflict (409).
func (c *Client) PushModel(ctx context.Context, file []byte) (Model, error) {
	var m Model
	err := c.do(ctx, "POST", "/v1/models", nil, rawBody{data: file, contentType: ModelContentType}, &m)
	return m, err
}

// ListModels lists every stored model version and the active deployments
// (viewer).
func (c *Client) ListModels(ctx context.Context) (ModelsResponse, error) {
	var resp ModelsResponse
	err := c.do(ctx, "GET", "/v1/models", nil, nil, &resp)
	return resp, err
}

// ModelVersions lists a model's versions and deployment history (viewer).
func (c *Client) ModelVersions(ctx context.Context, name string) (ModelVersionsResponse, error) {
	var resp ModelVersionsResponse
	err := c.do(ctx, "GET", modelPath(name), nil, nil, &resp)
	return resp, err
}

// GetModel describes one model version (viewer).
func (c *Client) GetModel(ctx context.Context, name, version string) (Model, error) {
	var m Model
	err := c.do(ctx, "GET", modelPath(name, "versions", version), nil, nil, &m)
	return m, err
}

// DownloadModel fetches the signed model file of a version (viewer).
func (c *Client) DownloadModel(ctx context.Context, name, version string) ([]byte, error) {
	var b []byte
	err := c.do(ctx, "GET", modelPath(name, "versions", version, "file"), nil, nil, &b)
	return b, err
}

// DeployModel deploys a version to the agents matching selector (admin).
// Deploying the version that is already active for the selector changes
// nothing.
func (c *Client) DeployModel(ctx context.Context, name, version, selector string) (ModelDeployment, error) {
	var d ModelDeployment
	err := c.do(ctx, "POST", modelPath(name, "deploy"), nil, DeployModelRequest{Version: version, Selector: selector}, &d)
	return d, err
}

// RollbackModel returns the agents of selector ("" when the model is
// deployed to one selector only) to the version deployed before (admin).
func (c *Client) RollbackModel(ctx context.Context, name, selector string) (RollbackModelResponse, error) {
	var resp RollbackModelResponse
	err := c.do(ctx, "POST", modelPath(name, "rollback"), nil, RollbackModelRequest{Selector: selector}, &resp)
	return resp, err
}

// UndeployModel ends every deployment of model name on selector (admin):
// the agents of selector that received it through that selector stop
// serving it.
func (c *Client) UndeployModel(ctx context.Context, name, selector string) (UndeployModelResponse, error) {
	var resp UndeployModelResponse
	err := c.do(ctx, "POST", modelPath(name, "undeploy"), nil, UndeployModelRequest{Selector: selector}, &resp)
	return resp, err
}

// WatchModels fetches the calling agent's model assignments (mutual TLS):
// GET /v1/agent/models?after=cursor&wait=wait. With a wait (at most
// MaxModelWatchWait) and the cursor of the previous answer, the server
// holds the request until the assignments change or the wait ends.
func (c *Client) WatchModels(ctx context.Context, after string, wait time.Duration) (AgentModelsResponse, error) {
	var resp AgentModelsResponse
	if wait < 0 || wait > MaxModelWatchWait {
		return resp, fmt.Errorf("controlplane: client: %w: wait %s outside 0..%s", ErrBadRequest, wait, MaxModelWatchWait)
	}
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	if wait == 0 {
		err := c.do(ctx, "GET", "/v1/agent/models", q, nil, &resp)
		return resp, err
	}
	q.Set("wait", wait.String())
	ctx, cancel := context.WithTimeout(ctx, wait+c.timeout)
	defer cancel()
	err := c.doWith(c.watch, ctx, "GET", "/v1/agent/models", q, nil, &resp)
	return resp, err
}

// FetchAssignedModel fetches an assigned model version (mutual TLS): the
// control plane's signed model file, sealed to the agent's X-Wing key
// with ModelAAD(agentID, name, version).
func (c *Client) FetchAssignedModel(ctx context.Context, name, version string) ([]byte, error) {
	var b []byte
	err := c.do(ctx, "GET", "/v1/agent/models/"+url.PathEscape(name)+"/versions/"+url.PathEscape(version), nil, nil, &b)
	return b, err
}
