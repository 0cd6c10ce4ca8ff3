//! Every number the plug runs by, with its value and the reason for it.
//!
//! Only the per-node timeout can be configured (`REDLOCK_NODE_TIMEOUT_MS`,
//! see [`crate::config`]); the rest follow from it or from the protocol.

const MS: u64 = 1_000_000;

/// Per-node timeout unless `REDLOCK_NODE_TIMEOUT_MS` says otherwise: 50 ms,
/// the Rust host's default. Redlock wants it much smaller than the TTL (the
/// spec: 5-50 ms for a 10 s TTL), so that a silent node costs an attempt at
/// most this much. It covers the name lookup, the connect and the reply.
pub const NODE_TIMEOUT_MS: u64 = 50;

/// Largest per-node timeout accepted: 60 s. More is a unit mistake (seconds
/// written as milliseconds) or a node that should not count.
pub const MAX_NODE_TIMEOUT_MS: u64 = 60_000;

/// How long after a request is made the caller is told to look again at
/// once (0.5 ms): a reply from a node on the same host comes back within it
/// (loopback: 0.05-0.3 ms), and a timed wait is no finer than a timer tick
/// (wasmtime's tokio timers: 1 ms). Longer costs CPU on a loaded machine:
/// a looking caller holds a core the nodes may need.
pub const EAGER_NS: u64 = MS / 2;

/// After [`EAGER_NS`], the wait before the next look is a quarter of the
/// request's age, at least this (0.25 ms, the Node.js shim's timers are that
/// fine): a reply is noticed at most a quarter of its own time late (plus a
/// tick), and a request that times out after 50 ms is looked at about 20
/// times.
pub const MIN_STEP_NS: u64 = MS / 4;

/// A connection still connecting after this long (1 s), or after the node
/// timeout if that is longer, is replaced at the next request: a SYN lost
/// to a dead host is retried by the kernel for minutes.
pub const CONNECT_STALE_NS: u64 = 1_000 * MS;

/// A connection whose oldest request has waited this long (2 s), or twice
/// the node timeout if that is longer, is replaced at the next request (a
/// hung or partitioned node). Shorter waits keep the connection, so a node
/// that was only slow answers the requests queued behind the late one, in
/// order.
pub const REPLY_STALE_NS: u64 = 2_000 * MS;

/// A node whose last connect failed less than this ago (1 s) fails new
/// requests at once with that failure, while one new connect is tried in
/// the background; the first request after that connect succeeds uses it.
/// So a dead node's outcome is known the moment it is asked, however slow
/// the host is to report a refused connect, and it costs no attempt a wait.
pub const DOWN_MEMORY_NS: u64 = 1_000 * MS;

/// Longest a name lookup may run (1 s) before it counts as failed. No
/// request waits for it longer than its node timeout; a lookup that ends
/// later still fills the cache for the requests after it.
pub const LOOKUP_TIMEOUT_NS: u64 = 1_000 * MS;

/// A name's address is looked up again after this long (30 s), in the
/// background: requests keep using the address they have meanwhile.
pub const NAME_REFRESH_NS: u64 = 30_000 * MS;

/// A failed lookup is remembered this long (1 s): requests to that node fail
/// at once with why (or keep using the last good address, if there is one)
/// instead of asking the resolver again for every request.
pub const NAME_FAILURE_TTL_NS: u64 = 1_000 * MS;

/// A failed connect to a node given by name asks for a new lookup, at most
/// this often (1 s): the name may point somewhere else now.
pub const NAME_RECHECK_NS: u64 = 1_000 * MS;

/// Most unsent bytes per connection (1 MiB); beyond, requests fail at once.
pub const MAX_UNSENT: usize = 1024 * 1024;

/// Most requests unsent or awaiting replies per connection (4096).
pub const MAX_QUEUED: usize = 4096;

/// Largest read per call (64 KiB).
pub const READ_CHUNK: u64 = 64 * 1024;
