//! [`LockGuard`]: a held lock that extends itself while the work runs and
//! says, before its validity ends, when it can no longer be relied on.
//!
//! | node-redlock / rslock          | redlock-wasm                                   |
//! |--------------------------------|------------------------------------------------|
//! | `redlock.using(keys, ttl, fn)` | [`Redlock::acquire_guard(key, deadline)`](Redlock::acquire_guard), then the work |
//! | `signal.aborted`               | [`LockGuard::lost`], [`LockGuard::cancellation`] |
//!
//! The guard keeps the schedule `redlock run` keeps for a job (see
//! [`schedule`]): it extends the lock after each third of its validity,
//! retries a failed extension every 100 ms, and when no extension has been
//! confirmed it signals the loss at `valid_until - margin`, where the
//! margin is 100 ms plus the guard's grace. A loss that is certain (N -
//! quorum + 1 nodes refused the token, or the validity is over) is
//! signalled at once.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::lock::{AcquireOptions, Deadline, Lock, Redlock};
use crate::metrics::{End, LossReason};

/// The termination schedule shared by [`LockGuard`] and `redlock run`:
/// pure arithmetic over a lock's validity, no I/O.
///
/// The times are measured from the last confirmation (the acquire or the
/// last successful extension). `valid_until` and `validity` are the lock
/// core's: TTL minus the time the successful attempt took minus the drift
/// allowance (TTL / 100 + 2 ms), so a signal before `valid_until` comes
/// before any other client can take the lock.
pub mod schedule {
    use std::time::{Duration, Instant};

    use crate::error::Error;

    /// Time kept between the last moment the holder may act and the end of
    /// validity: room for a late timer on a loaded machine. `redlock run`
    /// sends SIGKILL this long before validity ends.
    pub const MARGIN: Duration = Duration::from_millis(100);

    /// How soon a failed extension is tried again (while the schedule
    /// allows).
    pub const EXTEND_RETRY: Duration = Duration::from_millis(100);

    /// The default grace: time the work gets between the signal and
    /// `valid_until - MARGIN`, clamped by [`max_grace`]. 5 s, as for
    /// `redlock run --grace`.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

    /// Validity a lock with this TTL has at best (zero elapsed): TTL minus
    /// the drift allowance, as the lock core computes it.
    pub fn best_validity(ttl: Duration) -> Duration {
        ttl.saturating_sub(ttl / 100 + Duration::from_millis(2))
    }

    /// Whether a TTL leaves room for the schedule: half its best validity
    /// must exceed [`MARGIN`] (TTL 250 ms or more).
    pub fn ttl_fits(ttl: Duration) -> bool {
        best_validity(ttl) / 2 > MARGIN
    }

    /// The longest grace that still leaves the first extension (after a
    /// third of the validity) and its retries room before the signal: the
    /// signal never comes before half the validity has passed.
    pub fn max_grace(validity: Duration) -> Duration {
        (validity / 2).saturating_sub(MARGIN)
    }

    /// When to extend, after a confirmation with this validity: after a
    /// third of it, so that retries fit before the signal.
    pub fn extend_after(validity: Duration) -> Duration {
        validity / 3
    }

    /// How long before the end of validity the signal comes when no
    /// extension was confirmed: [`MARGIN`] plus the grace, clamped.
    pub fn signal_margin(validity: Duration, grace: Duration) -> Duration {
        MARGIN + grace.min(max_grace(validity))
    }

    /// The signal (SIGTERM for `redlock run`) and the hard end (SIGKILL)
    /// for a lock confirmed until `valid_until` with `validity`:
    /// `valid_until - MARGIN - grace` and `valid_until - MARGIN`. In the
    /// past when validity is almost over: act at once.
    pub fn deadlines(
        valid_until: Instant,
        validity: Duration,
        grace: Duration,
    ) -> (Instant, Instant) {
        let end = valid_until.checked_sub(MARGIN).unwrap_or(valid_until);
        let grace = grace.min(max_grace(validity));
        (end.checked_sub(grace).unwrap_or(end), end)
    }

