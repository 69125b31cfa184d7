package localapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/edgefleet/edgefleet/agent/agentapi"
	"github.com/edgefleet/edgefleet/crdt"
)

// ValidateName checks a collection or key name given by a user: non-empty,
// bounded (the store's limits), valid UTF-8, no control characters;
// collection names are further restricted to letters, digits, '.', '_'
// and '-'.
func ValidateName(what, s string) error {
	limit := crdt.MaxKeyLen
	if what == "collection" {
		limit = crdt.MaxCollectionLen
	}
	if s == "" {
		return fmt.Errorf("%s name is empty", what)
	}
	if len(s) > limit {
		return fmt.Errorf("%s name is %d bytes, at most %d", what, len(s), limit)
	}
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s name is not valid UTF-8", what)
	}
	for _, r := range s {
		if r < ' ' || r == 0x7f {
			return fmt.Errorf("%s name %q contains a control character", what, s)
		}
		if what == "collection" && !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-", r)) {
			return fmt.Errorf("collection name %q may only contain letters, digits, '.', '_' and '-'", s)
		}
	}
	return nil
}

// pathNames validates the collection (and key, when wantKey) of r.
func pathNames(w http.ResponseWriter, r *http.Request, wantKey bool) (coll, key string, ok bool) {
	coll = r.PathValue("collection")
	if err := ValidateName("collection", coll); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return "", "", false
	}
	if wantKey {
		key = r.PathValue("key")
		if err := ValidateName("key", key); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return "", "", false
		}
	}
	return coll, key, true
}

// rawString is s as a JSON string, with <, > and & unescaped as the
// API's encoder writes them.
func rawString(s string) json.RawMessage {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// jsonValue renders a stored value: JSON as is, other UTF-8 text as a
// string, anything else as a base64 string (with encoding "base64").
func jsonValue(b []byte) (json.RawMessage, string) {
	if len(b) > 0 && json.Valid(b) {
		return json.RawMessage(bytes.TrimSpace(b)), ""
	}
	if utf8.Valid(b) {
		return rawString(string(b)), ""
	}
	return rawString(base64.StdEncoding.EncodeToString(b)), "base64"
}

// mvValues renders the concurrent values of a multi-value register: each
// as jsonValue does, binary values as {"value": base64, "encoding": "base64"}.
func mvValues(vals [][]byte) []json.RawMessage {
	out := make([]json.RawMessage, 0, len(vals))
	for _, v := range vals {
		jv, enc := jsonValue(v)
		if enc != "" {
			jv = json.RawMessage(`{"encoding":"base64","value":` + string(jv) + `}`)
		}
		out = append(out, jv)
	}
	return out
}

func toEntry(e crdt.Entry) agentapi.Entry {
	v, enc := jsonValue(e.Value)
	return agentapi.Entry{Key: e.Key, Value: v, Encoding: enc, HLC: e.HLC.String(), Origin: e.Origin}
}

func (s *server) handleCollections(w http.ResponseWriter, r *http.Request) {
	st, err := s.b.LiveStore()
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	infos, err := st.Collections(r.Context())
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	out := make([]agentapi.Collection, 0, len(infos))
	for _, c := range infos {
		out = append(out, agentapi.Collection{Name: c.Name, Type: string(c.Type), Keys: c.Keys})
	}
	writeJSON(w, http.StatusOK, out)
}

// readStore validates the names of r and returns the live store; on
// failure it has written the error.
func (s *server) readStore(w http.ResponseWriter, r *http.Request, wantKey bool) (st *crdt.Store, coll, key string, ok bool) {
	coll, key, ok = pathNames(w, r, wantKey)
	if !ok {
		return nil, "", "", false
	}
	st, err := s.b.LiveStore()
	if err != nil {
		s.writeStoreError(w, err)
		return nil, "", "", false
	}
	return st, coll, key, true
}

func (s *server) handleList(w http.ResponseWriter, r *http.Request) {
	st, coll, _, ok := s.readStore(w, r, false)
	if !ok {
		return
	}
	ctx := r.Context()
	t := s.b.CollectionType(coll)
	out := agentapi.Listing{Collection: coll, Type: string(t)}
	switch t {
	case crdt.TypeLWW:
		entries, err := st.List(ctx, coll)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		out.Entries = make([]agentapi.Entry, 0, len(entries))
		for _, e := range entries {
			out.Entries = append(out.Entries, toEntry(e))
		}
	case crdt.TypeORSet:
		members, err := st.SetMembers(ctx, coll)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		out.Members = append(make([]string, 0, len(members)), members...)
	case crdt.TypeCounter:
		cs, err := st.CounterList(ctx, coll)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		out.Counters = make([]agentapi.Counter, 0, len(cs))
		for _, c := range cs {
			out.Counters = append(out.Counters, agentapi.Counter{Key: c.Key, Value: c.Value})
		}
	case crdt.TypeMVReg:
		regs, err := st.MVList(ctx, coll)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		out.Registers = make([]agentapi.Register, 0, len(regs))
		for _, reg := range regs {
			out.Registers = append(out.Registers, agentapi.Register{Key: reg.Key, Values: mvValues(reg.Values)})
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) handleGet(w http.ResponseWriter, r *http.Request) {
	st, coll, key, ok := s.readStore(w, r, true)
	if !ok {
		return
	}
	ctx := r.Context()
	switch s.b.CollectionType(coll) {
	case crdt.TypeLWW:
		e, found, err := st.Get(ctx, coll, key)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		if !found {
			writeError(w, http.StatusNotFound, fmt.Sprintf("key %q not found in %q", key, coll))
			return
		}
		writeJSON(w, http.StatusOK, toEntry(e))
	case crdt.TypeMVReg:
		vals, err := st.MVGet(ctx, coll, key)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		if len(vals) == 0 {
			writeError(w, http.StatusNotFound, fmt.Sprintf("key %q not found in %q", key, coll))
			return
		}
		writeJSON(w, http.StatusOK, agentapi.Item{Key: key, Values: mvValues(vals)})
	case crdt.TypeORSet:
		present, err := st.SetContains(ctx, coll, key)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, agentapi.Item{Key: key, Present: &present})
	case crdt.TypeCounter:
		n, err := st.CounterValue(ctx, coll, key)
		if err != nil {
			s.writeStoreError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, agentapi.Item{Key: key, Value: json.RawMessage(strconv.FormatInt(n, 10))})
	}
}

// readBody reads the request body within MaxBodyBytes; on failure it has
// written the error.
func (s *server) readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	var buf bytes.Buffer
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body exceeds %d bytes", tooBig.Limit))
			return nil, false
		}
		writeError(w, http.StatusBadRequest, "reading body: "+err.Error())
		return nil, false
	}
	return buf.Bytes(), true
}

