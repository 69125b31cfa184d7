package models

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgefleet/edgefleet/agent/modelsync"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/pqcrypto"
)

// DirName is the data directory's folder of deployed model files.
const DirName = "models"

// fileExt ends the file of a deployed model: DirName/NAME.model holds
// the signed file as the control plane sent it.
const fileExt = ".model"

// refusedExt is added to the file of a deployed model refused at start.
const refusedExt = ".refused"

// MaxFileBytes bounds a model file.
const MaxFileBytes = 64 << 20

// DeviceMetrics is a device of this agent and the numeric metrics it
// sends.
type DeviceMetrics struct {
	Device  string
	Metrics []string
}

// Config configures a Manager.
type Config struct {
	// Dir holds the deployed model files (DataDir/models). Required.
	Dir string
	// VerifyingKey returns the control plane's ML-DSA-65 key that signs
	// model files; nil (the agent is not enrolled) refuses every install.
	VerifyingKey func() *pqcrypto.VerifyingKey
	// ControlPlaneKey returns the control plane's key pinned at
	// enrollment (nil before). A model whose signature verifies with it
	// came from the control plane (InstalledModel.FromControlPlane), and
	// is removed when no longer assigned. Nil: no model counts as from
	// the control plane.
	ControlPlaneKey func() *pqcrypto.VerifyingKey
	// Devices lists this agent's devices and their metrics, to refuse a
	// model none of them can serve (see Install). Nil skips that check.
	Devices func(ctx context.Context) ([]DeviceMetrics, error)
	// Clock stamps the time a model is loaded. Nil means clock.Real().
	Clock clock.Clock
	// Logger receives install and load logs. Nil discards them.
	Logger *slog.Logger
	// Registry receives the metrics. Nil leaves them unregistered.
	Registry *prometheus.Registry
	// Changed, if set, is called (under the install lock) with the
	// models serving after each change.
	Changed func(serving []*Model)

	// open verifies and decodes a signed file; nil means openFile.
	// Tests replace it.
	open func(signed []byte, vk *pqcrypto.VerifyingKey) (Spec, error)
}

// Manager holds the deployed models by name. Install verifies a new
// model file, builds its forward pass, persists it and swaps it in
// atomically; on any failure the version serving before keeps serving,
// and the error is logged and counted. Lookups never wait for an
// install. Safe for concurrent use.
type Manager struct {
	cfg Config
	clk clock.Clock
	log *slog.Logger
	m   *metrics

	installMu sync.Mutex // serialises installs and their files
	serving   atomic.Pointer[map[string]*Model]
}

// New returns a manager with no model; Load reads the deployed ones.
func New(cfg Config) (*Manager, error) {
	if cfg.Dir == "" {
		return nil, errors.New("models: Dir is empty")
	}
	if cfg.open == nil {
		cfg.open = openFile
	}
	mg := &Manager{cfg: cfg, clk: clock.Or(cfg.Clock), log: cfg.Logger}
	if mg.log == nil {
		mg.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	empty := map[string]*Model{}
	mg.serving.Store(&empty)
	m, err := newMetrics(cfg.Registry, mg)
	if err != nil {
		return nil, fmt.Errorf("models: registering metrics: %w", err)
	}
	mg.m = m
	return mg, nil
}

// Get returns the model serving under name.
func (mg *Manager) Get(name string) (*Model, bool) {
	m, ok := (*mg.serving.Load())[name]
	return m, ok
}

// List returns the serving models, by name.
func (mg *Manager) List() []*Model {
	cur := *mg.serving.Load()
	out := make([]*Model, 0, len(cur))
	for _, m := range cur {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].spec.Name < out[j].spec.Name })
	return out
}

// Installed lists the serving models' name, version and digest
// (modelsync.ModelInstaller, for the uplink).
func (mg *Manager) Installed() []modelsync.InstalledModel {
	ms := mg.List()
	out := make([]modelsync.InstalledModel, len(ms))
	for i, m := range ms {
		out[i] = modelsync.InstalledModel{Name: m.spec.Name, Version: m.spec.Version, Digest: m.spec.Digest, FromControlPlane: m.fromCP}
	}
	return out
}

var _ modelsync.ModelInstaller = (*Manager)(nil)

// Predict predicts with the named model from raw features in schema
// order (NaN: missing, imputed). Errors wrap ErrUnknownModel or
// ErrInput.
func (mg *Manager) Predict(name string, raw []float64) (Prediction, error) {
	m, ok := mg.Get(name)
	if !ok {
		return Prediction{}, fmt.Errorf("%w: %q", ErrUnknownModel, name)
	}
	p, err := m.PredictRaw(raw)
	if err == nil {
		mg.m.predictions.WithLabelValues(m.spec.Name).Inc()
	}
	return p, err
}