    /// True when an extend's error means the lock is certainly gone: the
    /// validity was over ([`Error::LockLost`] after 0 attempts), or so many
    /// nodes refused the token that no quorum can hold it (refused >= N -
    /// quorum + 1). Timeouts and connection errors may be transient: the
    /// schedule keeps retrying them.
    pub fn loss_is_certain(e: &Error) -> bool {
        match e {
            Error::LockLost(f) => f.attempts == 0 || f.certainly_refused(),
            _ => false,
        }
    }
}

/// A guard wakes at least this often, to notice a suspend: tokio's timers
/// stop while the machine sleeps, the lock's validity does not.
const SUSPEND_CHECK: Duration = Duration::from_secs(1);

/// Settings of [`Redlock::acquire_guard_with`]. An [`AcquireOptions`]
/// converts into one.
#[derive(Debug, Clone)]
pub struct GuardOptions {
    acquire: AcquireOptions,
    grace: Duration,
}

impl Default for GuardOptions {
    fn default() -> Self {
        GuardOptions {
            acquire: AcquireOptions::default(),
            grace: schedule::DEFAULT_GRACE,
        }
    }
}

impl GuardOptions {
    /// The manager's acquire settings and the default grace (5 s).
    pub fn new() -> Self {
        Self::default()
    }

    /// The acquire's settings (TTL, retries, cancellation). The TTL is
    /// also the one each extension sets.
    pub fn acquire(mut self, options: AcquireOptions) -> Self {
        self.acquire = options;
        self
    }

    /// Time the work needs to stop after the signal: the loss is signalled
    /// at `valid_until - 100 ms - grace` when no extension was confirmed.
    /// Clamped to half the validity less 100 ms, so that extensions get
    /// time to succeed first. The default is 5 s; 0 signals 100 ms before
    /// the end.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }
}

impl From<AcquireOptions> for GuardOptions {
    fn from(acquire: AcquireOptions) -> Self {
        GuardOptions::new().acquire(acquire)
    }
}

/// Why a [`LockGuard`] gave its lock up.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Loss {
    /// An extension found the lock certainly gone: N - quorum + 1 nodes
    /// refused the token (the key expired, was deleted, or is another
    /// client's), or the validity was over. The error says node by node.
    #[error("the lock was lost: {0}")]
    Certain(Error),
    /// No extension was confirmed in time: the guard signalled the margin
    /// before the last confirmed validity ended. The last extension's error,
    /// if one returned.
    #[error("no extension was confirmed in time{}", .0.as_ref().map(|e| format!(" (last: {e})")).unwrap_or_default())]
    Unconfirmed(Option<Error>),
}

/// A lock held for as long as the guard lives: extended in the background,
/// released on [`release`](Self::release) or drop, and lost loudly.
///
/// Made by [`Redlock::acquire_guard`]. A task on the current tokio runtime
/// extends the lock after each third of its validity (retrying a failed
/// extension every 100 ms). When no extension has been confirmed by
/// `valid_until - margin` (margin: 100 ms plus the grace, see
/// [`GuardOptions::grace`]), or as soon as a loss is certain, the guard
/// gives the lock up: [`lost`](Self::lost) resolves and
/// [`cancellation`](Self::cancellation) is cancelled, both before the
/// validity ends. It then stops extending; release or drop it to delete
/// what is left.
///
/// Dropping the guard stops the extensions and releases the lock in a task
/// spawned on the current tokio runtime (best effort: outside a runtime,
/// or on one shutting down, nothing is released and the keys expire with
/// their TTL; [`Redlock::settle`] waits for such releases).
/// [`release`](Self::release) releases in place and returns the result.
/// An extension still in flight then cannot bring the keys back: it is a
/// compare-and-extend, refused where the key is gone.
///
/// The guard is `Send + Sync + 'static`: hold it across awaits, move it
/// into a spawned task.
///
/// ```no_run
/// # async fn build_report() {}
/// # async fn demo() -> Result<(), redlock_wasm::Error> {
/// use std::time::Duration;
/// use redlock_wasm::Redlock;
///
/// let redlock = Redlock::new(
///     ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379", "redis://10.0.0.3:6379"],
///     Duration::from_secs(10),
/// )?;
/// let guard = redlock.acquire_guard("report", Duration::from_secs(2)).await?;
/// tokio::select! {
///     () = build_report() => guard.release().await?, // extended while it ran
///     loss = guard.lost() => eprintln!("stopped before the lock ended: {loss}"),
/// }
/// # Ok(()) }
/// ```
pub struct LockGuard {
    redlock: Redlock,
    state: Arc<State>,
    /// Cancelled on release or drop: the extender stops.
    stop: CancellationToken,
    /// Set once a release has returned: drop has nothing left to do.
    released: bool,
}

