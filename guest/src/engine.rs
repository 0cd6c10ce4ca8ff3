//! Acquire, release and extend, over the small [`Nodes`] trait.
//!
//! Every operation fans out to all nodes at once and decides as soon as the
//! outcome is certain (quorum reached, quorum out of reach, or the deadline
//! passed); it never waits for the slowest node.

use crate::fence;
use crate::options::{self, AcquireOptions};
use crate::quorum::{Decision, NodeError, Outcome, Reply, Tally};
use crate::validity::{NS_PER_MS, expires_at_ns, validity_ms};

/// One per-node operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Compare-and-set: granted when the key is free or already holds
    /// `token`.
    SetIfAbsent {
        /// Lock key.
        key: &'a str,
        /// Our token.
        token: &'a str,
        /// TTL in ms.
        ttl_ms: u64,
        /// No earlier request carried `token` (an acquire's first attempt),
        /// so no node can hold it: the host may send a plain
        /// `SET key token NX PX ttl_ms`, which costs a node less than the
        /// script.
        fresh: bool,
    },
    /// Delete `key` if its value is `token`.
    DeleteIfToken {
        /// Lock key.
        key: &'a str,
        /// Our token.
        token: &'a str,
    },
    /// Set a new TTL on `key` if its value is `token`.
    ExtendIfToken {
        /// Lock key.
        key: &'a str,
        /// Our token.
        token: &'a str,
        /// New TTL in ms.
        ttl_ms: u64,
    },
    /// [`Op::SetIfAbsent`] that, when it grants, also raises the key's
    /// fence counter to `max(counter + 1, floor)` and answers
    /// [`Reply::Fence`] with the new value.
    SetIfAbsentFenced {
        /// Lock key.
        key: &'a str,
        /// Our token.
        token: &'a str,
        /// TTL in ms.
        ttl_ms: u64,
    },
    /// Raise the key's fence counter to at least `fence`; answers
    /// [`Reply::Fence`] with the value after it.
    RaiseFence {
        /// Lock key (the node keeps the counter beside it).
        key: &'a str,
        /// The fence to commit.
        fence: u64,
    },
}

impl Op<'_> {
    /// True for the operations whose answer carries a fence counter.
    pub fn fenced(&self) -> bool {
        matches!(self, Op::SetIfAbsentFenced { .. } | Op::RaiseFence { .. })
    }

    /// A reply as this operation may count it: a fenced operation that took
    /// effect must say its counter (a `done` without one is a host that
    /// breaks the contract, counted as failed); an unfenced one has no
    /// counter to give.
    pub(crate) fn accept(&self, reply: Reply) -> Reply {
        match reply {
            Reply::Done if self.fenced() => Reply::Failed(NodeError::Other(
                "answered `done` to a fenced operation: no fence counter".into(),
            )),
            Reply::Fence(_) if !self.fenced() => Reply::Done,
            other => other,
        }
    }
}

/// Why [`Nodes::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// New replies of the round may have arrived.
    Progress,
    /// The instant passed.
    Deadline,
    /// The caller asked to cancel the operation.
    Cancelled,
}

/// What the algorithm needs from its environment: nodes, a monotonic clock,
/// randomness and a way to wait. The component implements it with WASI and
/// the `redis-node` import; the tests with a simulated cluster and clock.
pub trait Nodes {
    /// One operation on its way to several nodes.
    type Round;

