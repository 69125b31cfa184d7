//go:build !race

package ingest

// raceEnabled is true under the race detector, whose shadow memory makes
// the process's RSS say nothing about what the code keeps.
const raceEnabled = false