/// What the guard and its extender share.
struct State {
    held: Mutex<Held>,
    /// Cancelled at the loss only.
    lost: CancellationToken,
    /// A child of `lost`, also cancelled at release and drop: for the work.
    work: CancellationToken,
}

struct Held {
    lock: Lock,
    loss: Option<Loss>,
}

impl State {
    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Redlock {
    /// Takes the lock on `key` before `deadline` and returns a guard that
    /// keeps it extended until released or dropped; see [`LockGuard`].
    /// Needs a tokio runtime (refused with [`Error::Config`] before any
    /// I/O otherwise) and a TTL of 250 ms or more.
    pub async fn acquire_guard(
        &self,
        key: &str,
        deadline: impl Into<Deadline>,
    ) -> Result<LockGuard, Error> {
        self.acquire_guard_with(key, deadline, GuardOptions::new())
            .await
    }

    /// [`acquire_guard`](Self::acquire_guard) with acquire options and a
    /// grace ([`GuardOptions`]; an [`AcquireOptions`] converts).
    pub async fn acquire_guard_with(
        &self,
        key: &str,
        deadline: impl Into<Deadline>,
        options: impl Into<GuardOptions>,
    ) -> Result<LockGuard, Error> {
        let options = options.into();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(Error::Config(
                "a lock guard extends its lock in a tokio task: call acquire_guard on a tokio runtime"
                    .into(),
            ));
        };
        let Some(ttl) = self.ttl_for(&options.acquire) else {
            return Err(Error::InvalidArgument(
                "no TTL: set one on the builder or in AcquireOptions".into(),
            ));
        };
        if !schedule::ttl_fits(ttl) {
            return Err(Error::InvalidArgument(format!(
                "TTL {ttl:?} is too short for a guard: half the lock's validity must exceed the \
                 {} ms margin; use 250 ms or more",
                schedule::MARGIN.as_millis()
            )));
        }
        let lock = self.acquire_with(key, deadline, options.acquire).await?;
        let lost = CancellationToken::new();
        let state = Arc::new(State {
            held: Mutex::new(Held { lock, loss: None }),
            work: lost.child_token(),
            lost,
        });
        let stop = CancellationToken::new();
        runtime.spawn(extend_while_held(
            self.clone(),
            state.clone(),
            stop.clone(),
            ttl,
            options.grace,
        ));
        Ok(LockGuard {
            redlock: self.clone(),
            state,
            stop,
            released: false,
        })
    }
}

impl LockGuard {
    /// The lock as last confirmed: its token, and its validity from the
    /// acquire or the last successful extension.
    pub fn lock(&self) -> Lock {
        self.state.held().lock.clone()
    }

    /// Resolves when the guard gives the lock up (before its validity ends,
    /// see [`LockGuard`]), with the reason; never after a confirmed
    /// extension keeps it. Stop the work protected by the lock then.
    pub async fn lost(&self) -> Loss {
        self.state.lost.cancelled().await;
        self.loss().unwrap_or(Loss::Unconfirmed(None))
    }

    /// The loss, once there is one.
    pub fn loss(&self) -> Option<Loss> {
        self.state.held().loss.clone()
    }