    /// Configured node count, N.
    fn count(&self) -> u32;
    /// Monotonic clock, ns.
    fn now_ns(&mut self) -> u64;
    /// Cryptographically secure random bits.
    fn random_u64(&mut self) -> u64;
    /// Sends `op` to each node in `to` (each once) without waiting.
    fn send(&mut self, to: &[u32], op: &Op<'_>) -> Self::Round;
    /// Appends to `into` the replies of `round` that arrived since the last
    /// call, as (node, reply). May refresh what `round` waits on.
    fn take(&mut self, round: &mut Self::Round, into: &mut Vec<(u32, Reply)>);
    /// Blocks until `round` may have new replies, `until_ns` passes, or
    /// cancellation is requested. With a round comes how many new replies
    /// the caller needs before it can decide anything (at least 1): a hint,
    /// the wait may return sooner. With no round, a cancellable sleep.
    /// [`Wake::Cancelled`] is reported once; later waits ignore cancellation
    /// so that the cleanup after it can run.
    fn wait(&mut self, round: Option<(&mut Self::Round, u32)>, until_ns: u64) -> Wake;

    /// A fresh lock token: 128 random bits as 32 lowercase hex digits.
    fn token(&mut self) -> String {
        let (a, b) = (self.random_u64(), self.random_u64());
        format!("{a:016x}{b:016x}")
    }
}

/// A held lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// Key as the caller gave it.
    pub key: String,
    /// Random token stored on the nodes.
    pub token: String,
    /// Validity left when the call returned, ms; always > 0.
    pub validity_ms: u64,
    /// Monotonic instant (ns) at which validity ends.
    pub expires_at_ns: u64,
    /// The fencing token, when acquired with [`AcquireOptions::fence`]:
    /// higher than the fence of every acquire of the key that returned
    /// before this one started.
    pub fence: Option<u64>,
}

/// Node-by-node detail of a failed quorum operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumFailure {
    /// Attempts made.
    pub attempts: u32,
    /// True when the time budget ended the operation.
    pub deadline_passed: bool,
    /// Outcome per node, indexed by node: from the last attempt that heard
    /// from any node (the only attempt for release and extend).
    pub nodes: Vec<Outcome>,
}

/// Every way an operation can fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No time budget was given.
    DeadlineNeeded,
    /// No quorum granted the lock within the budget.
    UnableToAcquire(QuorumFailure),
    /// Fewer than a quorum confirmed the delete.
    UnableToRelease(QuorumFailure),
    /// Rejected before any I/O.
    InvalidArgument(String),
    /// Extend could not confirm the lock on a quorum in time.
    LockLost(QuorumFailure),
    /// The caller cancelled.
    Cancelled,
}

/// How long a round waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until<'a> {
    /// Until the quorum outcome is certain.
    Decided,
    /// Until every node marked `true` answered (cleanup: a delete goes to
    /// every node, but only responsive ones are waited for).
    Answered(&'a [bool]),
}

/// How a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Reached,
    Impossible,
    DeadlinePassed,
    Cancelled,
}

struct Round {
    end: End,
    outcomes: Vec<Outcome>,
    /// Per node, the fence counter it reported (fenced operations only).
    fences: Vec<Option<u64>>,
}

/// Sends `op` to every node at once and collects replies until `until`
/// says stop or `until_ns` passes.
fn round<N: Nodes>(nodes: &mut N, op: &Op<'_>, until_ns: u64, until: Until<'_>) -> Round {
    round_from(nodes, op, until_ns, until, &[])
}

/// What a round has heard so far.
struct Heard {
    tally: Tally,
    outcomes: Vec<Outcome>,
    /// Per node: asked, and not answered yet.
    waiting: Vec<bool>,
    /// Per node, the fence counter it reported (fenced operations only).
    fences: Vec<Option<u64>>,
}

impl Heard {
    /// Counts the replies in `arrived` (emptying it). Only a node asked and
    /// not yet answered counts, once: a host's list is not trusted.
    fn absorb(&mut self, op: &Op<'_>, arrived: &mut Vec<(u32, Reply)>) {
        for (i, reply) in arrived.drain(..) {
            let Some(w) = self.waiting.get_mut(i as usize).filter(|w| **w) else {
                continue;
            };
            *w = false;
            let reply = op.accept(reply);
            self.tally.record(&reply);
            if let Reply::Fence(v) = reply {
                self.fences[i as usize] = Some(v);
            }
            self.outcomes[i as usize] = reply.into();
        }
    }

    /// Nodes marked in `wanted` that have not answered yet.
    fn awaited(&self, wanted: &[bool]) -> u32 {
        (self.waiting.iter().zip(wanted))
            .filter(|&(&w, &want)| w && want)
            .count() as u32
    }

    fn end(self, end: End) -> Round {
        Round {
            end,
            outcomes: self.outcomes,
            fences: self.fences,
        }
    }
}

