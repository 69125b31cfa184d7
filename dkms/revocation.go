package dkms

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/edgefleet/edgefleet/pqcrypto"
)

// Revocation lists tell agents which peers to refuse. The control plane
// issues one whenever an agent is revoked (decommissioned), signed with
// the same ML-DSA-65 key as key messages, and agents pass it to each other
// in replicated state, so an agent that cannot reach the control plane
// still learns it. Revocations are never undone, so each list holds every
// revoked agent and its Version is the number of entries: a list with a
// higher version supersedes one with a lower.
//
// Binary layout (integers big-endian, times in Unix milliseconds):
//
//	size  field
//	4     magic "EFRL"
//	1     format version (1)
//	8     list version (= number of entries)
//	8     issued at
//	4     number of entries (0..MaxRevokedAgents)
//	per entry, sorted by agent id:
//	  1+a   agent id (length, bytes; 1..255)
//	  1+n   node name (length, bytes; 0..255; 0 if unknown)
//	  8     revoked at
//	3309  ML-DSA-65 signature under RevocationListContext over every
//	      byte before it
const (
	// RevocationListContext is the ML-DSA context string of revocation
	// lists.
	RevocationListContext = "edgefleet/dkms/revocation-list/v1"
	// MaxRevokedAgents bounds the entries of a revocation list.
	MaxRevokedAgents = 4096

	revocationMagic   = "EFRL"
	revocationVersion = 1
	// MaxRevocationListSize bounds an encoded revocation list.
	MaxRevocationListSize = 4 + 1 + 8 + 8 + 4 + MaxRevokedAgents*(1+255+1+255+8) + pqcrypto.SignatureSize
)

// RevokedAgent is one entry of a revocation list.
type RevokedAgent struct {
	ID        string    // the agent id at the control plane
	Name      string    // its node name (memberlist, replica id)
	RevokedAt time.Time // when it was revoked
}

// RevocationList is a signed list of revoked agents. ParseRevocationList
// checks structure only; Verify checks the signature.
type RevocationList struct {
	Version   uint64
	IssuedAt  time.Time
	Agents    []RevokedAgent // sorted by ID
	Signature []byte
}

