//! Typed errors: the Go library's three cases plus the others, each naming
//! the nodes and what they said.

use std::fmt;

use crate::addr::NodeAddr;

/// Everything that can go wrong. Go to Rust:
///
/// | redlock-go                      | redlock-wasm                 |
/// |---------------------------------|------------------------------|
/// | `ErrContextWithDeadlineNeeded`  | [`Error::DeadlineNeeded`]    |
/// | `ErrUnableToAcquireLock`        | [`Error::UnableToAcquire`]   |
/// | `ErrUnableToReleaseLock`        | [`Error::UnableToRelease`]   |
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No deadline was given (Go: `ErrContextWithDeadlineNeeded`).
    #[error("a deadline is needed: pass one to bound the operation")]
    DeadlineNeeded,
    /// No quorum granted the lock in time (Go: `ErrUnableToAcquireLock`).
    #[error("unable to acquire lock: {0}")]
    UnableToAcquire(QuorumFailure),
    /// Fewer than a quorum confirmed the delete (Go: `ErrUnableToReleaseLock`).
    #[error("unable to release lock: {0}")]
    UnableToRelease(QuorumFailure),
    /// An argument was refused before any I/O.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Extend could not confirm the lock on a quorum before its validity
    /// ended. The lock must be treated as lost; nothing was deleted.
    #[error("lock lost: {0}")]
    LockLost(QuorumFailure),
    /// The operation was cancelled; keys it set were asked to be deleted.
    #[error("cancelled")]
    Cancelled,
    /// Bad configuration: node URLs, duplicates, limits. Found before any I/O.
    #[error("configuration: {0}")]
    Config(String),
    /// The lock core could not run or was stopped by a sandbox limit (trap,
    /// memory cap, time cap). The next operation runs on a fresh instance.
    #[error("lock core failed: {0}")]
    Core(String),
}

/// Node-by-node detail of a failed quorum operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuorumFailure {
    /// Attempts made (1 for release and extend; 0 when extend found the
    /// validity already over).
    pub attempts: u32,
    /// True when the time budget ended the operation.
    pub deadline_passed: bool,
    /// The quorum that was needed: N / 2 + 1.
    pub quorum: usize,
    /// Every node's outcome in the last attempt, in node order.
    pub nodes: Vec<NodeOutcome>,
}

/// What one node said.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeOutcome {
    /// Index into the configured node list.
    pub index: usize,
    /// The node's address (never its password).
    pub node: String,
    /// What it said.
    pub outcome: Outcome,
}

/// One node's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The node performed the operation.
    Done,
    /// The node refused: held by another token, or missing / not ours.
    Refused,
    /// The node failed; it may or may not have performed the operation.
    Failed(NodeError),
    /// No reply had arrived when the outcome was decided.
    NoReply,
}

/// Why a node failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeError {
    /// No reply within the per-node timeout.
    Timeout,
    /// Could not connect, or the connection broke.
    Connection(String),
    /// The server answered with an error (`READONLY ...`, `NOPERM ...`, ...).
    Redis(String),
    /// Anything else.
    Other(String),
}

impl QuorumFailure {
    /// How many nodes did it.
    pub fn done(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Done))
    }

    /// How many refused.
    pub fn refused(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Refused))
    }

    /// How many failed or did not reply.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_) | Outcome::NoReply))
    }

    /// True when the operation certainly failed for good: so many nodes
    /// refused that no quorum can hold the key for this token (refused >=
    /// N - quorum + 1). Failures and missing replies may be transient.
    pub fn certainly_refused(&self) -> bool {
        self.refused() + self.quorum > self.nodes.len()
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.nodes.iter().filter(|n| f(&n.outcome)).count()
    }

    pub(crate) fn describe(
        attempts: u32,
        deadline_passed: bool,
        nodes: &[NodeAddr],
        outcomes: impl IntoIterator<Item = (usize, Outcome)>,
    ) -> Self {
        let nodes_out = outcomes
            .into_iter()
            .map(|(index, outcome)| NodeOutcome {
                index,
                node: nodes
                    .get(index)
                    .map_or_else(|| format!("#{index}"), |a| a.to_string()),
                outcome,
            })
            .collect();
        QuorumFailure {
            attempts,
            deadline_passed,
            quorum: nodes.len() / 2 + 1,
            nodes: nodes_out,
        }
    }
}

impl fmt::Display for QuorumFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} nodes did it, {} needed",
            self.done(),
            self.nodes.len(),
            self.quorum
        )?;
        if self.deadline_passed {
            f.write_str(", deadline passed")?;
        }
        if self.attempts != 1 {
            write!(f, ", after {} attempts", self.attempts)?;
        }
        f.write_str(" (")?;
        for (i, n) in self.nodes.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", n.node, n.outcome)?;
        }
        f.write_str(")")
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Done => f.write_str("ok"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Failed(e) => write!(f, "{e}"),
            Outcome::NoReply => f.write_str("no reply yet"),
        }
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeError::Timeout => f.write_str("timed out"),
            NodeError::Connection(s) => write!(f, "connection: {s}"),
            NodeError::Redis(s) => write!(f, "redis error: {s}"),
            NodeError::Other(s) => write!(f, "error: {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(outcomes: &[Outcome]) -> QuorumFailure {
        let addrs: Vec<NodeAddr> = (0..outcomes.len())
            .map(|i| NodeAddr::parse(&format!("redis://127.0.0.1:{}", 7000 + i)).unwrap())
            .collect();
        QuorumFailure::describe(1, false, &addrs, outcomes.iter().cloned().enumerate())
    }

    /// A refusal is certain at N - quorum + 1 refusals: 3 of 5, 2 of 4, 2 of
    /// 3; one fewer may still be a timeout away from a quorum. (`redlock
    /// run` and the guard terminate on it; round one waited for a quorum of
    /// refusals.)
    #[test]
    fn certainly_refused_at_n_minus_quorum_plus_one() {
        use Outcome::{Done, NoReply, Refused};
        let timeout = || Outcome::Failed(NodeError::Timeout);
        assert!(failure(&[Refused, Refused, Refused, NoReply, NoReply]).certainly_refused());
        assert!(!failure(&[Refused, Refused, Done, timeout(), NoReply]).certainly_refused());
        assert!(failure(&[Refused, Refused, NoReply, NoReply]).certainly_refused());
        assert!(!failure(&[Refused, Done, NoReply, NoReply]).certainly_refused());
        assert!(failure(&[Refused, Refused, NoReply]).certainly_refused());
        assert!(!failure(&[Refused, timeout(), NoReply]).certainly_refused());
    }
}
