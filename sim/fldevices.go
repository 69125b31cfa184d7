package sim

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/edgefleet/edgefleet/agent/ingest"
	"github.com/edgefleet/edgefleet/clock"
	"github.com/edgefleet/edgefleet/fedlearn"
	"github.com/edgefleet/edgefleet/fedlearn/datasets"
)

// flDevice is one simulated device of a federated-learning run and the
// training examples it sends its agent, one reading per example: a WISDM
// user's phone, or the occupancy room of a slice of the training file.
type flDevice struct {
	id string
	// table holds the device's examples (WISDM) in the order sent; for
	// occupancy the replay reads rows [row, row+n) of the training file
	// itself and table is empty.
	table datasets.Table
	row   int
	n     int
	// user is the WISDM user (-1 for occupancy).
	user int
	// prefix names an occupancy device for the replay: id is prefix+"0".
	prefix string
}

// instantClock is virtual time for a replay that sends as fast as the
// broker takes it: every wait passes at once and moves the clock on by its
// length, so the readings keep the data set's spacing in their times.
type instantClock struct{ *clock.Manual }

func (c instantClock) NewTimer(d time.Duration) clock.Timer {
	c.Advance(d)
	return c.Manual.NewTimer(0)
}

// publishOccupancy replays the device's rows of the occupancy training
// file to broker as the sim's other devices do (ingest.Replay, SenML with
// the data set's metric names), stamped from start on a data minute apart.
func publishOccupancy(ctx context.Context, file, broker, clientID string, d flDevice, start time.Time) error {
	st, err := ingest.Replay(ctx, ingest.ReplayConfig{
		Files:        []string{file},
		Devices:      1,
		Offset:       d.row,
		Rows:         d.n,
		DevicePrefix: d.prefix,
		Speedup:      1,
		Broker:       broker,
		ClientID:     clientID,
		Clock:        instantClock{clock.NewManual(start)},
	})
	if err != nil {
		return fmt.Errorf("sim: occupancy device %s: %w", d.id, err)
	}
	if st.Messages != d.n {
		return fmt.Errorf("sim: occupancy device %s sent %d rows, want %d", d.id, st.Messages, d.n)
	}
	return nil
}

// publishTable sends the device's examples to broker as flat JSON
// messages, one a second from start: each feature's metric (a missing
// value left out, for the schema to impute) and the label metric holding
// the class index.
func publishTable(ctx context.Context, broker, clientID string, d flDevice, sc fedlearn.Schema, start time.Time) error {
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(clientID).SetCleanSession(true).
		SetConnectTimeout(10 * time.Second).SetMaxResumePubInFlight(100))
	if t := c.Connect(); !t.WaitTimeout(15*time.Second) || t.Error() != nil {
		return fmt.Errorf("sim: device %s: connect to %s: %v", d.id, broker, t.Error())
	}
	defer c.Disconnect(100)
	topic := "devices/" + d.id + "/telemetry"
	var pending []mqtt.Token
	flush := func() error {
		for _, t := range pending {
			if !t.WaitTimeout(60*time.Second) || t.Error() != nil {
				return fmt.Errorf("sim: device %s: publish not acknowledged: %v", d.id, t.Error())
			}
		}
		pending = pending[:0]
		return nil
	}
	var b []byte
	for i, row := range d.table.X {
		if err := ctx.Err(); err != nil {
			return err
		}
		b = append(b[:0], `{"ts":`...)
		b = strconv.AppendInt(b, start.Add(time.Duration(i)*time.Second).Unix(), 10)
		b = append(b, `,"`+sc.Label.Metric+`":`...)
		b = strconv.AppendInt(b, int64(d.table.Y[i]), 10)
		for k, f := range sc.Features {
			if v := row[k]; !math.IsNaN(v) && !math.IsInf(v, 0) {
				b = append(b, `,"`+f.Metric+`":`...)
				b = strconv.AppendFloat(b, v, 'g', -1, 64)
			}
		}
		b = append(b, '}')
		pending = append(pending, c.Publish(topic, 1, false, append([]byte(nil), b...)))
		if len(pending) >= 100 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}
