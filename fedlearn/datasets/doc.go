// Package datasets reads the public data sets edgefleet learns from
// (../shared/data, see its README): WISDM v1.1 activity recognition (36
// phone users, 43 features, 6 activities) and UCI occupancy detection (room
// sensors, occupied or not). It splits them as the centralised reference
// does, fits the feature schema's normalisation on the training part, and
// groups WISDM by user: the natural non-IID clients of federated learning.
//
// Readers of outside files fail with an error naming the file and line.
// The package depends only on fedlearn.
package datasets

import (
	"os"
	"path/filepath"
)

// EnvDir is the environment variable naming the shared data directory.
const EnvDir = "EDGEFLEET_DATA"

// DefaultDir is the shared data directory when neither a flag nor EnvDir
// names one: ../shared/data, relative to the working directory (the
// repository's root when run from there).
var DefaultDir = filepath.Join("..", "shared", "data")

// Dir returns the shared data directory: flag when it is set, else
// $EDGEFLEET_DATA as getenv reads it (nil reads the process's
// environment), else DefaultDir.
func Dir(flag string, getenv func(string) string) string {
	if flag != "" {
		return flag
	}
	if getenv == nil {
		getenv = os.Getenv
	}
	if d := getenv(EnvDir); d != "" {
		return d
	}
	return DefaultDir
}