    /// A token for the work the lock protects: cancelled when the lock is
    /// lost (as [`lost`](Self::lost) resolves) and when the guard is
    /// released or dropped, so work holding a clone never outlives the
    /// lock. Take `child_token()`s of it freely.
    pub fn cancellation(&self) -> CancellationToken {
        self.state.work.clone()
    }

    /// Stops extending and releases the lock (within the manager's release
    /// budget); returns the release's result, also after a loss. If this
    /// future is dropped before it returns, the drop releases instead.
    pub async fn release(mut self) -> Result<(), Error> {
        self.stop.cancel();
        self.state.work.cancel();
        let lock = self.lock();
        let result = self.redlock.release(&lock).await;
        self.released = true;
        result
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.work.cancel();
        if self.released {
            return;
        }
        let (redlock, lock) = (self.redlock.clone(), self.lock());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let tracker = redlock.guard_releases().clone();
                tracker.spawn_on(
                    async move {
                        if let Err(e) = redlock.release(&lock).await {
                            tracing::debug!(key = lock.key(), error = %e, "dropped guard's release failed");
                        }
                    },
                    &runtime,
                );
            }
            Err(_) => tracing::warn!(
                key = lock.key(),
                "lock guard dropped outside a tokio runtime: not released, its keys expire with their TTL"
            ),
        }
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.state.held();
        f.debug_struct("LockGuard")
            .field("lock", &held.lock)
            .field("loss", &held.loss)
            .finish_non_exhaustive()
    }
}

/// The guard's background task: extends `state`'s lock on the schedule
/// until `stop`, or gives it up.
async fn extend_while_held(
    redlock: Redlock,
    state: Arc<State>,
    stop: CancellationToken,
    ttl: Duration,
    grace: Duration,
) {
    let mut lock = state.held().lock.clone();
    let mut next_extend = Instant::now() + schedule::extend_after(lock.validity());
    let mut last_error: Option<Error> = None;
    loop {
        // On the lock's own clock, which counts suspend.
        let margin = schedule::signal_margin(lock.validity(), grace);
        let to_signal = lock.remaining().saturating_sub(margin);
        if to_signal.is_zero() {
            return give_up(&redlock, &state, &stop, Loss::Unconfirmed(last_error));
        }
        let now = Instant::now();
        let signal_at = now + to_signal;
        if now < next_extend {
            let wake = signal_at.min(next_extend).min(now + SUSPEND_CHECK);
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(wake.into()) => continue,
            }
        }
        let result = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            // Dropping the extension here is safe: what it sent finishes in
            // the background, and a compare-and-extend never recreates a key.
            () = tokio::time::sleep_until(signal_at.into()) => continue,
            r = redlock.extend(&lock, ttl) => r,
        };
        match result {
            Ok(longer) => {
                tracing::debug!(key = longer.key(), validity = ?longer.validity(), "guard extended the lock");
                lock = longer;
                state.held().lock = lock.clone();
                next_extend = Instant::now() + schedule::extend_after(lock.validity());
                last_error = None;
            }
            Err(e) if schedule::loss_is_certain(&e) => {
                return give_up(&redlock, &state, &stop, Loss::Certain(e));
            }
            Err(e) => {
                tracing::debug!(key = lock.key(), error = %e, "guard's extension failed; retrying");
                last_error = Some(e);
                next_extend = Instant::now() + schedule::EXTEND_RETRY;
            }
        }
    }
}

/// Signals the loss, unless the guard was released meanwhile.
fn give_up(redlock: &Redlock, state: &State, stop: &CancellationToken, loss: Loss) {
    if stop.is_cancelled() {
        return;
    }
    let lock = {
        let mut held = state.held();
        held.loss = Some(loss.clone());
        held.lock.clone()
    };
    tracing::warn!(key = lock.key(), "{loss}");
    if let Loss::Unconfirmed(_) = loss {
        // A certain loss was counted by the extend that found it.
        redlock
            .held()
            .remove(&lock, End::Lost(LossReason::Unconfirmed));
    }
    state.lost.cancel();
}

