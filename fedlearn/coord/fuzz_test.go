package coord

import (
	"encoding/json"
	"testing"
)

// FuzzSpec: any JSON job spec (an operator's request body) is resolved or
// refused with an error, never a panic; a resolved one starts a job whose
// first round opens.
func FuzzSpec(f *testing.F) {
	b, _ := json.Marshal(testSpec())
	f.Add(b)
	f.Add([]byte(`{"model":"m","arch":{"kind":"mlp","inputs":1,"classes":2,"hidden":[3]},"labels":["a","b"],"schema":{"features":[{"name":"x","metric":"x","agg":"mean","window":"1m"}]},"strategy":{"name":"multikrum","num_clients_to_keep":2},"fraction_fit":0.3}`))
	f.Add([]byte(`{"strategy":{"name":"fedprox","proximal_mu":-1}}`))
	sp := testSpec()
	sp.Carbon = &Carbon{Window: 3600e9, MinBattery: 0.2}
	b, _ = json.Marshal(sp)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var s Spec
		if json.Unmarshal(b, &s) != nil {
			return
		}
		c, err := New("j", s)
		if err != nil {
			return
		}
		c.Tick(t0, []string{"a", "b", "c", "d"})
	})
}

// FuzzParseDP: any --dp flag is parsed or refused with an error, never a
// panic; a parsed one prints back to itself.
func FuzzParseDP(f *testing.F) {
	for _, s := range []string{"central:z=1.0,C=1.0", "local:z=0.5,C=2,delta=1e-6,budget=8", "z=1,C=1", "global:z=1", "z=1,z=2,C=1", "central:", ":,="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDP(s)
		if err != nil {
			return
		}
		again, err := ParseDP(d.String())
		if err != nil || *again != *d {
			t.Fatalf("%q parsed as %+v, printed %q, parsed back as %+v (%v)", s, d, d.String(), again, err)
		}
	})
}
