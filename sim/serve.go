package sim

import (
	"context"
	"errors"
	"time"
)

// ServeInfo tells a user how to reach a served fleet.
type ServeInfo struct {
	// ControlPlaneURL is the in-process control plane's base URL.
	ControlPlaneURL string
	// CAPEM is the control plane's CA certificate (PEM) and CAPath its file.
	CAPEM  []byte
	CAPath string
	// AdminToken is an admin API token for the control plane.
	AdminToken string
	// AgentAPIs are the agents' local API base URLs, in agent order.
	AgentAPIs []string
	// Agents is how many agents run; Devices how many simulated devices
	// send telemetry (0 with NoDevices).
	Agents  int
	Devices int
	// Synthetic is true when the devices send synthetic rooms' readings
	// because there is no occupancy data set at DataSets.
	Synthetic bool
	DataSets  string
	// DataDir holds the fleet's data (removed on exit unless chosen).
	DataDir string
}

// Serve starts a fleet with its control plane, waits until every agent is
// online there, calls ready, and keeps the fleet running until ctx ends.
// Devices replay the occupancy data set for as long as it lasts, or, without
// it, send synthetic rooms' readings until ctx ends.
func Serve(ctx context.Context, o Options, ready func(ServeInfo) error) error {
	if o.NoControlPlane {
		return errors.New("sim: serving a fleet needs its control plane")
	}
	o.AgentAPI = true
	if o.DeviceRegistryInterval == 0 {
		o.DeviceRegistryInterval = 5 * time.Second
	}
	if o.Outage > 0 {
		return errors.New("sim: an outage is a scenario of a measured run, not of a served fleet")
	}
	if err := o.setDefaults(); err != nil {
		return err
	}
	f, err := StartFleet(ctx, o)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.waitOnline(ctx); err != nil {
		return err
	}
	info := ServeInfo{
		ControlPlaneURL: f.cp.url,
		CAPEM:           f.cp.caPEM,
		CAPath:          f.cp.caPath,
		AdminToken:      f.cp.token,
		Agents:          len(f.nodes),
		Synthetic:       f.synthetic,
		DataSets:        o.DataSets,
		DataDir:         f.dir,
	}
	for _, n := range f.nodes {
		info.AgentAPIs = append(info.AgentAPIs, "http://"+n.ag.APIAddr())
	}
	if f.DevicesEnabled() {
		info.Devices = len(f.nodes) * o.DevicesPerAgent
	}
	if err := ready(info); err != nil {
		return err
	}
	<-ctx.Done()
	o.Logger.Info("stopping the fleet")
	return nil
}
