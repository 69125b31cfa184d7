package membership

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// ErrPartitioned is returned by a partitioned transport's dials to an
// address in another group.
var ErrPartitioned = errors.New("membership: network partitioned")

// Partition injects network partitions between agents, for tests and the
// simulator (like memberlist's MockNetwork, but over real transports). One
// Partition is shared by all agents of one simulated network; each agent's
// transport is wrapped with Wrap. While split, packets between addresses in
// different groups are silently dropped (as a lossy network would) and
// stream dials between them fail with ErrPartitioned. Addresses listed in no
// group are not restricted. Streams already open when Split is called are
// left alone (memberlist's streams are short-lived).
type Partition struct {
	mu    sync.RWMutex
	group map[string]int // canonical address -> group index; nil when healed
}

// NewPartition returns a healed Partition.
func NewPartition() *Partition { return &Partition{} }

// Split cuts the network into groups of advertise addresses ("host:port"):
// addresses in different groups can no longer reach each other. A later
// Split replaces the earlier one.
func (p *Partition) Split(groups ...[]string) {
	m := make(map[string]int)
	for i, g := range groups {
		for _, addr := range g {
			m[CanonicalAddr(addr)] = i
		}
	}
	p.mu.Lock()
	p.group = m
	p.mu.Unlock()
}

// Heal removes the partition.
func (p *Partition) Heal() {
	p.mu.Lock()
	p.group = nil
	p.mu.Unlock()
}

// blocked reports whether traffic between a and b is cut.
func (p *Partition) blocked(a, b string) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.group == nil {
		return false
	}
	ga, oka := p.group[a]
	gb, okb := p.group[CanonicalAddr(b)]
	return oka && okb && ga != gb
}

// Wrap returns t with the partition applied to traffic sent from self, the
// agent's advertise address ("host:port"). Every agent of the network must
// be wrapped, since only outgoing traffic is filtered.
func (p *Partition) Wrap(t memberlist.Transport, self string) memberlist.Transport {
	return &partitionedTransport{NodeAwareTransport: nodeAware(t), p: p, self: CanonicalAddr(self)}
}

type partitionedTransport struct {
	memberlist.NodeAwareTransport
	p    *Partition
	self string
}

var _ memberlist.NodeAwareTransport = (*partitionedTransport)(nil)

func (t *partitionedTransport) WriteTo(b []byte, addr string) (time.Time, error) {
	if t.p.blocked(t.self, addr) {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteTo(b, addr)
}

func (t *partitionedTransport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	if t.p.blocked(t.self, a.Addr) {
		return time.Now(), nil
	}
	return t.NodeAwareTransport.WriteToAddress(b, a)
}

func (t *partitionedTransport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	if t.p.blocked(t.self, addr) {
		return nil, fmt.Errorf("membership: dial %s from %s: %w", addr, t.self, ErrPartitioned)
	}
	return t.NodeAwareTransport.DialTimeout(addr, timeout)
}

func (t *partitionedTransport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	if t.p.blocked(t.self, a.Addr) {
		return nil, fmt.Errorf("membership: dial %s from %s: %w", a.Addr, t.self, ErrPartitioned)
	}
	return t.NodeAwareTransport.DialAddressTimeout(a, timeout)
}

// CanonicalAddr normalizes "host:port" so that equal addresses compare
// equal (IPv4-mapped IPv6 forms, bracketed IPv6).
func CanonicalAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip != nil {
		host = ip.String()
	}
	if n, err := strconv.Atoi(port); err == nil {
		port = strconv.Itoa(n)
	}
	return net.JoinHostPort(host, port)
}