// Install verifies a signed model file (the control plane's signature,
// the digest, the architecture, weights, schema and labels fitting
// together, and, when Config.Devices is set and lists devices, that at
// least one of them sends every metric the schema reads), writes it to
// the data directory (fsync, atomic rename) and makes it the serving
// version of its name. A file equal to the serving version is a no-op.
// On failure nothing changes: the previous version keeps serving. The
// error is an *InstallError (wrapping ErrRefused) naming what was wrong.
func (mg *Manager) Install(ctx context.Context, signed []byte) error {
	err := mg.install(ctx, signed)
	if err != nil {
		reason := ReasonFormat
		var ie *InstallError
		if errors.As(err, &ie) {
			reason = ie.Reason
		}
		mg.m.installFailures.WithLabelValues(reason).Inc()
		mg.log.Warn("model refused; the version serving before keeps serving", "reason", reason, "err", err)
	}
	return err
}

func (mg *Manager) install(ctx context.Context, signed []byte) error {
	mg.installMu.Lock()
	defer mg.installMu.Unlock()
	m, err := mg.verify(signed)
	if err != nil {
		return err
	}
	name := m.spec.Name
	if cur, ok := mg.Get(name); ok && cur.spec.Digest == m.spec.Digest && cur.spec.Version == m.spec.Version {
		mg.log.Info("model already serving", "model", name, "version", m.spec.Version)
		return nil
	}
	if err := mg.checkDevices(ctx, m); err != nil {
		return err
	}
	path := filepath.Join(mg.cfg.Dir, name+fileExt)
	if err := writeFileSync(path, signed); err != nil {
		return &InstallError{Reason: ReasonStorage, Err: fmt.Errorf("models: storing model %s: %w", name, err)}
	}
	// A file refused at an earlier start is stale now.
	if err := os.Remove(path + refusedExt); err != nil && !errors.Is(err, fs.ErrNotExist) {
		mg.log.Warn("could not delete the stale refused model file", "file", path+refusedExt, "err", err)
	}
	prev := mg.swap(m)
	if prev != nil {
		mg.log.Info("model updated", "model", name, "version", m.spec.Version, "previous", prev.spec.Version, "digest", m.spec.Digest)
	} else {
		mg.log.Info("model deployed", "model", name, "version", m.spec.Version, "digest", m.spec.Digest)
	}
	return nil
}

// verify checks a signed file and builds its model.
func (mg *Manager) verify(signed []byte) (*Model, error) {
	if len(signed) > MaxFileBytes {
		return nil, refuse(ReasonFormat, "model file of %d bytes exceeds %d", len(signed), MaxFileBytes)
	}
	var vk *pqcrypto.VerifyingKey
	if mg.cfg.VerifyingKey != nil {
		vk = mg.cfg.VerifyingKey()
	}
	if vk == nil {
		return nil, refuse(ReasonSignature, "no control-plane verifying key to check the model's signature with (is the agent enrolled?)")
	}
	s, err := mg.cfg.open(signed, vk)
	if err != nil {
		return nil, err
	}
	m, err := newModel(s, mg.clk.Now())
	if err != nil {
		return nil, err
	}
	m.fromCP = mg.fromControlPlane(signed, vk)
	return m, nil
}

// fromControlPlane reports whether a file verified with vk is signed
// with the control plane's key.
func (mg *Manager) fromControlPlane(signed []byte, vk *pqcrypto.VerifyingKey) bool {
	if mg.cfg.ControlPlaneKey == nil {
		return false
	}
	cp := mg.cfg.ControlPlaneKey()
	if cp == nil {
		return false
	}
	if cp.Fingerprint() == vk.Fingerprint() {
		return true
	}
	_, err := fedlearn.Verify(signed, cp)
	return err == nil
}

// Remove stops serving the named model and deletes its file (and a
// refused one of that name) durably: the directory is synced. Removing
// a model that does not serve is not an error.
func (mg *Manager) Remove(ctx context.Context, name string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	mg.installMu.Lock()
	defer mg.installMu.Unlock()
	path := filepath.Join(mg.cfg.Dir, name+fileExt)
	for _, p := range []string{path, path + refusedExt} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("models: removing model %s: %w", name, err)
		}
	}
	if err := syncDir(mg.cfg.Dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("models: removing model %s: %w", name, err)
	}
	cur := *mg.serving.Load()
	prev, ok := cur[name]
	if !ok {
		return nil
	}
	next := make(map[string]*Model, len(cur))
	for k, v := range cur {
		if k != name {
			next[k] = v
		}
	}
	mg.serving.Store(&next)
	mg.m.info.DeleteLabelValues(prev.spec.Name, prev.spec.Version, prev.spec.Digest)
	if mg.cfg.Changed != nil {
		mg.cfg.Changed(mg.List())
	}
	mg.log.Info("model removed", "model", name, "version", prev.spec.Version, "digest", prev.spec.Digest)
	return nil
}

