//go:build !mochi

package ingest

import (
	"errors"
	"testing"
)

func TestEmbeddedBrokerAbsent(t *testing.T) {
	if _, err := StartBroker(BrokerConfig{}); !errors.Is(err, ErrNoEmbeddedBroker) {
		t.Fatalf("StartBroker: %v", err)
	}
}