/// [`round`] in which the nodes marked in `done` already did it: they are
/// not asked again and count as `done` from the start (nodes past the end
/// of `done` are asked).
fn round_from<N: Nodes>(
    nodes: &mut N,
    op: &Op<'_>,
    until_ns: u64,
    until: Until<'_>,
    done: &[bool],
) -> Round {
    let n = nodes.count();
    let mut heard = Heard {
        tally: Tally::new(n),
        outcomes: vec![Outcome::NoReply; n as usize],
        waiting: vec![false; n as usize],
        fences: vec![None; n as usize],
    };
    let mut to = Vec::with_capacity(n as usize);
    for i in 0..n {
        if done.get(i as usize).copied().unwrap_or(false) {
            heard.tally.record(&Reply::Done);
            heard.outcomes[i as usize] = Outcome::Done;
        } else {
            heard.waiting[i as usize] = true;
            to.push(i);
        }
    }
    let mut fan_out = (!to.is_empty()).then(|| nodes.send(&to, op));
    let mut arrived = Vec::with_capacity(n as usize);
    loop {
        if let Some(f) = fan_out.as_mut() {
            nodes.take(f, &mut arrived);
        }
        heard.absorb(op, &mut arrived);
        let decided = match (until, heard.tally.decision()) {
            (Until::Decided, Decision::Reached) => Some(End::Reached),
            (Until::Decided, Decision::Impossible) => Some(End::Impossible),
            (Until::Answered(wanted), d) if heard.awaited(wanted) == 0 => Some(match d {
                Decision::Reached => End::Reached,
                _ => End::Impossible,
            }),
            _ => None,
        };
        if let Some(end) = decided {
            return heard.end(end);
        }
        // Nothing can be decided before this many more replies arrived.
        let need = match until {
            Until::Decided => heard.tally.replies_to_decide(),
            Until::Answered(wanted) => heard.awaited(wanted),
        };
        let end = match nodes.wait(fan_out.as_mut().map(|f| (f, need.max(1))), until_ns) {
            Wake::Progress => continue,
            Wake::Deadline => End::DeadlinePassed,
            Wake::Cancelled => End::Cancelled,
        };
        // Fewer replies than `need` may have arrived meanwhile: they decide
        // nothing, but the outcomes report them.
        if let Some(f) = fan_out.as_mut() {
            nodes.take(f, &mut arrived);
        }
        heard.absorb(op, &mut arrived);
        return heard.end(end);
    }
}

/// How committing a fence ended.
struct Commit {
    end: End,
    fence: u64,
    /// The commit round, when one was needed.
    round: Option<Round>,
}

/// After a quorum granted a fenced attempt: its fence, committed. The fence
/// is the highest counter the granting nodes reported; when fewer than a
/// quorum reported it, one more round raises it on every other node until
/// a quorum holds it, within `until_ns` (docs/FENCING.md).
fn commit_fence<N: Nodes>(nodes: &mut N, key: &str, granted: &Round, until_ns: u64) -> Commit {
    // Every grant of a fenced round carries its counter (`Op::accept`), so
    // a reached round has one; `Impossible` is never taken in practice.
    let Some(fence) = fence::of(&granted.fences) else {
        return Commit {
            end: End::Impossible,
            fence: 0,
            round: None,
        };
    };
    let holders = fence::holders(&granted.fences, fence);
    if fence::committed(&holders) {
        return Commit {
            end: End::Reached,
            fence,
            round: None,
        };
    }
    let raise = Op::RaiseFence { key, fence };
    let r = round_from(nodes, &raise, until_ns, Until::Decided, &holders);
    Commit {
        end: r.end,
        fence,
        round: Some(r),
    }
}

