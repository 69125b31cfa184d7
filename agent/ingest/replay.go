package ingest

import (
	"context"
	"crypto/tls"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/clock"
)

// OccupancyRow is one reading of the UCI Occupancy Detection data set
// (Candanedo and Feldheim, Energy and Buildings 112, 2016): one row per
// minute of an office room's sensors and its ground-truth occupancy.
type OccupancyRow struct {
	Time          time.Time // wall clock of the recording, taken as UTC
	Temperature   float64   // °C
	Humidity      float64   // %
	Light         float64   // lux
	CO2           float64   // ppm
	HumidityRatio float64   // kg water / kg air
	Occupied      bool
}

// occupancyColumns are the data columns, in file order after the date.
var occupancyColumns = []string{"Temperature", "Humidity", "Light", "CO2", "HumidityRatio", "Occupancy"}

// ReadOccupancy reads one file of the data set (datatraining.txt,
// datatest.txt, datatest2.txt): a CSV header naming "date" and the six
// columns above, then one row per minute (a leading row-number column,
// as in the original distribution, is accepted). A malformed row is an
// error naming its line.
func ReadOccupancy(r io.Reader) ([]OccupancyRow, error) {
	cr := csv.NewReader(r)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	head, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("ingest: occupancy header: %w", err)
	}
	cols := make([]string, len(head))
	for i, h := range head {
		cols[i] = strings.ToLower(strings.TrimSpace(h))
	}
	if len(cols) != 7 || cols[0] != "date" {
		return nil, fmt.Errorf("ingest: occupancy header %q: want date and %v", head, occupancyColumns)
	}
	for i, c := range occupancyColumns {
		if cols[i+1] != strings.ToLower(c) {
			return nil, fmt.Errorf("ingest: occupancy header column %d is %q, want %q", i+2, head[i+1], c)
		}
	}
	var rows []OccupancyRow
	for line := 2; ; line++ {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("ingest: occupancy line %d: %w", line, err)
		}
		switch len(rec) {
		case 7:
		case 8: // leading row number
			rec = rec[1:]
		default:
			return nil, fmt.Errorf("ingest: occupancy line %d: %d fields, want 7", line, len(rec))
		}
		t, err := time.Parse(time.DateTime, rec[0])
		if err != nil {
			return nil, fmt.Errorf("ingest: occupancy line %d: date %q: %v", line, rec[0], err)
		}
		var v [6]float64
		for i := range v {
			f, err := strconv.ParseFloat(strings.TrimSpace(rec[i+1]), 64)
			if err != nil {
				return nil, fmt.Errorf("ingest: occupancy line %d: %s %q: %v", line, occupancyColumns[i], rec[i+1], err)
			}
			v[i] = f
		}
		if v[5] != 0 && v[5] != 1 {
			return nil, fmt.Errorf("ingest: occupancy line %d: Occupancy %g is not 0 or 1", line, v[5])
		}
		rows = append(rows, OccupancyRow{Time: t.UTC(), Temperature: v[0], Humidity: v[1], Light: v[2], CO2: v[3], HumidityRatio: v[4], Occupied: v[5] == 1})
	}
	if len(rows) == 0 {
		return nil, errors.New("ingest: occupancy file has no rows")
	}
	return rows, nil
}

// OccupancyFiles returns the data set's files under dataDir/occupancy
// (dataDir is the shared data directory, e.g. $EDGEFLEET_DATA).
func OccupancyFiles(dataDir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dataDir, "occupancy", "*.txt"))
	if err != nil {
		return nil, fmt.Errorf("ingest: %w", err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("ingest: no occupancy data in %s: %w", filepath.Join(dataDir, "occupancy"), os.ErrNotExist)
	}
	slices.Sort(files)
	return files, nil
}

// ReplayConfig configures an occupancy replay.
type ReplayConfig struct {
	// Files are occupancy data files (see OccupancyFiles). Required
	// unless Synthetic.
	Files []string
	// Synthetic makes the devices send readings of SyntheticRoom instead
	// of replaying Files: same topics, payloads and pacing, one row per
	// data minute, until Rows are sent or ctx ends. Device k's room is
	// seeded with Seed and k.
	Synthetic bool
	Seed      uint64
	// Devices is how many devices replay; device k replays file k mod
	// len(Files), starting at a row offset that differs per device
	// sharing a file. Default 3.
	Devices int
	// Offset starts every device this many rows (data minutes) later:
	// into its file, wrapping around to the file's start, or into the
	// synthetic rooms' day. Replays given different offsets (one per
	// agent, say) send different values.
	Offset int
	// DevicePrefix names the devices: prefix + index. Default "room-".
	DevicePrefix string
	// Speedup compresses time: a minute between two rows takes a
	// minute/Speedup to replay. Default 60 (a data minute per second).
	Speedup float64
	// Rows caps the rows each device sends; 0 replays its whole file
	// (synthetic devices: sends until ctx ends).
	Rows int
	// Flat sends flat JSON objects instead of SenML packs.
	Flat bool
	// OriginalTimes stamps readings with the data set's times (2015)
	// instead of the send time; the ingestor's Limits.MaxPast must then
	// reach back that far. Synthetic rows carry their data time.
	OriginalTimes bool
	// TopicPattern is where devices publish. Default DefaultTopicPattern.
	TopicPattern string
	// Broker, ClientID, Username, Password and TLSConfig configure the
	// MQTT publisher (QoS 1) when Publish is nil. ClientID defaults to
	// "edgefleet-replay".
	Broker    string
	ClientID  string
	Username  string
	Password  string
	TLSConfig *tls.Config
	// Publish, when set, sends instead of MQTT (tests, other transports).
	Publish func(topic string, payload []byte) error
	// Clock paces the replay and stamps the readings; nil is the system
	// clock.
	Clock clock.Clock
	// Logger receives progress. Nil discards it.
	Logger *slog.Logger
}

