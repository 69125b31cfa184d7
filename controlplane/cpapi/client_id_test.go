package cpapi

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestClientRefusesPathTraversalIDs: an id that would leave its path segment
// never reaches the server (it would have redirected to another endpoint
// carrying the bearer token).
func TestClientRefusesPathTraversalIDs(t *testing.T) {
	c, err := NewClient(ClientConfig{URL: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"", ".", "..", "../tokens", "a/b", "a?b", "a#b", "a%2f", "a b"} {
		if _, err := c.GetAgent(context.Background(), id); !errors.Is(err, ErrBadRequest) {
			t.Errorf("GetAgent(%q) = %v, want ErrBadRequest", id, err)
		}
		if _, err := c.RevokeAPIToken(context.Background(), id); !errors.Is(err, ErrBadRequest) {
			t.Errorf("RevokeAPIToken(%q) = %v, want ErrBadRequest", id, err)
		}
	}
}

func TestNewClientRefusesBadConfig(t *testing.T) {
	for _, c := range []ClientConfig{
		{URL: "http://x"},
		{URL: "https://"},
		{URL: "https://x", Timeout: -time.Second},
	} {
		if _, err := NewClient(c); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("NewClient(%+v) = %v, want ErrInvalidConfig", c, err)
		}
	}
}
