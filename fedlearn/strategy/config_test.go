package strategy

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestNewFromConfig(t *testing.T) {
	for _, c := range []struct {
		spec string
		want string // Name(), or "" for an error
	}{
		{`{"name":"FedAvg"}`, "FedAvg"},
		{`{"name":"fedprox","proximal_mu":0.01}`, "FedProx"},
		{`{"name":"fedprox"}`, ""},
		{`{"name":"fedadam"}`, "FedAdam"},
		{`{"name":"fedyogi","eta":0.05,"tau":0.01}`, "FedYogi"},
		{`{"name":"fedadagrad","beta_1":0.9}`, ""},
		{`{"name":"fedmedian"}`, "FedMedian"},
		{`{"name":"fedtrimmedavg","beta":0.1}`, "FedTrimmedAvg"},
		{`{"name":"fedtrimmedavg","beta":0.6}`, ""},
		{`{"name":"krum","num_malicious_clients":4}`, "Krum"},
		{`{"name":"multikrum","num_malicious_clients":4,"num_clients_to_keep":10}`, "MultiKrum"},
		{`{"name":"multikrum"}`, ""},
		{`{"name":"fedavg","beta":0.1}`, ""},
		{`{"name":"fedsgd"}`, ""},
	} {
		var cfg Config
		if err := json.Unmarshal([]byte(c.spec), &cfg); err != nil {
			t.Fatal(err)
		}
		s, err := New(cfg)
		if c.want == "" {
			if !errors.Is(err, ErrConfig) {
				t.Errorf("%s: %v, want ErrConfig", c.spec, err)
			}
			continue
		}
		if err != nil || s.Name() != c.want {
			t.Errorf("%s: %v, %v; want %s", c.spec, s, err, c.want)
		}
	}
	s, _ := New(Config{Name: "fedyogi", Eta: ptr(0.05)})
	if got := s.(*FedOpt).Config(); got.Eta != 0.05 || got.Tau != 1e-3 || got.EtaL != 0.0316 {
		t.Errorf("fedyogi with eta 0.05: %+v", got)
	}
	s, _ = New(Config{Name: "fedtrimmedavg"})
	if s.(FedTrimmedAvg).Beta != 0.2 {
		t.Errorf("fedtrimmedavg default beta %v", s.(FedTrimmedAvg).Beta)
	}
}

func ptr[T any](v T) *T { return &v }
