//! Lock metrics, emitted through the [`metrics`](https://docs.rs/metrics)
//! facade: nothing is recorded, and next to nothing is spent, until the
//! application installs a recorder (a Prometheus exporter, say). The names
//! and labels are the constants below; `docs/METRICS.md` lists them with
//! what each counts.
//!
//! Why the `metrics` facade and not OpenTelemetry: a library should not
//! choose the exporter. The facade is one small crate, costs a check for a
//! recorder per metric when none is installed, and bridges to OpenTelemetry
//! (`metrics-exporter-opentelemetry`) as well as to Prometheus, StatsD and
//! others; the OpenTelemetry SDK would pull its runtime into every user's
//! build.
//!
//! Where each fact comes from: the call's outcome, time and attempts from
//! the [`Redlock`](crate::Redlock) methods; per-node errors from the
//! `redis-node` capability, as each request ends (also one that finishes in
//! the background after an operation returned at quorum); which locks are
//! held from a small registry per manager (`Held`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

use crate::addr::NodeAddr;
use crate::bindings::node::{NodeError, Reply};
use crate::error::Error;
use crate::lock::Lock;
use crate::sandbox;

/// Histogram, seconds: how long each acquire call took, from the call to
/// its return (waiting for the holder and for a lock-core instance
/// included). Label `outcome`: `acquired`, `not_acquired` (no quorum in
/// time), `cancelled`, `error` (refused before any I/O, configuration,
/// the lock core).
pub const ACQUIRE_DURATION: &str = "redlock_acquire_duration_seconds";

/// Histogram: attempts each acquire call made (1 when the first attempt
/// won; 0 when the call never reached a node). Label `outcome` as for
/// [`ACQUIRE_DURATION`].
pub const ACQUIRE_ATTEMPTS: &str = "redlock_acquire_attempts";

/// Counter: acquire calls that met contention, whatever their outcome: at
/// least one node refused a SET because another client held the key.
pub const ACQUIRE_CONTENDED: &str = "redlock_acquire_contended_total";

/// Gauge: locks this process holds now (acquired and not yet released,
/// lost or expired), over every manager.
pub const LOCKS_HELD: &str = "redlock_locks_held";

/// Histogram, seconds: how long each lock was held, from the acquire's
/// return to its release, its loss or the end of its validity. Label `end`:
/// `released` or `lost`.
pub const HOLD_DURATION: &str = "redlock_hold_duration_seconds";

/// Counter: extend calls (a [`LockGuard`](crate::LockGuard)'s included).
/// Label `outcome`: `ok` or `failed`.
pub const EXTENSIONS: &str = "redlock_extensions_total";

/// Counter: locks lost while held. Label `reason`: `refused` (an extend was
/// refused by N - quorum + 1 nodes: the key is gone or another client's),
/// `expired` (validity ended without a release or a confirmed extension),
/// `unconfirmed` (a guard gave the lock up shortly before its validity
/// ended, no extension having been confirmed in time).
pub const LOCKS_LOST: &str = "redlock_locks_lost_total";

/// Counter: requests to one node that failed. Labels `node` (the address as
/// [`NodeAddr`] prints it: `host:port`, never a password), `op`
/// (`set-if-absent`, `delete-if-token`, `extend-if-token`) and `kind`
/// (`timeout`, `connection`, `redis`, `other`).
pub const NODE_ERRORS: &str = "redlock_node_errors_total";

/// Registers a unit and a description for every metric with the installed
/// recorder. Optional: call it once after installing one, for exporters
/// that show descriptions.
pub fn describe() {
    describe_histogram!(
        ACQUIRE_DURATION,
        Unit::Seconds,
        "Time each acquire call took, by outcome."
    );
    describe_histogram!(
        ACQUIRE_ATTEMPTS,
        Unit::Count,
        "Attempts each acquire call made, by outcome."
    );
    describe_counter!(
        ACQUIRE_CONTENDED,
        Unit::Count,
        "Acquire calls in which a node refused because another client held the key."
    );
    describe_gauge!(LOCKS_HELD, Unit::Count, "Locks this process holds now.");
    describe_histogram!(
        HOLD_DURATION,
        Unit::Seconds,
        "How long each lock was held, by how the hold ended."
    );
    describe_counter!(EXTENSIONS, Unit::Count, "Extend calls, by outcome.");
    describe_counter!(LOCKS_LOST, Unit::Count, "Locks lost while held, by reason.");
    describe_counter!(
        NODE_ERRORS,
        Unit::Count,
        "Failed requests to one node, by node, operation and kind of failure."
    );
}

