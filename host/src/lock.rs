//! [`Redlock`]: the lock manager, with the Go library's shape.
//!
//! | redlock-go                      | redlock-wasm                                   |
//! |---------------------------------|------------------------------------------------|
//! | `lock.New(clients, duration)`   | [`Redlock::new(urls, ttl)`](Redlock::new), [`Redlock::from_clients`] |
//! | `Acquire(ctx, key)`             | [`Redlock::acquire(key, deadline)`](Redlock::acquire) |
//! | `Release(ctx, key)`             | [`Redlock::release(&lock)`](Redlock::release)  |
//! | (none)                          | [`Redlock::extend(&lock, ttl)`](Redlock::extend) |

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::bindings::api;
use crate::error::{Error, NodeError, Outcome, QuorumFailure};
use crate::node::{RedisNodeCtx, RedisNodeCtxBuilder};
use crate::sandbox::{self, CheckoutError, InstancePool, Warm};

/// How long [`Redlock::release`] may take unless configured: 1 s. With the
/// default per-node timeout (50 ms) a release normally needs under 1 ms, and
/// at most about one timeout when nodes are down.
pub const DEFAULT_RELEASE_BUDGET: Duration = Duration::from_secs(1);

/// Extra wall-clock time a call into the lock core may take beyond its
/// budget before the host stops it: room for cleanup replies and scheduling.
/// The core itself returns within its budget.
const GUEST_SLACK: Duration = Duration::from_millis(500);

/// When an operation must be over. Made from an [`Instant`] (a
/// `tokio::time::Instant` converts with `.into_std()`), a [`Duration`] from
/// now, or [`Deadline::none`], which every operation refuses with
/// [`Error::DeadlineNeeded`] (the Go library's context without a deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline: refused with [`Error::DeadlineNeeded`].
    pub fn none() -> Self {
        Deadline(None)
    }

    /// The instant, if any.
    pub fn instant(&self) -> Option<Instant> {
        self.0
    }

    /// Whole milliseconds left, rounded up; `Some(0)` once passed.
    fn budget_ms(&self) -> Option<u64> {
        self.0.map(|at| {
            let left = at.saturating_duration_since(Instant::now());
            u64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
        })
    }
}

impl From<Instant> for Deadline {
    fn from(at: Instant) -> Self {
        Deadline(Some(at))
    }
}

impl From<tokio::time::Instant> for Deadline {
    fn from(at: tokio::time::Instant) -> Self {
        Deadline(Some(at.into_std()))
    }
}

impl From<Duration> for Deadline {
    fn from(within: Duration) -> Self {
        Deadline(Instant::now().checked_add(within))
    }
}

impl From<Option<Instant>> for Deadline {
    fn from(at: Option<Instant>) -> Self {
        Deadline(at)
    }
}

/// A held lock. Its token is the only proof of ownership: `Debug` never
/// prints it.
///
/// Its end of validity is kept on a clock that counts time the machine
/// spends suspended (`CLOCK_BOOTTIME` on Linux), as Redis's expiry does:
/// after a suspend, [`is_valid`](Self::is_valid) and
/// [`remaining`](Self::remaining) tell the truth, and
/// [`valid_until`](Self::valid_until) moves closer.
#[derive(Clone, PartialEq, Eq)]
pub struct Lock {
    key: String,
    token: String,
    validity: Duration,
    /// Nanoseconds on the lock core's clock (`sandbox::now_ns`).
    expires_ns: u64,
    fence: Option<u64>,
}

impl Lock {
    /// A lock rebuilt from its key and token (for example printed by
    /// `redlock acquire` in another process), assumed valid until
    /// `valid_until`. Use it to release or extend a lock this process did not
    /// acquire.
    pub fn from_parts(
        key: impl Into<String>,
        token: impl Into<String>,
        valid_until: Instant,
    ) -> Self {
        Lock {
            key: key.into(),
            token: token.into(),
            validity: valid_until.saturating_duration_since(Instant::now()),
            expires_ns: sandbox::guest_from_instant(valid_until),
            fence: None,
        }
    }

    /// The same lock with its fencing token (for a lock rebuilt with
    /// [`from_parts`](Self::from_parts) from what another process printed):
    /// an extend keeps it.
    pub fn with_fence(mut self, fence: Option<u64>) -> Self {
        self.fence = fence;
        self
    }

