//go:build race

package crdt

// raceEnabled is true when the tests run under the race detector, which
// makes SQLite several times slower; long randomized tests do less then.
const raceEnabled = true