// ReplayStats reports a replay.
type ReplayStats struct {
	Devices  int `json:"devices"`
	Messages int `json:"messages"`
	Readings int `json:"readings"`
}

// Replay publishes the occupancy data (or synthetic rooms' readings) as
// several devices, time compressed, until every device has sent its rows
// or ctx ends.
func Replay(ctx context.Context, cfg ReplayConfig) (ReplayStats, error) {
	var st ReplayStats
	if len(cfg.Files) == 0 && !cfg.Synthetic {
		return st, fmt.Errorf("%w: replay: no occupancy files", ErrInvalidConfig)
	}
	if cfg.Devices == 0 {
		cfg.Devices = 3
	}
	if cfg.DevicePrefix == "" {
		cfg.DevicePrefix = "room-"
	}
	if cfg.Speedup == 0 {
		cfg.Speedup = 60
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "edgefleet-replay"
	}
	cfg.Clock = clock.Or(cfg.Clock)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	switch {
	case cfg.Devices < 1 || cfg.Devices > 100000:
		return st, fmt.Errorf("%w: replay: Devices %d outside 1..100000", ErrInvalidConfig, cfg.Devices)
	case !(cfg.Speedup > 0) || cfg.Speedup > 1e9:
		return st, fmt.Errorf("%w: replay: Speedup %g outside (0, 1e9]", ErrInvalidConfig, cfg.Speedup)
	case cfg.Rows < 0 || cfg.Offset < 0:
		return st, fmt.Errorf("%w: replay: negative Rows or Offset", ErrInvalidConfig)
	}
	if err := CheckDeviceID(cfg.DevicePrefix + "0"); err != nil {
		return st, fmt.Errorf("%w: replay: DevicePrefix %q: %v", ErrInvalidConfig, cfg.DevicePrefix, err)
	}
	tp, err := ParseTopicPattern(cfg.TopicPattern)
	if err != nil {
		return st, err
	}
	var data [][]OccupancyRow
	if cfg.Synthetic {
		cfg.Files = nil // the rooms are generated
	}
	for _, f := range cfg.Files {
		fh, err := os.Open(f)
		if err != nil {
			return st, fmt.Errorf("ingest: replay: %w", err)
		}
		rows, err := ReadOccupancy(fh)
		fh.Close()
		if err != nil {
			return st, fmt.Errorf("%w (%s)", err, f)
		}
		data = append(data, rows)
	}
	publish := cfg.Publish
	flush := func() error { return nil }
	if publish == nil {
		p, err := newReplayPublisher(cfg)
		if err != nil {
			return st, err
		}
		defer p.close()
		publish, flush = p.publish, p.flush
	}
	start := cfg.Clock.Now()
	// Each device walks its rows; the next message is the device whose
	// next row is due first in compressed time.
	type dev struct {
		topic string
		next  func() (OccupancyRow, bool)
		row   OccupancyRow  // the row to send at due
		ok    bool          // row is valid: the device has not finished
		due   time.Duration // offset from the start, compressed
	}
	devs := make([]*dev, cfg.Devices)
	perFile := (cfg.Devices + max(len(cfg.Files), 1) - 1) / max(len(cfg.Files), 1)
	for k := range devs {
		id := cfg.DevicePrefix + strconv.Itoa(k)
		d := &dev{topic: tp.Topic(id)}
		if cfg.Synthetic {
			d.next = syntheticRows(cfg.Seed, k, start.Add(time.Duration(cfg.Offset)*time.Minute), cfg.Rows)
		} else {
			rows := data[k%len(cfg.Files)]
			off := ((k/len(cfg.Files))*len(rows)/max(perFile, 1) + cfg.Offset) % len(rows)
			rows = append(slices.Clone(rows[off:]), rows[:off]...)
			if cfg.Rows > 0 && cfg.Rows < len(rows) {
				rows = rows[:cfg.Rows]
			}
			d.next = fileRows(rows)
		}
		d.row, d.ok = d.next()
		devs[k] = d
	}
	st.Devices = cfg.Devices
	var buf []byte
	for {
		var d *dev
		for _, x := range devs {
			if x.ok && (d == nil || x.due < d.due) {
				d = x
			}
		}
		if d == nil {
			if err := flush(); err != nil {
				return st, fmt.Errorf("ingest: replay: %w", err)
			}
			return st, nil
		}
		if wait := d.due - cfg.Clock.Now().Sub(start); wait > 0 {
			if err := clock.Sleep(ctx, cfg.Clock, wait); err != nil {
				return st, err
			}
		} else if err := ctx.Err(); err != nil {
			return st, err
		}
		row := d.row
		at := cfg.Clock.Now()
		if cfg.OriginalTimes {
			at = row.Time
		}
		buf = appendOccupancy(buf[:0], row, at, cfg.Flat)
		if err := publish(d.topic, slices.Clone(buf)); err != nil {
			return st, fmt.Errorf("ingest: replay: publish to %s: %w", d.topic, err)
		}
		st.Messages++
		st.Readings += 6
		if d.row, d.ok = d.next(); d.ok {
			step := d.row.Time.Sub(row.Time)
			if step < 0 {
				step = time.Minute // rows out of order, or the wrap-around to the file's start
			}
			d.due += time.Duration(float64(step) / cfg.Speedup)
		}
	}
}