    /// The key as passed to acquire.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The random token stored on the nodes (32 hex digits).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The fencing token, when the lock was acquired with fencing on
    /// ([`RedlockBuilder::fencing`], [`AcquireOptions::fencing`]); `None`
    /// otherwise. If one acquire of a key returned before another one
    /// started, the first one's fence is lower, across the quorum
    /// (docs/FENCING.md). Send it with every write to the resource the lock
    /// protects, and have the resource refuse a fence lower than the
    /// highest it has accepted: a holder that paused past its validity is
    /// then refused instead of overwriting its successor. An extended lock
    /// keeps its fence.
    pub fn fence(&self) -> Option<u64> {
        self.fence
    }

    /// Validity left when acquire / extend returned: TTL minus the time the
    /// successful attempt took minus the drift allowance (TTL / 100 + 2 ms).
    pub fn validity(&self) -> Duration {
        self.validity
    }

    /// When validity ends, as an [`Instant`] seen from now (it moves closer
    /// after the machine was suspended). Work protected by the lock must
    /// finish before it.
    pub fn valid_until(&self) -> Instant {
        sandbox::instant_from_guest(self.expires_ns)
    }

    /// Validity left now, suspend included; zero once expired.
    pub fn remaining(&self) -> Duration {
        Duration::from_nanos(self.expires_ns.saturating_sub(sandbox::now_ns()))
    }

    /// True while validity is left, suspend included.
    pub fn is_valid(&self) -> bool {
        sandbox::now_ns() < self.expires_ns
    }

    /// The end of validity on the lock core's clock (nanoseconds).
    pub(crate) fn expires_ns(&self) -> u64 {
        self.expires_ns
    }

    fn from_guest(l: api::Lock) -> Self {
        Lock {
            key: l.key,
            token: l.token,
            validity: Duration::from_millis(l.validity_ms),
            expires_ns: l.expires_at,
            fence: l.fence,
        }
    }

    fn to_guest(&self) -> api::Lock {
        api::Lock {
            key: self.key.clone(),
            token: self.token.clone(),
            validity_ms: u64::try_from(self.validity.as_millis()).unwrap_or(u64::MAX),
            expires_at: self.expires_ns,
            fence: self.fence,
        }
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("key", &self.key)
            .field("token", &"<redacted>")
            .field("validity", &self.validity)
            .field("remaining", &self.remaining())
            .field("fence", &self.fence)
            .finish()
    }
}

/// Per-call acquire settings; every field defaults to the manager's.
#[derive(Debug, Clone, Default)]
pub struct AcquireOptions {
    ttl: Option<Duration>,
    retry_count: Option<u32>,
    retry_delay: Option<Duration>,
    retry_jitter: Option<Duration>,
    fencing: Option<bool>,
    cancel: Option<CancellationToken>,
}

impl AcquireOptions {
    /// Defaults from the manager.
    pub fn new() -> Self {
        Self::default()
    }

    /// TTL for this lock instead of the manager's.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Further attempts after the first (the default is 32; the deadline
    /// usually ends retries first).
    pub fn retry_count(mut self, count: u32) -> Self {
        self.retry_count = Some(count);
        self
    }

