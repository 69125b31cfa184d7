//go:build race

package testutil

// RaceEnabled is true when the tests run under the race detector: its
// shadow memory makes the process's RSS say nothing about what the code
// keeps, and it makes SQLite several times slower.
const RaceEnabled = true
