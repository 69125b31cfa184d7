package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/edgefleet/edgefleet/agent"
	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/crdt"
	"github.com/edgefleet/edgefleet/internal/cli"
)

// Files of a data directory that inspect reads besides ingest.db.
const (
	stateFile = "state.db"
	// identityDir and identityFile are where the uplink records its
	// enrollment (agent/uplink: DataDir/controlplane/identity.json), with
	// the agent's certificate beside it.
	identityDir  = "controlplane"
	identityFile = "identity.json"
	certFile     = "agent.pem"
	// maxIdentityBytes bounds identity.json and agent.pem as read here.
	maxIdentityBytes = 1 << 20
)

// errNoAgentData: the directory holds none of the files an agent writes.
var errNoAgentData = errors.New("inspect: no agent data")

// inspectReport is what `edge-agent inspect` prints: the ingestion
// database's report (ingest.InspectReport, its fields at the top level;
// absent when the agent has no ingestion database), a summary of the
// replicated state database and the uplink's identity.
type inspectReport struct {
	DataDir string `json:"data_dir"`
	*ingest.InspectReport
	State  *stateSummary   `json:"state,omitempty"`
	Uplink *uplinkIdentity `json:"uplink,omitempty"`
	Notes  []string        `json:"notes,omitempty"`
}

// stateSummary describes the replicated state database: crdt.Inspect's
// report, or the file's size and the reason it could not be read.
type stateSummary struct {
	Database string `json:"database"`
	// Bytes is the size of the database file and its write-ahead log.
	Bytes int64 `json:"bytes"`
	*crdt.InspectReport
	Error string `json:"error,omitempty"`
}

// uplinkIdentity is the agent's enrollment with a control plane.
type uplinkIdentity struct {
	File       string    `json:"file"`
	AgentID    string    `json:"agent_id,omitempty"`
	Server     string    `json:"server,omitempty"`
	EnrolledAt time.Time `json:"enrolled_at,omitzero"`
	// CertificateNotAfter is when the agent's certificate (agent.pem)
	// expires, when it is present and parses.
	CertificateNotAfter time.Time `json:"certificate_not_after,omitzero"`
	// Error says what is wrong with the files, when something is.
	Error string `json:"error,omitempty"`
}

