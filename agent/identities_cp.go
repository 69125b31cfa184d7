package agent

import (
	"context"

	"github.com/edgefleet/edgefleet/agent/devices"
	"github.com/edgefleet/edgefleet/controlplane/cpapi"
)

// cpDevices writes the control plane's device identity changes into the
// replicated collection (uplink.DeviceSink). Every agent follows the
// control plane's feed; the first to write a change gossips it, and the
// others find it there and write nothing. A change older than the
// identity held here (Updated; an operator changed it on an agent since)
// is skipped: identities are last-writer-wins by their Updated time,
// wherever they were changed. An identity that fails the checks is
// logged and skipped, never written.
type cpDevices struct{ a *Agent }

func (c cpDevices) ApplyControlPlaneDevices(ctx context.Context, changes []cpapi.DeviceIdentity) error {
	a := c.a
	s, err := a.liveStore()
	if err != nil {
		return err
	}
	for _, ch := range changes {
		d := DeviceIdentity{ID: ch.ID, Hash: ch.Hash, Publish: ch.Publish, Subscribe: ch.Subscribe, State: ch.State,
			Created: ch.Created, Rotated: ch.Rotated, Updated: ch.Updated}
		if err := d.Check(); err != nil {
			a.log.Warn("skipping a device identity from the control plane", "device", ch.ID, "seq", ch.Seq, "err", err)
			continue
		}
		e, found, err := s.Get(ctx, IdentitiesCollection, d.ID)
		if err != nil {
			return err
		}
		if found {
			// An entry that does not decode is replaced.
			if cur, err := devices.DecodeIdentity(d.ID, e.Value); err == nil && !cur.Updated.Before(d.Updated) {
				continue
			}
		}
		if err := a.putIdentity(ctx, d, "control_plane_"+d.State); err != nil {
			return err
		}
	}
	return nil
}
