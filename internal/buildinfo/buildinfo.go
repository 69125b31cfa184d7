// Package buildinfo reports the version of the edgefleet binaries.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Version is set at link time with
// -ldflags "-X github.com/edgefleet/edgefleet/internal/buildinfo.Version=v1.2.3".
// When unset it falls back to the module version or VCS revision recorded by
// the Go toolchain, then to "dev".
var Version = ""

// Info describes a build.
type Info struct {
	Version   string `json:"version"`
	GoVersion string `json:"go_version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
}

// Get returns the running binary's build information.
func Get() Info {
	return Info{Version: version(), GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
}

func version() string {
	if Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "dev-" + s.Value[:12]
		}
	}
	return "dev"
}