    /// Fixed pause between attempts (the default is 50 ms).
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = Some(delay);
        self
    }

    /// Random extra pause, 0 ..= jitter (the default is 150 ms).
    pub fn retry_jitter(mut self, jitter: Duration) -> Self {
        self.retry_jitter = Some(jitter);
        self
    }

    /// Whether this lock gets a fencing token ([`Lock::fence`]), instead of
    /// the manager's setting ([`RedlockBuilder::fencing`]).
    pub fn fencing(mut self, on: bool) -> Self {
        self.fencing = Some(on);
        self
    }

    /// A token that cancels the acquire: it then deletes the keys it set
    /// (waiting at most 100 ms for their replies) and returns
    /// [`Error::Cancelled`].
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    fn or(self, base: &AcquireOptions) -> Self {
        AcquireOptions {
            ttl: self.ttl.or(base.ttl),
            retry_count: self.retry_count.or(base.retry_count),
            retry_delay: self.retry_delay.or(base.retry_delay),
            retry_jitter: self.retry_jitter.or(base.retry_jitter),
            fencing: self.fencing.or(base.fencing),
            cancel: self.cancel.or_else(|| base.cancel.clone()),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ms32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// A Redlock lock manager over N independent Redis masters. Cheap to clone;
/// clones share connections, the concurrency limit and warm instances.
#[derive(Clone)]
pub struct Redlock {
    inner: Arc<Shared>,
}

struct Shared {
    nodes: RedisNodeCtx,
    pool: InstancePool,
    defaults: AcquireOptions,
    release_budget: Duration,
    /// The locks this manager holds, for the metrics.
    held: crate::metrics::Held,
    /// Releases of dropped [`LockGuard`](crate::LockGuard)s still running.
    guard_releases: tokio_util::task::TaskTracker,
}

/// Builder-style structure used to create a [`Redlock`].
pub struct RedlockBuilder {
    nodes: RedisNodeCtxBuilder,
    defaults: AcquireOptions,
    release_budget: Duration,
    memory_limit: usize,
    core: Option<Vec<u8>>,
}

impl RedlockBuilder {
    /// Adds a node by URL (`redis://` or `rediss://`, with optional
    /// `user:password@` and `/db`).
    pub fn node(mut self, url: impl Into<String>) -> Self {
        self.nodes = self.nodes.node(url);
        self
    }

    /// Adds several nodes by URL.
    pub fn nodes<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for url in urls {
            self.nodes = self.nodes.node(url);
        }
        self
    }

    /// Adds a node from an existing `redis::Client`.
    pub fn client(mut self, client: redis::Client) -> Self {
        self.nodes = self.nodes.client(client);
        self
    }

    /// Adds `n` in-process, in-memory nodes: locks that exclude only within
    /// this process, for tests and for measuring the core without Redis.
    pub fn in_memory_nodes(mut self, n: usize) -> Self {
        self.nodes = self.nodes.in_memory(n);
        self
    }

    /// Default lock TTL. Required (here or per call): 3 ms ..= 24 h.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.defaults.ttl = Some(ttl);
        self
    }

    /// Default retries after the first attempt. The default is 32.
    pub fn retry_count(mut self, count: u32) -> Self {
        self.defaults.retry_count = Some(count);
        self
    }

    /// Default fixed pause between attempts. The default is 50 ms.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.defaults.retry_delay = Some(delay);
        self
    }

    /// Default random extra pause. The default is 150 ms.
    pub fn retry_jitter(mut self, jitter: Duration) -> Self {
        self.defaults.retry_jitter = Some(jitter);
        self
    }

    /// Give every lock a fencing token ([`Lock::fence`]; per acquire:
    /// [`AcquireOptions::fencing`]). The default is off. A fenced acquire
    /// also raises a counter per key on each node, and needs a second
    /// round trip when the nodes' counters disagree (docs/FENCING.md).
    pub fn fencing(mut self, on: bool) -> Self {
        self.defaults.fencing = Some(on);
        self
    }

    /// Per-node command timeout. The default is 50 ms.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.nodes = self.nodes.node_timeout(timeout);
        self
    }

    /// Unanswered round trips per node for this manager (requests made
    /// meanwhile leave together in the next one). The default is 10, the
    /// original Go library's semaphore; 1 serialises each node's round trips.
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.nodes = self.nodes.concurrency(limit);
        self
    }

    /// Prefix for every key in Redis. None by default.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.nodes = self.nodes.key_prefix(prefix);
        self
    }

    /// Time budget of [`Redlock::release`]. The default is 1 s.
    pub fn release_budget(mut self, budget: Duration) -> Self {
        self.release_budget = budget;
        self
    }

    /// Cap on the lock core's linear memory. The default is 16 MiB; the core
    /// needs about 2.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Runs another build of the lock core: any component of the
    /// `lock-core` world in `wit/redlock.wit`. The default is the core
    /// embedded in this crate ([`CORE_WASM`](crate::CORE_WASM)).
    pub fn core(mut self, wasm: impl Into<Vec<u8>>) -> Self {
        self.core = Some(wasm.into());
        self
    }

    /// Checks everything that can be checked without I/O and loads the lock
    /// core (compiled once per process, cached on disk across processes).
    pub fn build(self) -> Result<Redlock, Error> {
        let nodes = self.nodes.build()?;
        if self.release_budget.is_zero() {
            return Err(Error::Config("release budget must be above zero".into()));
        }
        let runtime = match &self.core {
            Some(wasm) => sandbox::Runtime::for_core(wasm)?,
            None => sandbox::Runtime::get()?,
        };
        Ok(Redlock {
            inner: Arc::new(Shared {
                pool: InstancePool::new(runtime, nodes.clone(), self.memory_limit),
                nodes,
                defaults: self.defaults,
                release_budget: self.release_budget,
                held: crate::metrics::Held::default(),
                guard_releases: tokio_util::task::TaskTracker::new(),
            }),
        })
    }
}

