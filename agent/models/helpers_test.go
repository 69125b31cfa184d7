package models

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/internal/modeltest"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

var (
	signingKey    = modeltest.Key
	testFile      = modeltest.Comfort
	sign          = modeltest.Sign
	signedWithNaN = modeltest.SignedWithNaN
	equalProbs    = modeltest.Close
)

func forwardOf(t *testing.T, f *fedlearn.File, raw []float64) (int, []float64) {
	return modeltest.Forward(t, f, raw)
}

// newTestManager is a manager over dir trusting k.
func newTestManager(t testing.TB, dir string, k *pqcrypto.SigningKey, devices func(context.Context) ([]DeviceMetrics, error)) (*Manager, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	mg, err := New(Config{Dir: dir, VerifyingKey: func() *pqcrypto.VerifyingKey { return k.Public() },
		Devices: devices, Registry: reg, Clock: clock.NewManual(time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC))})
	if err != nil {
		t.Fatal(err)
	}
	return mg, reg
}

func failures(_ *prometheus.Registry, m *Manager, reason string) float64 {
	return counter(m.m.installFailures.WithLabelValues(reason))
}

// counter reads a counter's value.
func counter(c prometheus.Counter) float64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		return -1
	}
	return d.GetCounter().GetValue()
}
