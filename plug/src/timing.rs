//! When a pending request is looked at again, and when a connection or a
//! failure is too old to trust.
//!
//! Why the plug hands out clock pollables only: WASI 0.2 has no pollable
//! that means "this socket has data *or* this instant has passed", and a
//! component cannot make pollables of its own. A fan-out whose
//! pollable were its socket's input stream would never wake the caller for
//! a node that stays silent, so no per-node timeout could fire; one whose
//! pollable were a clock at its deadline would hide a prompt reply until
//! the deadline. So the plug hands out a clock at the next instant it wants
//! to look: at once while the request is young (a reply from a nearby node
//! comes within half a millisecond), then at gaps of a quarter of the
//! request's age, and at the request's deadline exactly, when the reply
//! becomes `failed(timeout)` (for 50 ms: 20 timed looks, at 0.75, 1, 1.25,
//! 1.56 ... 35.5, 44.4 and 50 ms). Each look makes every step the socket
//! allows without blocking. The caller's own deadline stays in its poll
//! list, and these pollables are not ready before their instant, so no wait
//! outlasts the caller's budget by more than the eager window.
//!
//! The price, against a pollable that wakes on the reply itself: a reply
//! that misses the eager window is noticed at the next look (at most a
//! quarter of its age late, plus a timer tick), and the eager looks keep a
//! core busy for up to half a millisecond per request. A WIT in which the
//! caller also waits on one clock of the plug's (for the earliest deadline)
//! would let every fan-out hand out its sockets' pollables instead.

use crate::defaults::{CONNECT_STALE_NS, DOWN_MEMORY_NS, EAGER_NS, MIN_STEP_NS, REPLY_STALE_NS};

/// When to look at a pending request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// At once (an already elapsed clock).
    Now,
    /// At this monotonic instant, ns.
    At(u64),
}

/// The next look at a request made at `sent_at` whose reply is due by
/// `deadline`, asked at `now` (all monotonic ns). Never later than the
/// deadline, and at once from the deadline on.
pub fn next_check(sent_at: u64, deadline: u64, now: u64) -> Check {
    let age = now.saturating_sub(sent_at);
    if now >= deadline || age < EAGER_NS {
        return Check::Now;
    }
    let step = (age / 4).max(MIN_STEP_NS);
    Check::At(now.saturating_add(step).min(deadline))
}

/// The per-node timeout and the limits derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Per-node timeout, ns.
    pub node_timeout_ns: u64,
}

impl Timing {
    /// From the per-node timeout in ms.
    pub fn from_ms(ms: u64) -> Self {
        Timing {
            node_timeout_ns: ms.saturating_mul(1_000_000),
        }
    }

    /// When a request made at `now` is due.
    pub fn deadline(&self, now: u64) -> u64 {
        now.saturating_add(self.node_timeout_ns)
    }

    /// True when a connection still connecting after `age` ns should be
    /// replaced.
    pub fn connect_stale(&self, age: u64) -> bool {
        age > CONNECT_STALE_NS.max(self.node_timeout_ns)
    }

    /// True when a connection whose oldest request has waited `age` ns
    /// should be replaced.
    pub fn reply_stale(&self, age: u64) -> bool {
        age > REPLY_STALE_NS.max(self.node_timeout_ns.saturating_mul(2))
    }

    /// True while a connect failure `age` ns old still decides a request.
    pub fn down_fresh(&self, age: u64) -> bool {
        age < DOWN_MEMORY_NS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::defaults::NODE_TIMEOUT_MS;

    const MS: u64 = 1_000_000;

    /// The instants at which a request made at 0 is looked at, until its
    /// deadline; the caller looks at each one as soon as it is told to.
    fn looks(deadline: u64) -> Vec<u64> {
        let mut now = 0;
        let mut at = Vec::new();
        while now < deadline {
            now = match next_check(0, deadline, now) {
                // An eager look costs a little time: say 10 us.
                Check::Now => now + 10_000,
                Check::At(t) => {
                    assert!(t > now, "a look in the past at {now}");
                    t
                }
            };
            at.push(now);
        }
        at
    }

    #[test]
    fn looks_at_once_while_young_then_at_growing_gaps_and_at_the_deadline() {
        assert_eq!(next_check(0, 50 * MS, 0), Check::Now);
        assert_eq!(next_check(0, 50 * MS, EAGER_NS - 1), Check::Now);
        assert_eq!(
            next_check(0, 50 * MS, EAGER_NS),
            Check::At(EAGER_NS + MIN_STEP_NS)
        );
        assert_eq!(next_check(0, 50 * MS, 2 * MS), Check::At(2 * MS + MS / 2));
        assert_eq!(next_check(0, 50 * MS, 20 * MS), Check::At(25 * MS));
        assert_eq!(
            next_check(0, 50 * MS, 45 * MS),
            Check::At(50 * MS),
            "capped"
        );
        assert_eq!(next_check(0, 50 * MS, 50 * MS), Check::Now, "due: at once");
        assert_eq!(next_check(0, 50 * MS, 70 * MS), Check::Now);
        // A deadline inside the eager window: looked at until it passes.
        assert_eq!(next_check(0, MS / 2, MS / 4), Check::Now);
    }

    #[test]
    fn the_last_look_is_the_deadline_and_there_are_few() {
        for timeout_ms in [1, 2, 5, NODE_TIMEOUT_MS, 500, 60_000] {
            let deadline = timeout_ms * MS;
            let at = looks(deadline);
            assert_eq!(*at.last().unwrap(), deadline, "{timeout_ms} ms");
            let timed: Vec<_> = at.iter().filter(|&&t| t > EAGER_NS).collect();
            // Gaps grow by a quarter: about ln(T / 1 ms) / ln(1.25) timed looks.
            let bound = 4.0 + (timeout_ms as f64).ln() / 1.25f64.ln();
            assert!(
                (timed.len() as f64) <= bound,
                "{timeout_ms} ms: {} timed looks",
                timed.len()
            );
        }
        let timed = looks(NODE_TIMEOUT_MS * MS)
            .iter()
            .filter(|&&t| t > EAGER_NS)
            .count();
        assert!(timed <= 22, "{timed} timed looks in 50 ms");
    }

    #[test]
    fn a_reply_is_noticed_at_most_a_quarter_of_its_age_late() {
        let deadline = 500 * MS;
        let at = looks(deadline);
        for arrival in (0..deadline).step_by(97_001) {
            let seen = *at.iter().find(|&&t| t >= arrival).unwrap();
            let late = seen - arrival;
            assert!(
                late <= (arrival / 4).max(MIN_STEP_NS) + MIN_STEP_NS,
                "arrived at {arrival}, seen at {seen}"
            );
        }
    }

    #[test]
    fn limits_follow_the_timeout() {
        let t = Timing::from_ms(NODE_TIMEOUT_MS);
        assert_eq!(t.deadline(7), 7 + 50 * MS);
        assert!(!t.connect_stale(CONNECT_STALE_NS) && t.connect_stale(CONNECT_STALE_NS + 1));
        assert!(!t.reply_stale(REPLY_STALE_NS) && t.reply_stale(REPLY_STALE_NS + 1));
        // A long timeout is never cut short by a staleness limit.
        let slow = Timing::from_ms(5_000);
        assert!(!slow.connect_stale(5_000 * MS) && !slow.reply_stale(10_000 * MS));
        assert!(slow.reply_stale(10_000 * MS + 1));
        assert!(t.down_fresh(DOWN_MEMORY_NS - 1) && !t.down_fresh(DOWN_MEMORY_NS));
    }
}