/// Which operation a call is, for the error of a call that never started.
#[derive(Clone, Copy)]
enum Op {
    Acquire,
    Release,
    Extend,
}

/// Runs one call in a warm instance, under the sandbox's time limit. The
/// wait for an instance counts against the deadline and obeys `cancel`;
/// the budget handed to the core is what is left after it.
macro_rules! in_core {
    ($shared:expr, $cancel:expr, $deadline:expr, $op:expr, |$store:ident, $core:ident, $budget:ident| $call:expr) => {{
        let shared: &Shared = $shared;
        let deadline: Deadline = $deadline;
        // Without a deadline the core answers DeadlineNeeded before any I/O;
        // here too, so that no wait for an instance is unbounded.
        let Some(at) = deadline.instant() else {
            return Err(Error::DeadlineNeeded);
        };
        if let Some(same) = shared.nodes.same_servers() {
            return Err(Error::Config(same));
        }
        // A deadline already past is the caller's input error (the core
        // says so); one that passed while waiting for an instance is not.
        let past_at_call = at <= Instant::now();
        let mut warm: Warm = match shared.pool.checkout($cancel, at).await {
            Ok(warm) => warm,
            Err(CheckoutError::DeadlinePassed) => return Err(shared.never_started($op)),
            Err(CheckoutError::Cancelled) => return Err(Error::Cancelled),
            Err(CheckoutError::Core(e)) => return Err(e),
        };
        let $budget = deadline.budget_ms();
        if $budget == Some(0) && !past_at_call && !matches!($op, Op::Extend) {
            shared.pool.checkin(warm);
            return Err(shared.never_started($op));
        }
        let limit = Duration::from_millis($budget.unwrap_or(0)).saturating_add(GUEST_SLACK);
        let result = {
            let Warm {
                store: $store,
                core,
                ..
            } = &mut warm;
            let $core = core.redlock_core_redlock();
            tokio::time::timeout(limit, $call).await
        };
        match result {
            Ok(Ok(r)) => {
                shared.pool.checkin(warm);
                r.map_err(|e| shared.error(e))
            }
            // The store is dropped with `warm`: a trap never leaks into later calls.
            Ok(Err(trap)) => Err(Error::Core(format!("{trap:#}"))),
            Err(_) => Err(Error::Core(format!(
                "the lock core ran {} ms past its budget and was stopped",
                limit.as_millis()
            ))),
        }
    }};
}

