package fedlearn

import (
	"sync"

	"gorgonia.org/tensor"
)

// gorgonia's tensor package keeps freed *Dense headers in a channel of
// 4,096 (tensor.ReturnTensor, which gorgonia's solvers call on their
// temporaries) and returns one with "if len(pool) < cap(pool) { pool <-
// t }": a check and a send that are not one step. When the pool is one
// short of full and two goroutines return a tensor at once, both pass
// the check, one fills the pool and the other blocks on the send until
// some later borrow makes room, which, once training is over, never
// comes. The pool fills because gorgonia returns more tensors than it
// borrows, so a process that trains in several goroutines (the simulator's
// fleet, several agents in one test binary, a training beside an FL
// round) can hang a trainer inside AdamSolver.Step. It was seen so: a
// stress run of the agent tests under -race stopped for 19 minutes with a
// training goroutine parked in ReturnTensor's channel send.
//
// The pool only spares the allocation of a small header per tensor (the
// data arrays are allocated apart), so it is turned off for the whole
// process, before any tensor exists; ReturnTensor is then a no-op and
// every tensor gets its own header.
func init() {
	tensor.DontUsePool()
}

// graphMu makes the building of gorgonia graphs one at a time in the
// process. gorgonia's graph building writes package state without a lock:
// a counter of node groups (internal/encoding.NewGroup, through Rectify)
// and the cached hash of the constant nodes every graph shares
// (Node.Hashcode, through Grad). The race detector caught both with
// trainers built in eight goroutines at once. Building a trainer takes
// about 0.6 ms (a 90-64-32-6 MLP, Adam); the training itself runs in
// parallel.
var graphMu sync.Mutex
