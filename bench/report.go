// Package bench implements the `edge-agent bench` suites: throughput of
// edgefleet's components measured beside a plain baseline doing equivalent
// work in the same run, so results carry their own yardstick.
package bench

import (
	"fmt"
	"runtime"
	"sort"
)

// Baseline is the reference a result is compared with.
type Baseline struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
}

// Result is one measured figure. Ratio is Value / Baseline.Value for
// throughputs (higher is better).
type Result struct {
	Name     string    `json:"name"`
	Unit     string    `json:"unit"`
	Value    float64   `json:"value"`
	Baseline *Baseline `json:"baseline,omitempty"`
	Ratio    float64   `json:"ratio,omitempty"`
}

// Report is the output of one suite.
type Report struct {
	Suite   string            `json:"suite"`
	Results []Result          `json:"results"`
	Machine map[string]string `json:"machine,omitempty"`
}

// machine describes where a suite ran and with what workload.
func Machine(workload string) map[string]string {
	return map[string]string{
		"goos":       runtime.GOOS,
		"goarch":     runtime.GOARCH,
		"num_cpu":    fmt.Sprint(runtime.NumCPU()),
		"go_version": runtime.Version(),
		"workload":   workload,
	}
}

// median of xs (0 for none); xs is not modified.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