impl Redlock {
    /// A manager over `nodes` (URLs) with a default lock TTL: the Go
    /// library's `lock.New(clients, duration)`. Everything else at its
    /// default; see [`Redlock::builder`].
    pub fn new<I, S>(nodes: I, ttl: Duration) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder().nodes(nodes).ttl(ttl).build()
    }

    /// A manager over existing `redis::Client`s with a default lock TTL.
    pub fn from_clients<I>(clients: I, ttl: Duration) -> Result<Self, Error>
    where
        I: IntoIterator<Item = redis::Client>,
    {
        let mut b = Self::builder().ttl(ttl);
        for c in clients {
            b = b.client(c);
        }
        b.build()
    }

    /// A builder with every default.
    pub fn builder() -> RedlockBuilder {
        RedlockBuilder {
            nodes: RedisNodeCtx::builder(),
            defaults: AcquireOptions::default(),
            release_budget: DEFAULT_RELEASE_BUDGET,
            memory_limit: sandbox::DEFAULT_MEMORY_LIMIT,
            core: None,
        }
    }

    /// The nodes, their timeout and the concurrency limit.
    pub fn nodes(&self) -> &RedisNodeCtx {
        &self.inner.nodes
    }

    /// Changes the lock core's memory cap for instances made from now on
    /// (idle instances with another cap are dropped). Mostly for tests of
    /// the sandbox.
    pub fn set_memory_limit(&self, bytes: usize) {
        self.inner.pool.set_memory_limit(bytes);
    }

    /// Waits, at most `within`, for commands still going to slower nodes
    /// after operations returned at quorum, and for the releases of dropped
    /// [`LockGuard`](crate::LockGuard)s. Call it before a short-lived
    /// process exits, so every node sees the last release or extend.
    pub async fn settle(&self, within: Duration) {
        let start = Instant::now();
        let guards = &self.inner.guard_releases;
        guards.close();
        let _ = tokio::time::timeout(within, guards.wait()).await;
        guards.reopen();
        let left = within.saturating_sub(start.elapsed());
        self.inner.nodes.settle(left).await;
    }

    /// The TTL an acquire with `options` uses.
    pub(crate) fn ttl_for(&self, options: &AcquireOptions) -> Option<Duration> {
        options.ttl.or(self.inner.defaults.ttl)
    }

    /// The locks this manager holds, for the metrics.
    pub(crate) fn held(&self) -> &crate::metrics::Held {
        &self.inner.held
    }

    /// Where dropped guards' releases run.
    pub(crate) fn guard_releases(&self) -> &tokio_util::task::TaskTracker {
        &self.inner.guard_releases
    }

    /// Connects to every node now instead of on first use. Optional.
    pub async fn connect(&self) -> Vec<Result<(), NodeError>> {
        self.inner.nodes.connect().await
    }

    /// Takes the lock on `key` before `deadline`, retrying while it lasts
    /// (the Go library's `Acquire(ctx, key)`).
    ///
    /// Dropping the returned future stops at once; keys it had set then
    /// stay until their TTL ends (nothing else is left). To stop and also
    /// delete them, cancel through [`AcquireOptions::cancel_on`].
    pub async fn acquire(&self, key: &str, deadline: impl Into<Deadline>) -> Result<Lock, Error> {
        self.acquire_with(key, deadline, AcquireOptions::default())
            .await
    }

    /// [`acquire`](Self::acquire) with per-call options.
    pub async fn acquire_with(
        &self,
        key: &str,
        deadline: impl Into<Deadline>,
        options: AcquireOptions,
    ) -> Result<Lock, Error> {
        let started = Instant::now();
        let call = self.acquire_in_core(key, deadline.into(), options);
        let (result, tally) = crate::metrics::tally(call).await;
        let n = self.inner.nodes.len();
        crate::metrics::acquired(&self.inner.held, &result, started.elapsed(), &tally, n);
        result
    }

    async fn acquire_in_core(
        &self,
        key: &str,
        deadline: Deadline,
        options: AcquireOptions,
    ) -> Result<Lock, Error> {
        let o = options.or(&self.inner.defaults);
        let Some(ttl) = o.ttl else {
            return Err(Error::InvalidArgument(
                "no TTL: set one on the builder or in AcquireOptions".into(),
            ));
        };
        let opts = api::Options {
            ttl_ms: ms(ttl),
            retry_count: o.retry_count,
            retry_delay_ms: o.retry_delay.map(ms32),
            retry_jitter_ms: o.retry_jitter.map(ms32),
            fence: o.fencing,
        };
        in_core!(
            &self.inner,
            o.cancel.as_ref(),
            deadline,
            Op::Acquire,
            |store, core, budget| core.call_acquire(store, key, opts, budget)
        )
        .map(Lock::from_guest)
    }

    /// Deletes the lock on every node that still holds its token, within the
    /// release budget (1 s unless configured). Succeeds when a quorum
    /// confirmed (the Go library's `Release(ctx, key)`, without its bug of
    /// deleting other clients' locks).
    pub async fn release(&self, lock: &Lock) -> Result<(), Error> {
        self.release_by(lock, self.inner.release_budget).await
    }

    /// [`release`](Self::release) with an explicit deadline.
    pub async fn release_by(
        &self,
        lock: &Lock,
        deadline: impl Into<Deadline>,
    ) -> Result<(), Error> {
        let result = self.release_in_core(lock, deadline.into()).await;
        self.inner.held.remove(lock, crate::metrics::End::Released);
        result
    }

    async fn release_in_core(&self, lock: &Lock, deadline: Deadline) -> Result<(), Error> {
        let guest_lock = lock.to_guest();
        in_core!(
            &self.inner,
            None,
            deadline,
            Op::Release,
            |store, core, budget| core.call_release(store, &guest_lock, budget)
        )
    }

    /// Sets the lock's TTL to `ttl` on every node that still holds its token;
    /// succeeds when a quorum confirmed before the lock's validity ended, and
    /// returns the lock with its new validity. Fails with
    /// [`Error::LockLost`] otherwise; a failed extend never deletes.
    pub async fn extend(&self, lock: &Lock, ttl: Duration) -> Result<Lock, Error> {
        self.extend_by(lock, ttl, lock.valid_until()).await
    }

    /// [`extend`](Self::extend) with an explicit deadline (the lock's
    /// validity still bounds it).
    pub async fn extend_by(
        &self,
        lock: &Lock,
        ttl: Duration,
        deadline: impl Into<Deadline>,
    ) -> Result<Lock, Error> {
        let result = self.extend_in_core(lock, ttl, deadline.into()).await;
        crate::metrics::extended(&self.inner.held, lock, &result);
        result
    }

    async fn extend_in_core(
        &self,
        lock: &Lock,
        ttl: Duration,
        deadline: Deadline,
    ) -> Result<Lock, Error> {
        let guest_lock = lock.to_guest();
        in_core!(
            &self.inner,
            None,
            deadline,
            Op::Extend,
            // An expired lock has no budget left but must still answer LockLost.
            |store, core, budget| core.call_extend(
                store,
                &guest_lock,
                ms(ttl),
                budget.map(|b| b.max(1))
            )
        )
        .map(Lock::from_guest)
    }
}