// checkDevices refuses a model that none of the agent's devices can
// serve, when the agent knows devices.
func (mg *Manager) checkDevices(ctx context.Context, m *Model) error {
	if mg.cfg.Devices == nil {
		return nil
	}
	devs, err := mg.cfg.Devices(ctx)
	if err != nil {
		return &InstallError{Reason: ReasonStorage, Err: fmt.Errorf("models: listing the devices to check model %s against: %w", m.spec.Name, err)}
	}
	if len(devs) == 0 {
		return nil
	}
	sent := map[string]bool{}
	best, bestMissing := "", []string(nil)
	for _, d := range devs {
		var missing []string
		for _, metric := range m.metrics {
			if !slices.Contains(d.Metrics, metric) {
				missing = append(missing, metric)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		if best == "" || len(missing) < len(bestMissing) {
			best, bestMissing = d.Device, missing
		}
		for _, x := range d.Metrics {
			sent[x] = true
		}
	}
	all := make([]string, 0, len(sent))
	for x := range sent {
		all = append(all, x)
	}
	sort.Strings(all)
	return refuse(ReasonDevices, "model %s %s: schema does not match the device's metrics: none of this agent's %d devices sends all of %s (closest, %s, lacks %s; the devices send %s)",
		m.spec.Name, m.spec.Version, len(devs), strings.Join(m.metrics, ", "), best, strings.Join(bestMissing, ", "), strings.Join(all, ", "))
}

// swap makes m the serving version of its name and returns the one it
// replaces. The caller holds installMu.
func (mg *Manager) swap(m *Model) *Model {
	cur := *mg.serving.Load()
	next := make(map[string]*Model, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	prev := cur[m.spec.Name]
	next[m.spec.Name] = m
	mg.serving.Store(&next)
	if prev != nil {
		mg.m.info.DeleteLabelValues(prev.spec.Name, prev.spec.Version, prev.spec.Digest)
	}
	mg.m.info.WithLabelValues(m.spec.Name, m.spec.Version, m.spec.Digest).Set(1)
	mg.m.predictions.WithLabelValues(m.spec.Name)
	if mg.cfg.Changed != nil {
		mg.cfg.Changed(mg.List())
	}
	return prev
}

// Load reads the deployed model files of the data directory and verifies
// each again, as Install does (the devices check aside: devices come and
// go). A file that fails is logged, counted and left in place (renamed
// NAME.model.refused) and its model does not serve. Without the
// control plane's key (not enrolled) nothing is loaded and no file is
// touched. Load returns the number of models serving.
func (mg *Manager) Load(ctx context.Context) (int, error) {
	mg.installMu.Lock()
	defer mg.installMu.Unlock()
	if err := os.MkdirAll(mg.cfg.Dir, 0o700); err != nil {
		return 0, fmt.Errorf("models: %w", err)
	}
	if mg.cfg.VerifyingKey == nil || mg.cfg.VerifyingKey() == nil {
		mg.log.Warn("no control-plane verifying key (agent not enrolled): deployed models are not loaded", "dir", mg.cfg.Dir)
		return 0, nil
	}
	entries, err := os.ReadDir(mg.cfg.Dir)
	if err != nil {
		return 0, fmt.Errorf("models: %w", err)
	}
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), fileExt)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(mg.cfg.Dir, e.Name())
		m, err := mg.loadFile(path, name)
		if err != nil {
			reason := ReasonFormat
			var ie *InstallError
			if errors.As(err, &ie) {
				reason = ie.Reason
			}
			mg.m.installFailures.WithLabelValues(reason).Inc()
			mg.log.Error("deployed model refused at start; it does not serve", "file", path, "reason", reason, "err", err)
			if rerr := os.Rename(path, path+refusedExt); rerr != nil {
				mg.log.Warn("could not set the refused model file aside", "file", path, "err", rerr)
			}
			continue
		}
		mg.swap(m)
		mg.log.Info("model loaded", "model", m.spec.Name, "version", m.spec.Version, "digest", m.spec.Digest)
	}
	return len(*mg.serving.Load()), nil
}

func (mg *Manager) loadFile(path, name string) (*Model, error) {
	b, err := readFileMax(path, MaxFileBytes)
	if err != nil {
		return nil, &InstallError{Reason: ReasonStorage, Err: fmt.Errorf("models: %w", err)}
	}
	m, err := mg.verify(b)
	if err != nil {
		return nil, err
	}
	if m.spec.Name != name {
		return nil, refuse(ReasonFormat, "%s holds model %q", path, m.spec.Name)
	}
	return m, nil
}

// readFileMax reads a file of at most limit bytes.
func readFileMax(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b, nil
}

// writeFileSync writes path through a temporary file in the same
// directory: written, synced, renamed over path, and the directory
// synced, so a crash leaves either the old file or the new one.
func writeFileSync(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename: nothing to remove
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir syncs a directory, making the renames and removals in it
// durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