/// Deletes `key` wherever it holds `token`. Used after a failed or
/// cancelled acquire: a node that seemed to fail may still have executed
/// the SET, so every node is asked. Waits, until `until_ns`, only for the
/// nodes that answered the SET (`done` or `refused`): a slow, paused or
/// failing node must not cost a losing attempt its timeout. The host sends
/// each node's commands in order on one connection, so a delete not waited
/// for still lands after its SET and finishes in the background; a retry's
/// SET that finds the token still there counts as granted
/// (`set-if-absent` is a compare-and-set). Returns true when a cancellation
/// arrived meanwhile (it is reported only once, so the caller must act on
/// it).
fn clean_up<N: Nodes>(
    nodes: &mut N,
    key: &str,
    token: &str,
    until_ns: u64,
    set_outcomes: &[Outcome],
) -> bool {
    let answered: Vec<bool> = set_outcomes
        .iter()
        .map(|o| matches!(o, Outcome::Done | Outcome::Refused))
        .collect();
    let r = round(
        nodes,
        &Op::DeleteIfToken { key, token },
        until_ns,
        Until::Answered(&answered),
    );
    r.end == End::Cancelled
}

fn deadline_after<N: Nodes>(nodes: &mut N, budget_ms: u64) -> u64 {
    nodes
        .now_ns()
        .saturating_add(budget_ms.saturating_mul(NS_PER_MS))
}

/// Takes the lock on `key`. See the WIT `redlock.acquire` for the contract.
pub fn acquire<N: Nodes>(
    nodes: &mut N,
    key: &str,
    opts: &AcquireOptions,
    budget_ms: Option<u64>,
) -> Result<Lock, Error> {
    let budget_ms = options::check_budget(budget_ms)?;
    options::check_key(key)?;
    options::check_ttl(opts.ttl_ms)?;
    options::check_nodes(nodes.count())?;
    let retry = opts.retry();
    let deadline = deadline_after(nodes, budget_ms);
    let token = nodes.token();
    let ttl_ms = opts.ttl_ms;

    let mut attempts = 0u32;
    // The outcomes to report: from the last attempt that heard from any
    // node, so a final attempt cut short by the deadline does not hide why
    // the earlier ones failed.
    let mut reported: Option<Vec<Outcome>> = None;
    loop {
        attempts += 1;
        let start = nodes.now_ns();
        let expires_at_ns = expires_at_ns(start, ttl_ms);
        // Past `expires_at` no validity could be left, so stop waiting there.
        let until_ns = deadline.min(expires_at_ns);
        let set = if opts.fence {
            Op::SetIfAbsentFenced {
                key,
                token: &token,
                ttl_ms,
            }
        } else {
            Op::SetIfAbsent {
                key,
                token: &token,
                ttl_ms,
                // The token is new with this call: only a retry can find it.
                fresh: attempts == 1,
            }
        };
        let r = round(nodes, &set, until_ns, Until::Decided);
        // A fenced attempt is granted once its fence is committed too.
        let commit =
            (r.end == End::Reached && opts.fence).then(|| commit_fence(nodes, key, &r, until_ns));
        let (end, fence) = match &commit {
            Some(c) => (c.end, Some(c.fence)),
            None => (r.end, None),
        };
        let now = nodes.now_ns();
        match end {
            End::Reached => {
                if let Some(validity_ms) = validity_ms(ttl_ms, now.saturating_sub(start)) {
                    return Ok(Lock {
                        key: key.to_owned(),
                        token,
                        validity_ms,
                        expires_at_ns,
                        fence,
                    });
                }
            }
            End::Cancelled => {
                let soon = now.saturating_add(options::CANCEL_CLEANUP_MS * NS_PER_MS);
                clean_up(nodes, key, &token, deadline.min(soon), &r.outcomes);
                return Err(Error::Cancelled);
            }
            End::Impossible | End::DeadlinePassed => {}
        }
        if clean_up(nodes, key, &token, deadline, &r.outcomes) {
            // Cancelled while cleaning up: finish the cleanup, briefly.
            let soon = nodes
                .now_ns()
                .saturating_add(options::CANCEL_CLEANUP_MS * NS_PER_MS);
            clean_up(nodes, key, &token, deadline.min(soon), &r.outcomes);
            return Err(Error::Cancelled);
        }
        // A commit round that failed tells why the attempt failed.
        let outcomes = match commit.and_then(|c| c.round) {
            Some(raised) => raised.outcomes,
            None => r.outcomes,
        };
        if reported.is_none() || outcomes.iter().any(|o| *o != Outcome::NoReply) {
            reported = Some(outcomes);
        }

        let now = nodes.now_ns();
        let pause_ms = u64::from(retry.delay_ms) + jitter(nodes, retry.jitter_ms);
        let wake_at = now.saturating_add(pause_ms * NS_PER_MS);
        let out_of_time = now >= deadline || wake_at >= deadline;
        if attempts > retry.count || out_of_time {
            return Err(Error::UnableToAcquire(QuorumFailure {
                attempts,
                deadline_passed: out_of_time,
                nodes: reported.unwrap_or_default(),
            }));
        }
        if nodes.wait(None, wake_at) == Wake::Cancelled {
            return Err(Error::Cancelled);
        }
    }
}

