// Package secagg is the protocol logic of SecAgg+ (Bell et al. 2020, on
// Bonawitz et al. 2017) for one federated-learning round, with the stages
// and parameters of Flower's SecAggPlusWorkflow / secaggplus_mod:
// num_shares, reconstruction_threshold, clipping_range (default 8.0),
// quantization_range (default 2^22) and modulus_range (default 2^32).
//
// There is no network, clock or hidden randomness here: a Client and a
// Server are message-passing state machines driven by the caller, which
// carries the messages (their binary encodings are in messages.go) and
// decides when a stage's deadline has passed. Randomness comes from an
// injected io.Reader, so a seeded stream replays a round bit for bit.
//
// # Stages
//
//  0. Setup: the server resolves the parameters, numbers the clients 1..n
//     in name order, shuffles them into a ring and gives each the
//     num_shares clients around it as its neighbourhood (itself included;
//     a k-regular graph, Flower's construction). Each client makes two
//     X25519 key pairs, s (masks) and c (share encryption), and answers
//     with the public halves.
//  1. Share keys: each client gets its live neighbours' public keys, draws
//     a mask seed b_u, splits b_u and s_u^SK with Shamir (threshold t, over
//     GF(2^61−1)) into one share per neighbour, keeps its own, and seals
//     each other share to its neighbour (AES-256-GCM under HKDF-SHA256 of
//     X25519(c_u, c_v), bound to round, sender and recipient).
//  2. Collect masked vectors: each client opens the shares addressed to it
//     (refusing tampered, replayed or misaddressed ones with a reason),
//     clips its float32 delta to [−c, c], quantises it stochastically into
//     [0, Q), adds PRG(b_u) and ±PRG(KA(s_u, s_v)) for each neighbour v
//     whose share arrived, mod M. The server only keeps the running sum.
//  3. Unmask: each surviving client reveals, per neighbour, a share of b_v
//     if v sent a vector, or a share of s_v^SK if v sent shares but no
//     vector, never both. The server reconstructs the seeds and keys,
//     removes the private masks of the survivors and the pairwise masks
//     the survivors share with the dropped, and dequantises the sum.
//
// A client that drops before sending its shares is in nobody's masks and
// is simply left out. Fewer than t live neighbours for any client whose
// secrets may be needed, or fewer than t shares at unmask, is
// ErrTooFewSurvivors and no output.
//
// # Threat model
//
// Honest-but-curious server and clients: everyone follows the protocol;
// the server (and up to t−1 clients colluding with it within any
// neighbourhood) may try to learn more from what it sees. It sees public
// keys, sealed shares, masked vectors (each uniform mod M without the
// masks), and, for each client, either t shares of b_u (if it sent a
// vector) or of s_u^SK (if it did not), so it can remove exactly the masks
// that cancel nothing else: it learns the sum of the survivors' clipped,
// quantised deltas and which clients dropped, nothing about any single
// vector. Clients learn nothing about each other's updates.
//
// Out of scope (as in SecAgg+ without its malicious-server extensions, and
// as in Flower): a server that lies about who dropped to different clients
// (SecAgg+ needs a consistency round with signatures against that), that
// substitutes public keys (the transport must authenticate clients, e.g.
// the agent's mTLS identity, and the keys could be signed with its
// identity key), or that crafts neighbourhoods so a colluding set holds t
// shares; clients that send bad vectors (no input validation: the sum is
// only as good as the clients). The quantised sum must not wrap: Resolve
// requires n·(Q−1) < M (Flower only warns).
//
// Flower weights each vector by its example count (max_weight) before
// masking; here the output is the plain sum of the survivors' deltas and
// the list of survivors, and the caller divides (FedAvg with equal weights)
// or sends pre-weighted deltas.
//
// Precision: stochastic rounding is unbiased with a per-value error of
// less than one step, 2c/(Q−1) ≈ 3.8e−6 at the defaults; the sum of n
// clients is off by about step·√(n/6) per value, so its relative error is
// about step·√(n/6) / rms(sum). That is 3e−5 for Gaussian deltas of
// standard deviation 0.05, but 2.8e−4 for real round-1 WISDM MLP(64)
// deltas (one local epoch of Adam at 0.001, rms 0.002), where a clipping
// range of 1 gives 3.4e−5 (wisdm_test.go). Pick clipping_range from the
// size of the updates (with DP clipping, the clipping norm C bounds it).
package secagg