/// What one acquire call did on the wire, counted while the lock core runs
/// it (the `redis-node` calls happen inside the call's poll).
#[derive(Default)]
pub(crate) struct CallTally {
    /// SETs sent: N per attempt.
    sets: AtomicU32,
    /// SETs that a node refused (the key held by another token).
    refused: AtomicU32,
}

tokio::task_local! {
    static CALL: Arc<CallTally>;
}

/// Runs `call`, counting what it sends.
pub(crate) async fn tally<F: Future>(call: F) -> (F::Output, Arc<CallTally>) {
    let t = Arc::new(CallTally::default());
    let out = CALL.scope(t.clone(), call).await;
    (out, t)
}

/// A SET went out (called by the `redis-node` capability).
pub(crate) fn set_sent() {
    let _ = CALL.try_with(|t| t.sets.fetch_add(1, Ordering::Relaxed));
}

/// One node's request ended with `reply` (called by the `redis-node`
/// capability, also for requests finishing in the background).
pub(crate) fn node_reply(node: &NodeAddr, op: &'static str, reply: &Reply) {
    match reply {
        Reply::Failed(e) => {
            let kind = match e {
                NodeError::Timeout => "timeout",
                NodeError::Connection(_) => "connection",
                NodeError::Redis(_) => "redis",
                NodeError::Other(_) => "other",
            };
            counter!(NODE_ERRORS, "node" => node.to_string(), "op" => op, "kind" => kind)
                .increment(1);
        }
        Reply::Refused if op == "set-if-absent" || op == "set-if-absent-fenced" => {
            let _ = CALL.try_with(|t| t.refused.fetch_add(1, Ordering::Relaxed));
        }
        _ => {}
    }
}

/// Records one acquire call: its time, attempts, contention, and the lock
/// it took in `held`.
pub(crate) fn acquired(
    held: &Held,
    result: &Result<Lock, Error>,
    took: Duration,
    tally: &CallTally,
    nodes: usize,
) {
    // Every attempt sends one SET to each node.
    let rounds = tally
        .sets
        .load(Ordering::Relaxed)
        .div_ceil(u32::try_from(nodes.max(1)).unwrap_or(u32::MAX));
    let (outcome, attempts, refused) = match result {
        Ok(lock) => {
            held.insert(lock);
            ("acquired", rounds, false)
        }
        // The core's own count where it gives one.
        Err(Error::UnableToAcquire(f)) => ("not_acquired", f.attempts, f.refused() > 0),
        Err(Error::Cancelled) => ("cancelled", rounds, false),
        Err(_) => ("error", rounds, false),
    };
    histogram!(ACQUIRE_DURATION, "outcome" => outcome).record(took.as_secs_f64());
    histogram!(ACQUIRE_ATTEMPTS, "outcome" => outcome).record(f64::from(attempts));
    if refused || tally.refused.load(Ordering::Relaxed) > 0 {
        counter!(ACQUIRE_CONTENDED).increment(1);
    }
}

/// Records one extend call of `lock`.
pub(crate) fn extended(held: &Held, lock: &Lock, result: &Result<Lock, Error>) {
    match result {
        Ok(longer) => {
            counter!(EXTENSIONS, "outcome" => "ok").increment(1);
            held.extend(longer);
        }
        Err(e) => {
            counter!(EXTENSIONS, "outcome" => "failed").increment(1);
            if let Some(reason) = certain_loss(e) {
                held.remove(lock, End::Lost(reason));
            }
        }
    }
}

/// Why a lock was lost, for [`LOCKS_LOST`]'s `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LossReason {
    Refused,
    Expired,
    Unconfirmed,
}

impl LossReason {
    fn label(self) -> &'static str {
        match self {
            LossReason::Refused => "refused",
            LossReason::Expired => "expired",
            LossReason::Unconfirmed => "unconfirmed",
        }
    }
}

/// The reason when `e` means the lock is certainly gone (see
/// [`loss_is_certain`](crate::guard::schedule::loss_is_certain)).
fn certain_loss(e: &Error) -> Option<LossReason> {
    match e {
        Error::LockLost(f) if f.attempts == 0 => Some(LossReason::Expired),
        e if crate::guard::schedule::loss_is_certain(e) => Some(LossReason::Refused),
        _ => None,
    }
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Released,
    Lost(LossReason),
}

