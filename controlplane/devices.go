package controlplane

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/agent/devcred"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// Device identities, fleet-wide (see cpapi/devices.go): operators
// register devices, rotate their secrets, disable and enable them
// (audited); agents follow the changes (GET /v1/agent/devices, a long
// poll as GET /v1/agent/keys) and write them into the replicated
// collection device_identities, which gossip carries to every agent of
// the site. The control plane keeps each secret's "$7$" hash only; the
// secret is in the one answer that made it.

// maxDeviceTopics bounds the filters of one direction of an identity (as
// the agents' registry does).
const maxDeviceTopics = 32

// maxDeviceChanges bounds the changes in one answer to an agent.
const maxDeviceChanges = 1000

// deviceState is the device registry's share of the server.
type deviceState struct {
	// watch wakes held GET /v1/agent/devices requests at every change.
	watch *keyWatch
}

func (s *Server) deviceRoutes() []route {
	return []route{
		{method: "GET", path: "/v1/devices", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleListDevices},
		{method: "GET", path: "/v1/devices/{id}", access: accessBearer, role: cpapi.RoleViewer, handle: s.handleGetDevice},
		{method: "POST", path: "/v1/devices", access: accessBearer, role: cpapi.RoleOperator, action: "device.register", handle: s.handleRegisterDevice},
		{method: "POST", path: "/v1/devices/{id}/rotate-secret", access: accessBearer, role: cpapi.RoleOperator, action: "device.rotate_secret", handle: s.handleRotateDevice},
		{method: "POST", path: "/v1/devices/{id}/disable", access: accessBearer, role: cpapi.RoleOperator, action: "device.disable", handle: s.handleDeviceState},
		{method: "POST", path: "/v1/devices/{id}/enable", access: accessBearer, role: cpapi.RoleOperator, action: "device.enable", handle: s.handleDeviceState},
		{method: "GET", path: "/v1/agent/devices", access: accessAgent, handle: s.handleAgentDevices},
	}
}

// checkDeviceID refuses the ids an agent's broker would refuse.
func checkDeviceID(id string) error {
	if err := devcred.CheckID(id); err != nil {
		return badRequest("device id: %v", err)
	}
	return nil
}

// checkDeviceTopics validates one direction's topic filters.
func checkDeviceTopics(dir string, fs []string) error {
	if len(fs) > maxDeviceTopics {
		return badRequest("%d %s topics, at most %d", len(fs), dir, maxDeviceTopics)
	}
	for _, f := range fs {
		if err := devcred.CheckFilter(f); err != nil {
			return badRequest("%s topic: %v", dir, err)
		}
	}
	return nil
}

// forOperators drops the hash, which only agents need.
func forOperators(d cpapi.DeviceIdentity) cpapi.DeviceIdentity {
	d.Hash = ""
	return d
}

func (s *Server) handleListDevices(w http.ResponseWriter, r *http.Request, c *call) error {
	if len(r.URL.Query()) > 0 {
		return badRequest("GET /v1/devices takes no query parameters")
	}
	all, _, err := s.store.DevicesAfter(r.Context(), 0, 0)
	if err != nil {
		return err
	}
	slices.SortFunc(all, func(x, y cpapi.DeviceIdentity) int { return strings.Compare(x.ID, y.ID) })
	for i := range all {
		all[i] = forOperators(all[i])
	}
	writeJSON(w, http.StatusOK, cpapi.DevicesResponse{Devices: all})
	return nil
}

func (s *Server) handleGetDevice(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	if err := checkDeviceID(id); err != nil {
		return err
	}
	d, err := s.store.GetDevice(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, forOperators(d))
	return nil
}

// newDeviceSecret draws a secret and its hash.
func (s *Server) newDeviceSecret() (secret, hash string, err error) {
	if secret, err = devcred.NewSecret(s.cfg.Rand); err != nil {
		return "", "", fmt.Errorf("controlplane: device secret: %w", err)
	}
	if hash, err = devcred.HashSecret(s.cfg.Rand, secret); err != nil {
		return "", "", fmt.Errorf("controlplane: device secret: %w", err)
	}
	return secret, hash, nil
}

func (s *Server) handleRegisterDevice(w http.ResponseWriter, r *http.Request, c *call) error {
	var req cpapi.RegisterDeviceRequest
	if err := s.decodeJSON(w, r, &req); err != nil {
		return err
	}
	c.target = req.ID
	if err := checkDeviceID(req.ID); err != nil {
		return err
	}
	if err := checkDeviceTopics("publish", req.Publish); err != nil {
		return err
	}
	if err := checkDeviceTopics("subscribe", req.Subscribe); err != nil {
		return err
	}
	pub, sub := req.Publish, req.Subscribe
	if len(pub) == 0 {
		pub = []string{"devices/" + req.ID + "/telemetry"}
	}
	if len(sub) == 0 {
		sub = []string{"devices/" + req.ID + "/commands", "devices/" + req.ID + "/inference"}
	}
	secret, hash, err := s.newDeviceSecret()
	if err != nil {
		return err
	}
	now := c.now.UTC()
	d, err := s.store.ChangeDevice(r.Context(), req.ID, func(_ cpapi.DeviceIdentity, found bool) (cpapi.DeviceIdentity, error) {
		if found {
			return cpapi.DeviceIdentity{}, errorf(http.StatusConflict, "device %s is already registered (rotate-secret gives it a new secret)", req.ID)
		}
		return cpapi.DeviceIdentity{ID: req.ID, Hash: hash, Publish: pub, Subscribe: sub, State: cpapi.DeviceActive,
			Created: now, Rotated: now, Updated: now}, nil
	}, c.entry())
	if err != nil {
		return err
	}
	s.devices.watch.notify()
	s.log.Info("device registered", "device", d.ID, "by", c.actor)
	writeJSON(w, http.StatusCreated, cpapi.DeviceSecretResponse{Device: forOperators(d), Secret: secret})
	return nil
}

