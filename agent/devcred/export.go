package devcred

import (
	"fmt"
	"io"
	"strings"
)

// User is one broker user and its access rules.
type User struct {
	// Name is the MQTT user name (a device id, or the agent's own user).
	Name string
	// Hash is the user's "$7$" password hash.
	Hash string
	// Publish and Subscribe are the topic filters the user may publish
	// to and subscribe to (and receive from).
	Publish, Subscribe []string
}

// WriteMosquitto writes users as a Mosquitto password file (passwd:
// "name:$7$...", one a line) and ACL file (acl: a "user NAME" block per
// user with "topic write" rules for publishing and "topic read" rules
// for subscribing and receiving). Disabled devices are left out by the
// caller: a user not in the password file cannot log in. Users whose
// name, hash or filters Mosquitto's files cannot hold are refused.
func WriteMosquitto(passwd, acl io.Writer, users []User) error {
	for _, u := range users {
		if u.Name == "" || strings.ContainsAny(u.Name, ": \t\r\n\x00") {
			return fmt.Errorf("devcred: user name %q cannot go in a Mosquitto password file", u.Name)
		}
		if _, err := ParseHash(u.Hash); err != nil {
			return fmt.Errorf("devcred: user %s: %w", u.Name, err)
		}
		for _, f := range append(append([]string(nil), u.Publish...), u.Subscribe...) {
			if err := CheckFilter(f); err != nil {
				return fmt.Errorf("devcred: user %s: %w", u.Name, err)
			}
		}
	}
	if _, err := io.WriteString(acl, "# Written by edgectl devices credentials export: one block per user.\n# write = publish; read = subscribe and receive.\n"); err != nil {
		return fmt.Errorf("devcred: writing the ACL file: %w", err)
	}
	for _, u := range users {
		if _, err := fmt.Fprintf(passwd, "%s:%s\n", u.Name, u.Hash); err != nil {
			return fmt.Errorf("devcred: writing the password file: %w", err)
		}
		var b strings.Builder
		fmt.Fprintf(&b, "\nuser %s\n", u.Name)
		for _, f := range u.Publish {
			fmt.Fprintf(&b, "topic write %s\n", f)
		}
		for _, f := range u.Subscribe {
			fmt.Fprintf(&b, "topic read %s\n", f)
		}
		if _, err := io.WriteString(acl, b.String()); err != nil {
			return fmt.Errorf("devcred: writing the ACL file: %w", err)
		}
	}
	return nil
}
