// Package mqtttest runs a real Mosquitto broker as a child process, for
// tests and benchmarks of MQTT ingestion against the broker devices use
// in the field.
package mqtttest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrNoMosquitto: the mosquitto binary is not installed (Debian package
// "mosquitto"; scripts/test.sh installs it).
var ErrNoMosquitto = errors.New("mqtttest: mosquitto binary not found (install the Debian package mosquitto)")

// Options configures a broker.
type Options struct {
	// Dir holds the configuration, log and persistence files. Required.
	Dir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// MaxInflight is max_inflight_messages: QoS 1 messages sent to a
	// client and not yet acknowledged. 0 means no limit. Ingestion
	// acknowledges after each group commit, so the window must exceed a
	// commit's batch for batches to fill.
	MaxInflight int
	// MaxQueued is max_queued_messages per client beyond those in
	// flight. 0 means no limit (a backlog of any size is kept).
	MaxQueued int
	// Persistence keeps sessions and queued messages in Dir across a
	// broker restart.
	Persistence bool
	// Users maps user names to passwords; when set, anonymous clients
	// are refused.
	Users map[string]string
	// PasswordFile, when set, is a ready mosquitto password file
	// (password_file; anonymous clients are refused); it excludes Users.
	PasswordFile string
	// ACLFile, when set, is a mosquitto ACL file (acl_file).
	ACLFile string
	// CertFile and KeyFile, when set, make the listener TLS (ssl://).
	CertFile, KeyFile string
}

// Mosquitto is a running broker.
type Mosquitto struct {
	opts Options
	conf string
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	log  *bytes.Buffer
	port int
}

// Binary returns the path of the mosquitto binary, or ErrNoMosquitto.
func Binary() (string, error) {
	for _, p := range []string{"mosquitto", "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"} {
		if path, err := exec.LookPath(p); err == nil {
			return path, nil
		}
	}
	return "", ErrNoMosquitto
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("mqtttest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start writes a configuration into opts.Dir and starts mosquitto,
// returning once it accepts connections.
func Start(opts Options) (*Mosquitto, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if opts.Dir == "" {
		return nil, errors.New("mqtttest: Options.Dir is required")
	}
	if opts.Port == 0 {
		if opts.Port, err = FreePort(); err != nil {
			return nil, err
		}
	}
	var conf strings.Builder
	fmt.Fprintf(&conf, "listener %d 127.0.0.1\n", opts.Port)
	if opts.CertFile != "" {
		fmt.Fprintf(&conf, "certfile %s\nkeyfile %s\n", opts.CertFile, opts.KeyFile)
	}
	fmt.Fprintf(&conf, "max_inflight_messages %d\n", opts.MaxInflight)
	fmt.Fprintf(&conf, "max_queued_messages %d\n", opts.MaxQueued)
	// $SYS counters every second: tests read what the broker received.
	conf.WriteString("max_queued_bytes 0\nset_tcp_nodelay true\nsys_interval 1\n")
	// Run as root, mosquitto switches to the user "mosquitto", which
	// cannot read files in a private test directory: stay the invoking
	// user (the option does nothing for other users).
	conf.WriteString("user root\n")
	if opts.Persistence {
		fmt.Fprintf(&conf, "persistence true\npersistence_location %s/\nautosave_interval 1\n", opts.Dir)
	} else {
		conf.WriteString("persistence false\n")
	}
	if opts.PasswordFile != "" && len(opts.Users) > 0 {
		return nil, errors.New("mqtttest: Options.PasswordFile and Options.Users are both set")
	}
	if opts.ACLFile != "" {
		fmt.Fprintf(&conf, "acl_file %s\n", opts.ACLFile)
	}
	if opts.PasswordFile != "" {
		fmt.Fprintf(&conf, "allow_anonymous false\npassword_file %s\n", opts.PasswordFile)
	} else if len(opts.Users) > 0 {
		pw := filepath.Join(opts.Dir, "passwd")
		if err := writePasswords(pw, opts.Users); err != nil {
			return nil, err
		}
		fmt.Fprintf(&conf, "allow_anonymous false\npassword_file %s\n", pw)
	} else {
		conf.WriteString("allow_anonymous true\n")
	}
	m := &Mosquitto{opts: opts, conf: filepath.Join(opts.Dir, "mosquitto.conf"), port: opts.Port}
	if err := os.WriteFile(m.conf, []byte(conf.String()), 0o600); err != nil {
		return nil, fmt.Errorf("mqtttest: write config: %w", err)
	}
	if err := m.start(bin); err != nil {
		return nil, err
	}
	return m, nil
}

// writePasswords writes a mosquitto password file with mosquitto_passwd.
func writePasswords(path string, users map[string]string) error {
	bin, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		return fmt.Errorf("mqtttest: mosquitto_passwd not found: %w", err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		return fmt.Errorf("mqtttest: write password file: %w", err)
	}
	for u, p := range users {
		if out, err := exec.Command(bin, "-b", path, u, p).CombinedOutput(); err != nil {
			return fmt.Errorf("mqtttest: mosquitto_passwd: %v: %s", err, out)
		}
	}
	return nil
}

func (m *Mosquitto) start(bin string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.log = &bytes.Buffer{}
	cmd := exec.Command(bin, "-c", m.conf)
	cmd.Stdout, cmd.Stderr = m.log, m.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("mqtttest: start mosquitto: %w", err)
	}
	m.cmd = cmd
	exited := make(chan error, 1)
	done := make(chan struct{})
	m.done = done
	go func() { exited <- cmd.Wait(); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", m.Addr(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("mqtttest: mosquitto exited: %v: %s", err, m.log.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	cmd.Process.Kill()
	return fmt.Errorf("mqtttest: mosquitto did not listen on %s within 10s: %s", m.Addr(), m.log.String())
}

// Addr returns host:port.
func (m *Mosquitto) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(m.port)) }

// URL returns the broker URL: tcp://127.0.0.1:PORT, or ssl:// with TLS.
func (m *Mosquitto) URL() string {
	if m.opts.CertFile != "" {
		return "ssl://" + m.Addr()
	}
	return "tcp://" + m.Addr()
}

// Port returns the listening port.
func (m *Mosquitto) Port() int { return m.port }

// Stop terminates the broker (SIGTERM, which saves persistence) and
// waits for it to exit.
func (m *Mosquitto) Stop() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return nil
	}
	p := m.cmd.Process
	m.cmd = nil
	p.Signal(os.Interrupt)
	select {
	case <-m.done:
	case <-time.After(5 * time.Second):
		p.Kill()
		<-m.done
	}
	return nil
}

// Restart stops and starts the broker on the same port and configuration.
func (m *Mosquitto) Restart() error {
	if err := m.Stop(); err != nil {
		return err
	}
	bin, err := Binary()
	if err != nil {
		return err
	}
	return m.start(bin)
}

// Log returns what the broker printed.
func (m *Mosquitto) Log() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.log.String()
}