func (s *Server) handleRotateDevice(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	c.target = id
	if err := checkDeviceID(id); err != nil {
		return err
	}
	secret, hash, err := s.newDeviceSecret()
	if err != nil {
		return err
	}
	now := c.now.UTC()
	d, err := s.store.ChangeDevice(r.Context(), id, func(cur cpapi.DeviceIdentity, found bool) (cpapi.DeviceIdentity, error) {
		if !found {
			return cur, errorf(http.StatusNotFound, "device %s is not registered with the control plane", id)
		}
		cur.Hash, cur.Rotated, cur.Updated = hash, now, now
		return cur, nil
	}, c.entry())
	if err != nil {
		return err
	}
	s.devices.watch.notify()
	s.log.Info("device secret rotated", "device", id, "by", c.actor)
	writeJSON(w, http.StatusOK, cpapi.DeviceSecretResponse{Device: forOperators(d), Secret: secret})
	return nil
}

func (s *Server) handleDeviceState(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	c.target = id
	if err := checkDeviceID(id); err != nil {
		return err
	}
	state := cpapi.DeviceActive
	if strings.HasSuffix(r.URL.Path, "/disable") {
		state = cpapi.DeviceDisabled
	}
	now := c.now.UTC()
	d, err := s.store.ChangeDevice(r.Context(), id, func(cur cpapi.DeviceIdentity, found bool) (cpapi.DeviceIdentity, error) {
		if !found {
			return cur, errorf(http.StatusNotFound, "device %s is not registered with the control plane", id)
		}
		cur.State, cur.Updated = state, now
		return cur, nil
	}, c.entry())
	if err != nil {
		return err
	}
	s.devices.watch.notify()
	s.log.Info("device state changed", "device", id, "state", state, "by", c.actor)
	writeJSON(w, http.StatusOK, forOperators(d))
	return nil
}

// agentDevicesParams are the query parameters of GET /v1/agent/devices.
var agentDevicesParams = []string{"after", "wait"}

// handleAgentDevices answers the identities changed after "after". With
// a "wait" and nothing changed, the request is held until a change or
// the wait ends. A cursor beyond the newest change (the control plane's
// database was replaced) is answered with every identity.
func (s *Server) handleAgentDevices(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	if err := checkQuery(q, agentDevicesParams...); err != nil {
		return err
	}
	after := int64(0)
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return badRequest("after %q: want a sequence number (0 or more)", v)
		}
		after = n
	}
	wait, err := parseKeyWait(q.Get("wait"))
	if err != nil {
		return err
	}
	if err := s.agentActive(r.Context(), c); err != nil {
		return err
	}
	var timer *time.Timer
	var expired <-chan time.Time
	for {
		changed := s.devices.watch.changed()
		ch, top, err := s.store.DevicesAfter(r.Context(), after, maxDeviceChanges)
		if err != nil {
			return err
		}
		if after > top {
			after = 0
			continue
		}
		if len(ch) > 0 || wait == 0 {
			next := top
			if len(ch) == maxDeviceChanges {
				next = ch[len(ch)-1].Seq
			}
			if len(ch) == 0 {
				next = after
			}
			writeJSON(w, http.StatusOK, cpapi.AgentDevicesResponse{Changes: ch, Seq: next})
			return nil
		}
		if timer == nil {
			if err := extendDeadlines(w, wait+KeyWatchDeadlineMargin); err != nil {
				s.log.Warn("cannot extend the connection deadlines of a held device request; the server's timeouts apply", "agent", c.agentID, "err", err)
			}
			timer = time.NewTimer(wait)
			defer timer.Stop()
			expired = timer.C
		}
		select {
		case <-changed:
			continue
		case <-expired:
		case <-s.devices.watch.closing:
		case <-r.Context().Done():
			return nil
		}
		writeJSON(w, http.StatusOK, cpapi.AgentDevicesResponse{Changes: []cpapi.DeviceIdentity{}, Seq: after})
		return nil
	}
}

// agentActive refuses a decommissioned agent.
func (s *Server) agentActive(ctx context.Context, c *call) error {
	a, err := s.store.GetAgent(ctx, c.agentID)
	if err != nil {
		return err
	}
	if a.DecommissionedAt != nil {
		return s.agentGone(c, ErrDecommissioned)
	}
	return nil
}
