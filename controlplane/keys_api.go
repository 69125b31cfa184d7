package controlplane

import (
	"fmt"
	"time"

	"github.com/edgefleet/edgefleet/controlplane/cpapi"
	"github.com/edgefleet/edgefleet/dkms"
)

// durationText renders a policy duration for answers.
func durationText(d time.Duration) string { return d.String() }

// parsePolicyDuration reads a duration of a policy request; empty returns
// def.
func parsePolicyDuration(field, v string, def time.Duration) (time.Duration, error) {
	switch v {
	case "":
		return def, nil
	case "0", "off", "none":
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, badRequest("%s: %q is not a duration (e.g. \"720h\", \"90m\", or \"0\" for none)", field, v)
	}
	if d < 0 {
		return 0, badRequest("%s: %s is negative", field, v)
	}
	return d, nil
}

// policyFromWire converts a request policy; p may be nil.
func policyFromWire(p *cpapi.KeyPolicy, defRotation time.Duration) (dkms.Policy, error) {
	if p == nil {
		p = &cpapi.KeyPolicy{}
	}
	var (
		out dkms.Policy
		err error
	)
	if out.RotationPeriod, err = parsePolicyDuration("policy.rotation_period", p.RotationPeriod, defRotation); err != nil {
		return out, err
	}
	if out.InstallGrace, err = parsePolicyDuration("policy.install_grace", p.InstallGrace, 0); err != nil {
		return out, err
	}
	if out.RemoveGrace, err = parsePolicyDuration("policy.remove_grace", p.RemoveGrace, 0); err != nil {
		return out, err
	}
	if len(p.AllowedAgents) > 10000 {
		return out, badRequest("policy.allowed_agents: %d agents, limit 10000", len(p.AllowedAgents))
	}
	if err := validLabels("policy.allowed_labels", p.AllowedLabels); err != nil {
		return out, err
	}
	out.MinDecryptVersion = p.MinDecryptVersion
	out.AllAgents = p.AllAgents
	out.AllowedAgents = p.AllowedAgents
	out.AllowedLabels = p.AllowedLabels
	return out, nil
}

func policyToWire(p dkms.Policy, purpose dkms.Purpose) cpapi.KeyPolicy {
	out := cpapi.KeyPolicy{
		RotationPeriod:    durationText(p.RotationPeriod),
		MinDecryptVersion: p.MinDecryptVersion,
		AllAgents:         p.AllAgents,
		AllowedAgents:     p.AllowedAgents,
		AllowedLabels:     p.AllowedLabels,
	}
	if purpose == dkms.PurposeGossip {
		ig, rg := p.InstallGrace, p.RemoveGrace
		if ig == 0 {
			ig = dkms.DefaultGossipInstallGrace
		}
		if rg == 0 {
			rg = dkms.DefaultGossipRemoveGrace
		}
		out.InstallGrace, out.RemoveGrace = durationText(ig), durationText(rg)
	}
	return out
}

func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func keyToWire(k dkms.KeyInfo) cpapi.Key {
	out := cpapi.Key{
		Name: k.Name, Purpose: string(k.Purpose), PrimaryVersion: k.Primary, LatestVersion: k.Latest,
		MinDecryptVersion: k.Policy.MinDecryptVersion, Policy: policyToWire(k.Policy, k.Purpose),
		CreatedAt: k.CreatedAt.UTC(), RotatedAt: k.RotatedAt.UTC(), NextRotation: optionalTime(dkms.NextRotation(k)),
		Versions: make([]cpapi.KeyVersion, 0, len(k.Versions)),
	}
	for _, v := range k.Versions {
		out.Versions = append(out.Versions, cpapi.KeyVersion{
			Version: v.Version, State: v.State.String(), CreatedAt: v.CreatedAt.UTC(), ChangedAt: v.ChangedAt.UTC(),
			ActivateAt: optionalTime(v.ActivateAt), PrevRemoveAt: optionalTime(v.PrevRemoveAt),
		})
	}
	return out
}

// purposeFromWire reads CreateKeyRequest.Purpose.
func purposeFromWire(p string) (dkms.Purpose, error) {
	switch p {
	case "", string(dkms.PurposeData):
		return dkms.PurposeData, nil
	case string(dkms.PurposeGossip):
		return dkms.PurposeGossip, nil
	}
	return "", badRequest("purpose: %q must be %q or %q", p, dkms.PurposeData, dkms.PurposeGossip)
}

// versionText names a key version in messages.
func versionText(name string, v uint32) string { return fmt.Sprintf("%s v%d", name, v) }
