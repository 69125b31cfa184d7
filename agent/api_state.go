package agent

import (
	"net/http"

	"github.com/edgefleet/edgefleet/crdt"
)

// mvValues renders the concurrent values of a multi-value register as the
// API returns them: each as jsonValue does, binary values as
// {"value": base64, "encoding": "base64"}.
func mvValues(vals [][]byte) []any {
	out := make([]any, 0, len(vals))
	for _, v := range vals {
		jv, enc := jsonValue(v)
		if enc != "" {
			jv = map[string]string{"value": jv.(string), "encoding": enc}
		}
		out = append(out, jv)
	}
	return out
}

type counterJSON struct {
	Key   string `json:"key"`
	Value int64  `json:"value"`
}

type registerJSON struct {
	Key    string `json:"key"`
	Values []any  `json:"values"`
}

// listCounters answers GET /v1/state/{collection} for a counter
// collection: {"collection","type","counters":[{"key","value"}]}.
func (a *Agent) listCounters(w http.ResponseWriter, r *http.Request, s *crdt.Store, coll string) {
	cs, err := s.CounterList(r.Context(), coll)
	if err != nil {
		writeStoreError(w, err)
		return
	}
	out := make([]counterJSON, 0, len(cs))
	for _, c := range cs {
		out = append(out, counterJSON{Key: c.Key, Value: c.Value})
	}
	writeJSON(w, http.StatusOK, map[string]any{"collection": coll, "type": crdt.TypeCounter, "counters": out})
}

// listRegisters answers GET /v1/state/{collection} for a multi-value
// register collection: {"collection","type","registers":[{"key","values"}]}.
func (a *Agent) listRegisters(w http.ResponseWriter, r *http.Request, s *crdt.Store, coll string) {
	regs, err := s.MVList(r.Context(), coll)
	if err != nil {
		writeStoreError(w, err)
		return
	}
	out := make([]registerJSON, 0, len(regs))
	for _, reg := range regs {
		out = append(out, registerJSON{Key: reg.Key, Values: mvValues(reg.Values)})
	}
	writeJSON(w, http.StatusOK, map[string]any{"collection": coll, "type": crdt.TypeMVReg, "registers": out})
}