// NewRevocationList returns the unsigned list of agents, sorted by id,
// with its version set to their number.
func NewRevocationList(agents []RevokedAgent, issuedAt time.Time) (*RevocationList, error) {
	l := &RevocationList{Version: uint64(len(agents)), IssuedAt: issuedAt.UTC().Truncate(time.Millisecond), Agents: slices.Clone(agents)}
	slices.SortFunc(l.Agents, func(a, b RevokedAgent) int { return strings.Compare(a.ID, b.ID) })
	if err := l.check(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *RevocationList) check() error {
	if len(l.Agents) > MaxRevokedAgents {
		return fmt.Errorf("dkms: revocation list of %d agents, at most %d: %w", len(l.Agents), MaxRevokedAgents, ErrMalformed)
	}
	if l.Version != uint64(len(l.Agents)) {
		return fmt.Errorf("dkms: revocation list version %d with %d entries: %w", l.Version, len(l.Agents), ErrMalformed)
	}
	if l.IssuedAt.UnixMilli() <= 0 {
		return fmt.Errorf("dkms: revocation list issued at %v: %w", l.IssuedAt, ErrMalformed)
	}
	for i, a := range l.Agents {
		if err := checkAgentID(a.ID); err != nil {
			return fmt.Errorf("dkms: revocation list: %w: %w", err, ErrMalformed)
		}
		if len(a.Name) > 255 {
			return fmt.Errorf("dkms: revocation list: node name of %d bytes: %w", len(a.Name), ErrMalformed)
		}
		if a.RevokedAt.UnixMilli() <= 0 {
			return fmt.Errorf("dkms: revocation list: agent %q revoked at %v: %w", a.ID, a.RevokedAt, ErrMalformed)
		}
		if i > 0 && l.Agents[i-1].ID >= a.ID {
			return fmt.Errorf("dkms: revocation list: agents not sorted by id or repeated at %q: %w", a.ID, ErrMalformed)
		}
	}
	return nil
}

// signedBytes returns the bytes the signature covers.
func (l *RevocationList) signedBytes() []byte {
	b := append([]byte(revocationMagic), revocationVersion)
	b = binary.BigEndian.AppendUint64(b, l.Version)
	b = binary.BigEndian.AppendUint64(b, msOf(l.IssuedAt))
	b = binary.BigEndian.AppendUint32(b, uint32(len(l.Agents)))
	for _, a := range l.Agents {
		b = append(b, byte(len(a.ID)))
		b = append(b, a.ID...)
		b = append(b, byte(len(a.Name)))
		b = append(b, a.Name...)
		b = binary.BigEndian.AppendUint64(b, msOf(a.RevokedAt))
	}
	return b
}

// MarshalBinary encodes a signed list.
func (l *RevocationList) MarshalBinary() ([]byte, error) {
	if err := l.check(); err != nil {
		return nil, err
	}
	if len(l.Signature) != pqcrypto.SignatureSize {
		return nil, fmt.Errorf("dkms: revocation list is not signed: %w", ErrMalformed)
	}
	return append(l.signedBytes(), l.Signature...), nil
}

// Verify checks the control plane's signature on the list.
func (l *RevocationList) Verify(controlPlane *pqcrypto.VerifyingKey) error {
	if controlPlane == nil {
		return fmt.Errorf("dkms: no control-plane key to verify revocation list v%d: %w", l.Version, ErrBadSignature)
	}
	if err := controlPlane.Verify(RevocationListContext, l.signedBytes(), l.Signature); err != nil {
		return fmt.Errorf("dkms: revocation list v%d: %w", l.Version, err)
	}
	return nil
}

// Names returns the set of revoked node names (entries without one are
// left out).
func (l *RevocationList) Names() map[string]bool {
	out := make(map[string]bool, len(l.Agents))
	for _, a := range l.Agents {
		if a.Name != "" {
			out[a.Name] = true
		}
	}
	return out
}

// ParseRevocationList decodes a revocation list. It checks structure only;
// nothing in it is trusted until Verify succeeds.
func ParseRevocationList(b []byte) (*RevocationList, error) {
	if len(b) > MaxRevocationListSize {
		return nil, fmt.Errorf("dkms: revocation list of %d bytes, at most %d: %w", len(b), MaxRevocationListSize, ErrMalformed)
	}
	r := reader{b: b}
	if string(r.next(4)) != revocationMagic {
		return nil, fmt.Errorf("dkms: revocation list: bad magic: %w", ErrMalformed)
	}
	if v := r.byte(); v != revocationVersion {
		return nil, fmt.Errorf("dkms: revocation list format version %d, want %d: %w", v, revocationVersion, ErrMalformed)
	}
	l := &RevocationList{Version: r.uint64(), IssuedAt: timeOfMS(r.uint64())}
	n := r.uint32()
	if n > MaxRevokedAgents {
		return nil, fmt.Errorf("dkms: revocation list of %d agents, at most %d: %w", n, MaxRevokedAgents, ErrMalformed)
	}
	for i := uint32(0); i < n && r.err == nil; i++ {
		a := RevokedAgent{ID: string(r.next(int(r.byte())))}
		a.Name = string(r.next(int(r.byte())))
		a.RevokedAt = timeOfMS(r.uint64())
		l.Agents = append(l.Agents, a)
	}
	l.Signature = append([]byte(nil), r.next(pqcrypto.SignatureSize)...)
	if r.err != nil {
		return nil, fmt.Errorf("dkms: revocation list truncated: %v: %w", r.err, ErrMalformed)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("dkms: revocation list: %d bytes after the signature: %w", len(r.b), ErrMalformed)
	}
	if err := l.check(); err != nil {
		return nil, err
	}
	return l, nil
}

// SignRevocationList signs l with the control plane's key-message signing
// key. It works while the service is sealed (the signing key is not under
// the root).
func (s *Service) SignRevocationList(l *RevocationList) error {
	if err := l.check(); err != nil {
		return err
	}
	sig, err := s.signer.Sign(RevocationListContext, l.signedBytes())
	if err != nil {
		return fmt.Errorf("dkms: signing revocation list v%d: %w", l.Version, err)
	}
	l.Signature = sig
	return nil
}

// ControlPlaneKey is the pinned control-plane key this keyring checks key
// messages (and revocation lists) against.
func (a *AgentKeys) ControlPlaneKey() *pqcrypto.VerifyingKey { return a.cp }