fn jitter<N: Nodes>(nodes: &mut N, jitter_ms: u32) -> u64 {
    if jitter_ms == 0 {
        0
    } else {
        nodes.random_u64() % (u64::from(jitter_ms) + 1)
    }
}

/// Deletes the lock where it still holds our token; succeeds on a quorum.
pub fn release<N: Nodes>(
    nodes: &mut N,
    key: &str,
    token: &str,
    budget_ms: Option<u64>,
) -> Result<(), Error> {
    let budget_ms = options::check_budget(budget_ms)?;
    options::check_key(key)?;
    options::check_token(token)?;
    options::check_nodes(nodes.count())?;
    let deadline = deadline_after(nodes, budget_ms);
    let r = round(
        nodes,
        &Op::DeleteIfToken { key, token },
        deadline,
        Until::Decided,
    );
    match r.end {
        End::Reached => Ok(()),
        End::Cancelled => Err(Error::Cancelled),
        End::Impossible | End::DeadlinePassed => Err(Error::UnableToRelease(QuorumFailure {
            attempts: 1,
            deadline_passed: r.end == End::DeadlinePassed,
            nodes: r.outcomes,
        })),
    }
}

/// Sets a new TTL where the key still holds our token; succeeds on a quorum
/// before the lock's validity ends. Never deletes.
pub fn extend<N: Nodes>(
    nodes: &mut N,
    lock: &Lock,
    ttl_ms: u64,
    budget_ms: Option<u64>,
) -> Result<Lock, Error> {
    let budget_ms = options::check_budget(budget_ms)?;
    options::check_key(&lock.key)?;
    options::check_token(&lock.token)?;
    options::check_ttl(ttl_ms)?;
    options::check_nodes(nodes.count())?;
    let start = nodes.now_ns();
    let lost = |attempts, deadline_passed, nodes| {
        Err(Error::LockLost(QuorumFailure {
            attempts,
            deadline_passed,
            nodes,
        }))
    };
    if start >= lock.expires_at_ns {
        // Validity is over: another client may hold the key now. Reporting
        // the loss is the only safe answer, and it needs no I/O.
        return lost(0, false, vec![Outcome::NoReply; nodes.count() as usize]);
    }
    let deadline = deadline_after(nodes, budget_ms);
    let until_ns = deadline.min(lock.expires_at_ns);
    let op = Op::ExtendIfToken {
        key: &lock.key,
        token: &lock.token,
        ttl_ms,
    };
    let r = round(nodes, &op, until_ns, Until::Decided);
    let now = nodes.now_ns();
    match r.end {
        End::Reached => match validity_ms(ttl_ms, now.saturating_sub(start)) {
            Some(validity_ms) if now < lock.expires_at_ns => Ok(Lock {
                key: lock.key.clone(),
                token: lock.token.clone(),
                validity_ms,
                expires_at_ns: expires_at_ns(start, ttl_ms),
                // The fence belongs to the acquire: no successor can have
                // taken the lock while it stayed valid.
                fence: lock.fence,
            }),
            _ => lost(1, now >= deadline, r.outcomes),
        },
        End::Cancelled => Err(Error::Cancelled),
        End::Impossible | End::DeadlinePassed => lost(1, now >= deadline, r.outcomes),
    }
}

#[cfg(test)]
mod tests;
