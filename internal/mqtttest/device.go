package mqtttest

import (
	"errors"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// DialDevice connects a device over MQTT 3.1.1 with its identity (user
// name = client id = id, and its secret), without reconnecting; lost,
// when set, receives the time its connection is lost.
func DialDevice(broker, id, secret string, lost chan<- time.Time) (mqtt.Client, error) {
	o := mqtt.NewClientOptions().AddBroker(broker).SetClientID(id).SetUsername(id).SetPassword(secret).
		SetProtocolVersion(4).SetAutoReconnect(false).SetConnectTimeout(3 * time.Second)
	if lost != nil {
		o.SetConnectionLostHandler(func(mqtt.Client, error) { lost <- time.Now() })
	}
	c := mqtt.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(5 * time.Second) {
		return nil, errors.New("mqtttest: connect timed out")
	}
	return c, tok.Error()
}