/// The locks a manager holds, by token: when each was taken and when its
/// validity ends (nanoseconds on the lock core's clock, which counts
/// suspend). Feeds [`LOCKS_HELD`], [`HOLD_DURATION`] and [`LOCKS_LOST`]. A
/// lock whose validity ended without a release or a confirmed extension
/// counts as lost (`expired`) at the manager's next operation. A std mutex
/// is enough: it is held for a map operation, never across an await.
#[derive(Default)]
pub(crate) struct Held {
    inner: Mutex<HeldInner>,
}

#[derive(Default)]
struct HeldInner {
    locks: HashMap<String, Entry>,
    /// The earliest `expires_ns` in `locks` (0 when empty): nothing to
    /// prune before it.
    next_expiry: u64,
}

struct Entry {
    since_ns: u64,
    expires_ns: u64,
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeldInner> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.prune(sandbox::now_ns());
        inner
    }

    fn insert(&self, lock: &Lock) {
        let mut inner = self.lock();
        let entry = Entry {
            since_ns: sandbox::now_ns(),
            expires_ns: lock.expires_ns(),
        };
        if inner.locks.insert(lock.token().to_owned(), entry).is_none() {
            gauge!(LOCKS_HELD).increment(1.0);
        }
        inner.note_expiry(lock.expires_ns());
    }

    fn extend(&self, lock: &Lock) {
        let mut inner = self.lock();
        if let Some(e) = inner.locks.get_mut(lock.token()) {
            e.expires_ns = e.expires_ns.max(lock.expires_ns());
        }
    }

    /// The hold of `lock` ended (a release, a loss); nothing when it was
    /// not held (released twice, rebuilt from parts, already expired).
    pub(crate) fn remove(&self, lock: &Lock, end: End) {
        let mut inner = self.lock();
        if let Some(e) = inner.locks.remove(lock.token()) {
            let now = sandbox::now_ns();
            ended(e.since_ns, now, end);
        }
    }
}

impl HeldInner {
    fn note_expiry(&mut self, expires_ns: u64) {
        if self.next_expiry == 0 || expires_ns < self.next_expiry {
            self.next_expiry = expires_ns;
        }
    }

    /// Ends the holds whose validity is over.
    fn prune(&mut self, now: u64) {
        if self.next_expiry == 0 || now < self.next_expiry {
            return;
        }
        self.next_expiry = 0;
        let mut next = 0;
        self.locks.retain(|_, e| {
            if e.expires_ns <= now {
                ended(e.since_ns, e.expires_ns, End::Lost(LossReason::Expired));
                false
            } else {
                if next == 0 || e.expires_ns < next {
                    next = e.expires_ns;
                }
                true
            }
        });
        self.next_expiry = next;
    }
}

/// Records the end of one hold.
fn ended(since_ns: u64, until_ns: u64, end: End) {
    gauge!(LOCKS_HELD).decrement(1.0);
    let held = Duration::from_nanos(until_ns.saturating_sub(since_ns)).as_secs_f64();
    match end {
        End::Released => histogram!(HOLD_DURATION, "end" => "released").record(held),
        End::Lost(reason) => {
            histogram!(HOLD_DURATION, "end" => "lost").record(held);
            counter!(LOCKS_LOST, "reason" => reason.label()).increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    fn lock(token: &str, valid_for: Duration) -> Lock {
        Lock::from_parts("k", token, std::time::Instant::now() + valid_for)
    }

    /// A lock whose validity ends unreleased counts as lost (expired) at
    /// the manager's next operation, once; a later release of it counts
    /// nothing. Negative control: without the prune, the late release ended
    /// the hold as released and no loss was counted.
    #[test]
    fn expired_holds_end_as_lost_once() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || {
            let held = Held::default();
            let short = lock("a", Duration::from_millis(20));
            held.insert(&short);
            held.insert(&lock("b", Duration::from_secs(60)));
            std::thread::sleep(Duration::from_millis(30));
            held.remove(&lock("c", Duration::from_secs(1)), End::Released);
            held.remove(&short, End::Released);
        });
        let snap = snapshotter.snapshot().into_hashmap();
        let value = |name: &str| {
            snap.iter()
                .find(|(k, _)| k.key().name() == name)
                .map(|(_, (_, _, v))| v)
        };
        assert_eq!(
            value(LOCKS_HELD),
            Some(&DebugValue::Gauge(1.0.into())),
            "b is still held"
        );
        assert_eq!(value(LOCKS_LOST), Some(&DebugValue::Counter(1)));
    }
}