impl fmt::Debug for Redlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redlock")
            .field("nodes", &self.inner.nodes)
            .field("ttl", &self.inner.defaults.ttl)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The error of a call whose deadline passed before it could start
    /// (every instance slot of the process busy): no attempt, no node asked.
    fn never_started(&self, op: Op) -> Error {
        let addrs: Vec<_> = self.nodes.nodes().cloned().collect();
        let failure = QuorumFailure::describe(
            0,
            true,
            &addrs,
            (0..addrs.len()).map(|i| (i, Outcome::NoReply)),
        );
        match op {
            Op::Acquire => Error::UnableToAcquire(failure),
            Op::Release => Error::UnableToRelease(failure),
            Op::Extend => Error::LockLost(failure),
        }
    }

    /// The guest's error, with node indices turned into addresses.
    fn error(&self, e: api::Error) -> Error {
        let addrs: Vec<_> = self.nodes.nodes().cloned().collect();
        let failure = |f: api::QuorumFailure| {
            QuorumFailure::describe(
                f.attempts,
                f.deadline_passed,
                &addrs,
                f.nodes
                    .into_iter()
                    .map(|n| (n.node as usize, outcome(n.outcome))),
            )
        };
        match e {
            api::Error::DeadlineNeeded => Error::DeadlineNeeded,
            api::Error::UnableToAcquire(f) => Error::UnableToAcquire(failure(f)),
            api::Error::UnableToRelease(f) => Error::UnableToRelease(failure(f)),
            api::Error::InvalidArgument(s) => Error::InvalidArgument(s),
            api::Error::LockLost(f) => Error::LockLost(failure(f)),
            api::Error::Cancelled => Error::Cancelled,
        }
    }
}

fn outcome(o: api::Outcome) -> Outcome {
    match o {
        api::Outcome::Done => Outcome::Done,
        api::Outcome::Refused => Outcome::Refused,
        api::Outcome::Failed(e) => Outcome::Failed(e.into()),
        api::Outcome::NoReply => Outcome::NoReply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validity counts time the machine spent suspended, as Redis's expiry
    /// does: after a (simulated) 10 s suspend, a lock with 5 s left is no
    /// longer valid, though `Instant` did not move. Round one kept validity
    /// as an `Instant`, which the simulated suspend does not move: it would
    /// fail the second half.
    #[test]
    fn validity_counts_time_suspended() {
        let lock = Lock::from_parts("k", "t", Instant::now() + Duration::from_secs(5));
        assert!(lock.is_valid());
        assert!(lock.remaining() > Duration::from_secs(4));
        sandbox::SUSPENDED_NS.fetch_add(10_000_000_000, std::sync::atomic::Ordering::SeqCst);
        let (valid, remaining, until) = (lock.is_valid(), lock.remaining(), lock.valid_until());
        sandbox::SUSPENDED_NS.store(0, std::sync::atomic::Ordering::SeqCst);
        assert!(!valid);
        assert_eq!(remaining, Duration::ZERO);
        assert!(until <= Instant::now());
    }
}
