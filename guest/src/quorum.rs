//! What each node said, and when the outcome of a round becomes certain.

/// Why a node could not carry out an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeError {
    /// No reply within the host's per-node timeout.
    Timeout,
    /// Could not connect, or the connection broke.
    Connection(String),
    /// The server answered with an error reply (READONLY, OOM, NOPERM, ...).
    Redis(String),
    /// Anything else.
    Other(String),
}

/// A node's reply to one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The operation took effect.
    Done,
    /// The node answered and did nothing (key held / not ours).
    Refused,
    /// The node failed; the operation may or may not have taken effect.
    Failed(NodeError),
    /// A fenced operation took effect, and the key's fence counter on the
    /// node was this value right after it.
    Fence(u64),
}

/// A node's outcome in a round: a reply, or none yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// See [`Reply::Done`].
    Done,
    /// See [`Reply::Refused`].
    Refused,
    /// See [`Reply::Failed`].
    Failed(NodeError),
    /// No reply had arrived when the round was decided.
    NoReply,
}

impl From<Reply> for Outcome {
    fn from(reply: Reply) -> Self {
        match reply {
            Reply::Done | Reply::Fence(_) => Outcome::Done,
            Reply::Refused => Outcome::Refused,
            Reply::Failed(e) => Outcome::Failed(e),
        }
    }
}

/// Redlock's quorum for `n` configured nodes: `n / 2 + 1`, also for even `n`.
/// Always computed from the configured count, never from the nodes that
/// happened to be reachable (redlock-py's bug).
pub const fn quorum(n: u32) -> u32 {
    n / 2 + 1
}

/// Where a round stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A quorum did it: success, whatever the rest say.
    Reached,
    /// Too few nodes are left unanswered for a quorum: failure, whatever they say.
    Impossible,
    /// Still open.
    Open,
}

/// Counts replies of one round over `n` nodes.
#[derive(Debug, Clone, Copy)]
pub struct Tally {
    quorum: u32,
    done: u32,
    unanswered: u32,
}

impl Tally {
    /// A tally with no replies yet.
    pub fn new(n: u32) -> Self {
        Self {
            quorum: quorum(n),
            done: 0,
            unanswered: n,
        }
    }

    /// Records one node's reply. Each node must be recorded at most once.
    pub fn record(&mut self, reply: &Reply) {
        debug_assert!(self.unanswered > 0);
        self.unanswered = self.unanswered.saturating_sub(1);
        if matches!(reply, Reply::Done | Reply::Fence(_)) {
            self.done += 1;
        }
    }

    /// True once every node has answered.
    pub fn all_answered(&self) -> bool {
        self.unanswered == 0
    }

    /// How many more replies the outcome needs, at least, before it can
    /// become certain (0 once it is): `quorum - done` grants to reach it,
    /// or enough other answers that the unanswered nodes could no longer
    /// make a quorum. Nothing can be decided from fewer, so a wait may
    /// sleep until this many arrived.
    pub fn replies_to_decide(&self) -> u32 {
        if self.decision() != Decision::Open {
            return 0;
        }
        let to_reach = self.quorum - self.done;
        let to_rule_out = self.done + self.unanswered + 1 - self.quorum;
        to_reach.min(to_rule_out)
    }

    /// The outcome as far as it is certain now.
    pub fn decision(&self) -> Decision {
        if self.done >= self.quorum {
            Decision::Reached
        } else if self.done + self.unanswered < self.quorum {
            Decision::Impossible
        } else {
            Decision::Open
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_is_a_strict_majority() {
        let expected = [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)];
        for (n, q) in expected {
            assert_eq!(quorum(n), q, "n = {n}");
        }
    }

    /// No outcome is certain after fewer replies than `replies_to_decide`
    /// says, and one can be after exactly that many: checked over every
    /// sequence of grant / other for N = 1..=7.
    #[test]
    fn replies_to_decide_is_exact() {
        for n in 1..=7u32 {
            for code in 0..(1u32 << n) {
                let mut t = Tally::new(n);
                for step in 0..n {
                    let need = t.replies_to_decide();
                    if t.decision() != Decision::Open {
                        assert_eq!(need, 0);
                        break;
                    }
                    assert!(need >= 1, "n {n}: open needs a reply");
                    // However the next `need - 1` replies go, still open.
                    for grants in 0..need {
                        let mut u = t;
                        for k in 0..need - 1 {
                            let r = if k < grants {
                                Reply::Done
                            } else {
                                Reply::Refused
                            };
                            u.record(&r);
                        }
                        assert_eq!(u.decision(), Decision::Open, "n {n} step {step}");
                    }
                    // `need` grants in a row, or `need` refusals, decide.
                    let (mut yes, mut no) = (t, t);
                    for _ in 0..need {
                        yes.record(&Reply::Done);
                        no.record(&Reply::Refused);
                    }
                    assert!(
                        yes.decision() != Decision::Open || no.decision() != Decision::Open,
                        "n {n} step {step}: {need} replies can decide"
                    );
                    let r = if code >> step & 1 == 1 {
                        Reply::Done
                    } else {
                        Reply::Refused
                    };
                    t.record(&r);
                }
            }
        }
    }

    #[test]
    fn decides_as_soon_as_certain() {
        let mut t = Tally::new(5);
        t.record(&Reply::Done);
        t.record(&Reply::Done);
        assert_eq!(t.decision(), Decision::Open);
        t.record(&Reply::Done);
        assert_eq!(
            t.decision(),
            Decision::Reached,
            "3 of 5 is enough; don't wait for 2 more"
        );

        let mut t = Tally::new(5);
        t.record(&Reply::Refused);
        t.record(&Reply::Failed(NodeError::Timeout));
        assert_eq!(t.decision(), Decision::Open);
        t.record(&Reply::Refused);
        assert_eq!(
            t.decision(),
            Decision::Impossible,
            "3 of 5 against: 2 left cannot make 3"
        );
    }
}