func newInspectCmd() *cobra.Command {
	var (
		out        cli.OutputFlags
		data, conf string
	)
	c := &cobra.Command{
		Use:   "inspect",
		Short: "Describe an agent's data directory: ingestion database, replicated state, uplink identity",
		Long: `inspect reads an agent's data directory without changing it; the agent may
be running or stopped. It reports the ingestion database (readings, rollups,
dead letters by reason, the outbox waiting for the uplink, devices with their
metrics and last values, every store counter), the replicated state database
(its size) and the identity the uplink enrolled with (agent id, control plane,
certificate expiry).

The directory is --data, else EDGEFLEET_DATA_DIR, else the data_dir of the
config file (--config or EDGEFLEET_CONFIG), else the agent's default. A
directory holding none of these files is an error (exit 1).`,
		Example: `  edge-agent inspect --data /var/lib/edgefleet
  edge-agent inspect --data ./edgefleet-data --json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			format, err := out.Format()
			if err != nil {
				return err
			}
			dir, err := inspectDataDir(data, conf, os.Getenv)
			if err != nil {
				return err
			}
			rep, err := inspect(dir)
			if err != nil {
				return err
			}
			return cli.Print(c.OutOrStdout(), format, rep, func(w io.Writer) error { return printInspect(w, rep) })
		},
	}
	out.Register(c)
	f := c.Flags()
	f.StringVar(&data, "data", "", "the agent's data directory (env "+agent.EnvDataDir+")")
	f.StringVar(&conf, "config", "", "agent config file to take data_dir from (env EDGEFLEET_CONFIG)")
	return c
}

// inspectDataDir picks the directory: the flag, the environment, the
// config file's data_dir, the default.
func inspectDataDir(flag, conf string, getenv func(string) string) (string, error) {
	if flag != "" {
		return flag, nil
	}
	if d := getenv(agent.EnvDataDir); d != "" {
		return d, nil
	}
	if conf == "" {
		conf = getenv("EDGEFLEET_CONFIG")
	}
	if conf != "" {
		cfg, err := agent.LoadConfig(conf)
		if err != nil {
			return "", err
		}
		return cfg.DataDir, nil
	}
	return agent.DefaultConfig().DataDir, nil
}

// inspect builds the report of dir.
func inspect(dir string) (inspectReport, error) {
	rep := inspectReport{DataDir: dir}
	st, err := os.Stat(dir)
	if err != nil {
		return rep, fmt.Errorf("inspect: data directory: %w", err)
	}
	if !st.IsDir() {
		return rep, fmt.Errorf("inspect: data directory %s is not a directory", dir)
	}
	found := false

	ingestPath := filepath.Join(dir, ingest.StoreFile)
	if exists, err := fileExists(ingestPath); err != nil {
		return rep, err
	} else if exists {
		ir, err := ingest.Inspect(dir)
		if err != nil {
			return rep, fmt.Errorf("inspect: %w", err)
		}
		if ir.Devices == nil {
			ir.Devices = []ingest.Device{}
		}
		rep.InspectReport = &ir
		found = true
	} else {
		rep.Notes = append(rep.Notes, "no ingestion database ("+ingest.StoreFile+"): ingestion has not run here")
	}

	statePath := filepath.Join(dir, stateFile)
	if exists, err := fileExists(statePath); err != nil {
		return rep, err
	} else if exists {
		s := &stateSummary{Database: statePath}
		for _, p := range []string{statePath, statePath + "-wal"} {
			if fi, err := os.Stat(p); err == nil {
				s.Bytes += fi.Size()
			}
		}
		if cr, err := crdt.Inspect(context.Background(), statePath); err != nil {
			s.Error = err.Error()
		} else {
			s.InspectReport = &cr
		}
		rep.State = s
		found = true
	} else {
		rep.Notes = append(rep.Notes, "no replicated state database ("+stateFile+")")
	}

	id, present, err := readIdentity(filepath.Join(dir, identityDir))
	if err != nil {
		return rep, err
	}
	if present {
		rep.Uplink = &id
		found = true
	} else {
		rep.Notes = append(rep.Notes, "no uplink identity ("+filepath.Join(identityDir, identityFile)+"): the agent has not enrolled with a control plane")
	}

	if !found {
		return rep, fmt.Errorf("%w in %s: it holds no %s, %s or %s; is it the agent's data directory (--data)?",
			errNoAgentData, dir, ingest.StoreFile, stateFile, filepath.Join(identityDir, identityFile))
	}
	return rep, nil
}

func fileExists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("inspect: %w", err)
}

// readIdentity reads the uplink's identity.json (and the certificate's
// expiry) from dir. present is false when there is no identity.json.
// Malformed files are described in the result's Error, not returned as
// errors: inspect reports what it finds.
func readIdentity(dir string) (id uplinkIdentity, present bool, err error) {
	id.File = filepath.Join(dir, identityFile)
	data, err := readBounded(id.File)
	if errors.Is(err, fs.ErrNotExist) {
		return id, false, nil
	}
	if err != nil {
		return id, true, fmt.Errorf("inspect: %w", err)
	}
	if err := parseIdentity(data, &id); err != nil {
		id.Error = err.Error()
		return id, true, nil
	}
	certPath := filepath.Join(dir, certFile)
	pemData, err := readBounded(certPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		id.Error = "no certificate (" + certFile + ") beside identity.json"
	case err != nil:
		id.Error = err.Error()
	default:
		if notAfter, err := certificateNotAfter(pemData); err != nil {
			id.Error = fmt.Sprintf("%s: %v", certPath, err)
		} else {
			id.CertificateNotAfter = notAfter
		}
	}
	return id, true, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxIdentityBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxIdentityBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxIdentityBytes)
	}
	return data, nil
}

// parseIdentity decodes identity.json into id: a JSON object with a
// non-empty agent_id, and server and enrolled_at.
func parseIdentity(data []byte, id *uplinkIdentity) error {
	var rec struct {
		AgentID    string    `json:"agent_id"`
		Server     string    `json:"server"`
		EnrolledAt time.Time `json:"enrolled_at"`
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		return fmt.Errorf("%s is not an identity record: %v", identityFile, err)
	}
	if rec.AgentID == "" {
		return fmt.Errorf("%s: agent_id is empty", identityFile)
	}
	id.AgentID, id.Server, id.EnrolledAt = rec.AgentID, rec.Server, rec.EnrolledAt
	return nil
}

// certificateNotAfter returns the expiry of the first certificate in a
// PEM bundle.
func certificateNotAfter(data []byte) (time.Time, error) {
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return time.Time{}, errors.New("no PEM certificate found")
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return time.Time{}, err
		}
		return cert.NotAfter.UTC(), nil
	}
}

func printInspect(w io.Writer, rep inspectReport) error {
	tw := cli.NewTable(w)
	fmt.Fprintf(tw, "Data directory:\t%s\n", rep.DataDir)
	if ir := rep.InspectReport; ir != nil {
		fmt.Fprintf(tw, "Ingestion:\t%s (schema %d, %s used)\n", ir.Database, ir.SchemaVersion, byteSize(ir.Stats.UsedBytes))
		fmt.Fprintf(tw, "  Readings:\t%d numeric, %d text (%d ever stored, %d duplicates ignored)\n", ir.Readings, ir.TextReadings, ir.Stats.StoredTotal, ir.Stats.DuplicateReadings)
		fmt.Fprintf(tw, "  Messages:\t%d committed\n", ir.Stats.Messages)
		fmt.Fprintf(tw, "  Rollups:\t%d per-minute, %d per-hour\n", ir.MinuteRollups, ir.HourRollups)
		fmt.Fprintf(tw, "  Dead letters:\t%s\n", deadLetterSummary(ir))
		fmt.Fprintf(tw, "  Outbox:\t%s pending in %s (%s); %s acknowledged\n", plural(ir.OutboxPending, "reading"),
			plural(ir.OutboxPendingBatches, "batch"), byteSize(ir.OutboxPendingBytes), plural(ir.Stats.OutboxAckedBatches, "batch"))
		if ir.Stats.Backpressure != "" {
			fmt.Fprintf(tw, "  Backpressure:\t%s\n", ir.Stats.Backpressure)
		}
		fmt.Fprintf(tw, "  Devices:\t%d\n", len(ir.Devices))
	} else {
		fmt.Fprintf(tw, "Ingestion:\tnone\n")
	}
	if s := rep.State; s != nil {
		fmt.Fprintf(tw, "State:\t%s (%s with its log)\n", s.Database, byteSize(s.Bytes))
		if c := s.InspectReport; c != nil {
			fmt.Fprintf(tw, "  Replica:\t%s, %s in the log, %d origins, %s\n", safe(c.Replica, 0), plural(int64(c.Ops), "op"), len(c.Origins), plural(int64(c.Tombstones), "tombstone"))
			for _, cl := range c.Collections {
				fmt.Fprintf(tw, "  Collection:\t%s (%s): %d keys\n", safe(cl.Name, 0), cl.Type, cl.Keys)
			}
		}
		if s.Error != "" {
			fmt.Fprintf(tw, "  Problem:\t%s\n", safe(s.Error, 0))
		}
	} else {
		fmt.Fprintf(tw, "State:\tnone\n")
	}
	if u := rep.Uplink; u != nil {
		if u.AgentID != "" {
			fmt.Fprintf(tw, "Uplink:\tagent %s at %s, enrolled %s\n", safe(u.AgentID, 0), dash(safe(u.Server, 0)), when(u.EnrolledAt))
			if !u.CertificateNotAfter.IsZero() {
				fmt.Fprintf(tw, "  Certificate:\texpires %s\n", u.CertificateNotAfter.Format(time.RFC3339))
			}
		} else {
			fmt.Fprintf(tw, "Uplink:\t%s\n", u.File)
		}
		if u.Error != "" {
			fmt.Fprintf(tw, "  Problem:\t%s\n", safe(u.Error, 0))
		}
	} else {
		fmt.Fprintf(tw, "Uplink:\tnot enrolled\n")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if ir := rep.InspectReport; ir != nil && len(ir.Devices) > 0 {
		fmt.Fprintln(w)
		tw = cli.NewTable(w)
		fmt.Fprintln(tw, "DEVICE\tMESSAGES\tREADINGS\tRATE\tFIRST SEEN\tLAST SEEN\tLAST VALUES")
		for _, d := range ir.Devices {
			rate := "-"
			if d.Rate > 0 {
				rate = formatRate(d.Rate)
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\n", safe(d.ID, 0), d.Messages, d.Readings, rate,
				when(d.FirstSeen), when(d.LastSeen), safe(metricValues(d.Metrics), 80))
		}
		return tw.Flush()
	}
	return nil
}

func deadLetterSummary(ir *ingest.InspectReport) string {
	if ir.DeadLetters == 0 && len(ir.DeadLetterReasons) == 0 {
		return "none"
	}
	reasons := make([]string, 0, len(ir.DeadLetterReasons))
	for r := range ir.DeadLetterReasons {
		reasons = append(reasons, string(r))
	}
	sort.Strings(reasons)
	parts := make([]string, len(reasons))
	for i, r := range reasons {
		parts[i] = fmt.Sprintf("%s %d", safe(r, 0), ir.DeadLetterReasons[ingest.Reason(r)])
	}
	s := strconv.FormatInt(ir.DeadLetters, 10)
	if len(parts) > 0 {
		s += " (" + strings.Join(parts, ", ") + ")"
	}
	if n := ir.Stats.DeadLettersEvicted; n > 0 {
		s += fmt.Sprintf("; %d evicted", n)
	}
	return s
}

// metricValues renders a device's metrics as name=value, by name.
func metricValues(ms []ingest.MetricInfo) string {
	if len(ms) == 0 {
		return "-"
	}
	ms = append([]ingest.MetricInfo(nil), ms...)
	sort.Slice(ms, func(i, j int) bool { return ms[i].Name < ms[j].Name })
	parts := make([]string, len(ms))
	for i, m := range ms {
		v := strconv.FormatFloat(m.Value, 'g', -1, 64)
		if m.Text != "" || m.Kind == ingest.KindString.String() || m.Kind == ingest.KindData.String() {
			v = strconv.Quote(m.Text)
		}
		parts[i] = m.Name + "=" + v
	}
	return strings.Join(parts, " ")
}

// formatRate renders messages per second.
func formatRate(r float64) string {
	switch {
	case r >= 100:
		return strconv.FormatFloat(r, 'f', 0, 64) + "/s"
	case r >= 1:
		return strconv.FormatFloat(r, 'f', 1, 64) + "/s"
	}
	return strconv.FormatFloat(r, 'g', 2, 64) + "/s"
}

// plural renders "1 batch", "2 batches".
func plural(n int64, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	if strings.HasSuffix(noun, "ch") {
		return fmt.Sprintf("%d %ses", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func when(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.UTC().Format(time.RFC3339)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// safe makes text from the data directory safe for a terminal: characters
// that are not printable are escaped, and the text is cut at max runes
// (0: no limit).
func safe(s string, max int) string {
	if strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || r == utf8.RuneError }) {
		q := strconv.Quote(s)
		s = q[1 : len(q)-1]
	}
	if max > 0 && utf8.RuneCountInString(s) > max {
		r := []rune(s)
		s = string(r[:max-3]) + "..."
	}
	return s
}

// byteSize renders a byte count in binary units.
func byteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
