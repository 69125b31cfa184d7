package localapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/agent/devices"
)

// Identities manages the devices' identities (credentials and topics);
// a Backend that implements it serves /v1/identities.
type Identities interface {
	DeviceIdentities(ctx context.Context) ([]devices.Identity, error)
	DeviceIdentity(ctx context.Context, id string) (devices.Identity, bool, error)
	RegisterDevice(ctx context.Context, id string, publish, subscribe []string) (devices.Identity, string, error)
	RotateDeviceSecret(ctx context.Context, id string) (devices.Identity, string, error)
	SetDeviceState(ctx context.Context, id, state string) (devices.Identity, error)
}

// identitiesAllow are the identity routes' methods.
var identitiesAllow = map[string]string{
	"/v1/identities":              "GET, POST",
	"/v1/identities/{id}":         "GET",
	"/v1/identities/{id}/rotate":  "POST",
	"/v1/identities/{id}/disable": "POST",
	"/v1/identities/{id}/enable":  "POST",
}

func (s *server) routeIdentities(mux *http.ServeMux) {
	ids, ok := s.b.(Identities)
	if !ok {
		return
	}
	mux.HandleFunc("GET /v1/identities", func(w http.ResponseWriter, r *http.Request) {
		list, err := ids.DeviceIdentities(r.Context())
		if err != nil {
			s.writeIdentityError(w, err)
			return
		}
		out := agentapi.IdentityList{Identities: make([]agentapi.DeviceIdentity, 0, len(list))}
		for _, d := range list {
			out.Identities = append(out.Identities, agentapi.DeviceIdentity(d))
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/identities/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := deviceID(w, r)
		if !ok {
			return
		}
		d, found, err := ids.DeviceIdentity(r.Context(), id)
		switch {
		case err != nil:
			s.writeIdentityError(w, err)
		case !found:
			writeError(w, http.StatusNotFound, fmt.Sprintf("agent: device %q is not registered", id))
		default:
			writeJSON(w, http.StatusOK, agentapi.DeviceIdentity(d))
		}
	})
	mux.HandleFunc("POST /v1/identities", func(w http.ResponseWriter, r *http.Request) {
		body, ok := s.readBody(w, r)
		if !ok {
			return
		}
		var req agentapi.RegisterRequest
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, `agent: register body must be {"id","publish","subscribe"}: `+err.Error())
			return
		}
		d, secret, err := ids.RegisterDevice(r.Context(), req.ID, req.Publish, req.Subscribe)
		if err != nil {
			s.writeIdentityError(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, agentapi.IdentitySecret{Identity: agentapi.DeviceIdentity(d), Secret: secret})
	})
	mux.HandleFunc("POST /v1/identities/{id}/rotate", func(w http.ResponseWriter, r *http.Request) {
		id, ok := deviceID(w, r)
		if !ok {
			return
		}
		d, secret, err := ids.RotateDeviceSecret(r.Context(), id)
		if err != nil {
			s.writeIdentityError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, agentapi.IdentitySecret{Identity: agentapi.DeviceIdentity(d), Secret: secret})
	})
	for action, state := range map[string]string{"disable": devices.StateDisabled, "enable": devices.StateActive} {
		mux.HandleFunc("POST /v1/identities/{id}/"+action, func(w http.ResponseWriter, r *http.Request) {
			id, ok := deviceID(w, r)
			if !ok {
				return
			}
			d, err := ids.SetDeviceState(r.Context(), id, state)
			if err != nil {
				s.writeIdentityError(w, err)
				return
			}
			writeJSON(w, http.StatusOK, agentapi.DeviceIdentity(d))
		})
	}
}

func (s *server) writeIdentityError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, devices.ErrInvalidIdentity):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, devices.ErrNotRegistered):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, devices.ErrRegistered):
		writeError(w, http.StatusConflict, err.Error())
	default:
		s.writeStoreError(w, err)
	}
}