// fileRows returns rows one by one.
func fileRows(rows []OccupancyRow) func() (OccupancyRow, bool) {
	i := 0
	return func() (OccupancyRow, bool) {
		if i == len(rows) {
			return OccupancyRow{}, false
		}
		i++
		return rows[i-1], true
	}
}

// syntheticRows returns device k's synthetic room's rows from start, n of
// them (0: without end).
func syntheticRows(seed uint64, k int, start time.Time, n int) func() (OccupancyRow, bool) {
	room := NewSyntheticRoom(seed^(uint64(k)+1)*0x9e3779b97f4a7c15, start)
	sent := 0
	return func() (OccupancyRow, bool) {
		if n > 0 && sent == n {
			return OccupancyRow{}, false
		}
		sent++
		return room.Next(), true
	}
}

// appendOccupancy encodes a row as SenML (names temperature, humidity,
// light, co2, humidity_ratio, occupancy with SenML units) or flat JSON.
func appendOccupancy(b []byte, r OccupancyRow, at time.Time, flat bool) []byte {
	ts := strconv.FormatFloat(float64(at.UnixMicro())/1e6, 'f', 6, 64)
	num := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	occ := "false"
	if r.Occupied {
		occ = "true"
	}
	if flat {
		b = append(b, `{"temperature":`+num(r.Temperature)+`,"humidity":`+num(r.Humidity)+`,"light":`+num(r.Light)+
			`,"co2":`+num(r.CO2)+`,"humidity_ratio":`+num(r.HumidityRatio)+`,"occupancy":`+occ+`,"ts":`+ts+`}`...)
		return b
	}
	b = append(b, `[{"bt":`+ts+`,"n":"temperature","u":"Cel","v":`+num(r.Temperature)+`},`+
		`{"n":"humidity","u":"%RH","v":`+num(r.Humidity)+`},`+
		`{"n":"light","u":"lx","v":`+num(r.Light)+`},`+
		`{"n":"co2","u":"ppm","v":`+num(r.CO2)+`},`+
		`{"n":"humidity_ratio","u":"/","v":`+num(r.HumidityRatio)+`},`+
		`{"n":"occupancy","vb":`+occ+`}]`...)
	return b
}

// replayPublisher publishes over MQTT at QoS 1, waiting for the broker's
// acknowledgements in windows.
type replayPublisher struct {
	c       mqtt.Client
	pending []mqtt.Token
}

func newReplayPublisher(cfg ReplayConfig) (*replayPublisher, error) {
	if err := checkBrokerURL(cfg.Broker); err != nil {
		return nil, err
	}
	opts := mqtt.NewClientOptions().AddBroker(cfg.Broker).SetClientID(cfg.ClientID).
		SetUsername(cfg.Username).SetPassword(cfg.Password).SetCleanSession(true).
		SetOrderMatters(false).SetAutoReconnect(true).SetConnectTimeout(10 * time.Second).
		SetMaxResumePubInFlight(100)
	if cfg.TLSConfig != nil {
		opts.SetTLSConfig(cfg.TLSConfig)
	}
	c := mqtt.NewClient(opts)
	if t := c.Connect(); !t.WaitTimeout(15*time.Second) || t.Error() != nil {
		return nil, fmt.Errorf("ingest: replay: connect to %s: %v", cfg.Broker, t.Error())
	}
	return &replayPublisher{c: c}, nil
}

func (p *replayPublisher) publish(topic string, payload []byte) error {
	p.pending = append(p.pending, p.c.Publish(topic, 1, false, payload))
	if len(p.pending) >= 100 {
		return p.flush()
	}
	return nil
}

func (p *replayPublisher) flush() error {
	for _, t := range p.pending {
		if !t.WaitTimeout(30*time.Second) || t.Error() != nil {
			p.pending = p.pending[:0]
			return fmt.Errorf("publish not acknowledged: %v", t.Error())
		}
	}
	p.pending = p.pending[:0]
	return nil
}

func (p *replayPublisher) close() { p.c.Disconnect(250) }