func (s *server) handlePut(w http.ResponseWriter, r *http.Request) {
	coll, key, ok := pathNames(w, r, true)
	if !ok {
		return
	}
	body, ok := s.readBody(w, r)
	if !ok {
		return
	}
	ctx := r.Context()
	t := s.b.CollectionType(coll)
	var op func(st *crdt.Store) (crdt.Delta, error)
	switch t {
	case crdt.TypeLWW:
		op = func(st *crdt.Store) (crdt.Delta, error) { return st.Put(ctx, coll, key, body) }
	case crdt.TypeMVReg:
		op = func(st *crdt.Store) (crdt.Delta, error) { return st.MVPut(ctx, coll, key, body) }
	case crdt.TypeORSet:
		op = func(st *crdt.Store) (crdt.Delta, error) { return st.SetAdd(ctx, coll, key) }
	case crdt.TypeCounter:
		var req struct {
			Add *int64 `json:"add"`
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, `counter body must be {"add": n}: `+err.Error())
			return
		}
		if dec.More() {
			writeError(w, http.StatusBadRequest, `counter body must be one JSON object {"add": n}`)
			return
		}
		if req.Add == nil {
			writeError(w, http.StatusBadRequest, `counter body must be {"add": n}: missing "add"`)
			return
		}
		n := *req.Add
		op = func(st *crdt.Store) (crdt.Delta, error) { return st.CounterAdd(ctx, coll, key, n) }
	}
	s.writeOp(w, coll, key, t, op)
}

func (s *server) handleDelete(w http.ResponseWriter, r *http.Request) {
	coll, key, ok := pathNames(w, r, true)
	if !ok {
		return
	}
	ctx := r.Context()
	t := s.b.CollectionType(coll)
	var op func(st *crdt.Store) (crdt.Delta, error)
	switch t {
	case crdt.TypeLWW:
		op = func(st *crdt.Store) (crdt.Delta, error) { return st.Delete(ctx, coll, key) }
	case crdt.TypeMVReg:
		op = func(st *crdt.Store) (crdt.Delta, error) { return st.MVDelete(ctx, coll, key) }
	case crdt.TypeORSet:
		op = func(st *crdt.Store) (crdt.Delta, error) { return st.SetRemove(ctx, coll, key) }
	case crdt.TypeCounter:
		w.Header().Set("Allow", "GET, PUT")
		writeError(w, http.StatusMethodNotAllowed, `counters cannot be deleted; PUT {"add": -n} to decrement`)
		return
	}
	s.writeOp(w, coll, key, t, op)
}

func (s *server) writeOp(w http.ResponseWriter, coll, key string, t crdt.Type, op func(st *crdt.Store) (crdt.Delta, error)) {
	if msg, ok := s.cfg.Guarded[coll]; ok {
		writeError(w, http.StatusForbidden, msg)
		return
	}
	d, err := s.b.Commit(op)
	if err != nil {
		s.writeStoreError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, agentapi.WriteResult{Collection: coll, Key: key, Type: string(t), Origin: d.Origin, Seq: d.To})
}