#[cfg(test)]
mod tests {
    use super::schedule::*;
    use super::*;
    use crate::error::{NodeOutcome, Outcome, QuorumFailure};

    fn lost(outcomes: &[Outcome]) -> Error {
        Error::LockLost(QuorumFailure {
            attempts: 1,
            deadline_passed: false,
            quorum: outcomes.len() / 2 + 1,
            nodes: outcomes
                .iter()
                .enumerate()
                .map(|(index, outcome)| NodeOutcome {
                    index,
                    node: format!("n{index}"),
                    outcome: outcome.clone(),
                })
                .collect(),
        })
    }

    /// Loss is certain at N - quorum + 1 refusals
    /// ([`QuorumFailure::certainly_refused`], tested with the error) or
    /// with the validity over; timeouts never make it certain.
    #[test]
    fn loss_is_certain_when_refused_or_over() {
        use Outcome::{Done, NoReply, Refused};
        assert!(loss_is_certain(&lost(&[Refused, Refused, Done])));
        let timeout = || Outcome::Failed(crate::NodeError::Timeout);
        assert!(!loss_is_certain(&lost(&[Refused, timeout(), timeout()])));
        let Error::LockLost(mut f) = lost(&[NoReply, NoReply, NoReply]) else {
            unreachable!()
        };
        f.attempts = 0;
        assert!(loss_is_certain(&Error::LockLost(f)), "validity over");
        assert!(!loss_is_certain(&Error::Cancelled));
    }

    /// The documented numbers: 100 ms margin, 100 ms retry, 5 s grace, a
    /// 250 ms TTL floor, and the grace clamped to half the validity less
    /// the margin (the signal never before half the validity).
    #[test]
    fn documented_schedule() {
        assert_eq!(MARGIN, Duration::from_millis(100));
        assert_eq!(EXTEND_RETRY, Duration::from_millis(100));
        assert_eq!(DEFAULT_GRACE, Duration::from_secs(5));
        assert!(ttl_fits(Duration::from_millis(250)));
        assert!(!ttl_fits(Duration::from_millis(200)));
        let v = Duration::from_secs(10);
        assert_eq!(signal_margin(v, Duration::ZERO), MARGIN);
        assert_eq!(
            signal_margin(v, Duration::from_secs(2)),
            Duration::from_millis(2_100)
        );
        assert_eq!(signal_margin(v, Duration::from_secs(60)), v / 2);
        assert_eq!(extend_after(v), v / 3);
        let now = Instant::now();
        let (signal, end) = deadlines(now + v, v, Duration::from_secs(2));
        assert_eq!(end, now + v - MARGIN);
        assert_eq!(signal, now + v - signal_margin(v, Duration::from_secs(2)));
    }

    /// The guard can be held across awaits in a multi-thread runtime and
    /// moved into spawned tasks.
    #[test]
    fn guard_is_send_sync_static() {
        fn check<T: Send + Sync + 'static>() {}
        check::<LockGuard>();
        check::<Loss>();
    }

    /// A guard dropped after its runtime is gone does not panic (nothing
    /// can be released then: its keys expire with the TTL). Negative
    /// control: spawning with `Handle::current()` panicked ("no reactor").
    #[test]
    fn drop_outside_a_runtime_does_not_panic() {
        let r = Redlock::builder()
            .in_memory_nodes(3)
            .ttl(Duration::from_secs(10))
            .build()
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let guard = rt
            .block_on(r.acquire_guard("k", Duration::from_secs(1)))
            .unwrap();
        let work = guard.cancellation();
        drop(rt);
        drop(guard);
        assert!(work.is_cancelled(), "the work is told even so");
    }

    /// Outside a runtime, acquire_guard is refused before any I/O.
    #[test]
    fn acquire_guard_needs_a_runtime() {
        let r = Redlock::builder()
            .in_memory_nodes(3)
            .ttl(Duration::from_secs(10))
            .build()
            .unwrap();
        let err =
            futures::executor::block_on(r.acquire_guard("k", Duration::from_secs(1))).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
    }
}
