//! When `redlock run` terminates the job: the schedule bounded by the lock's
//! validity, and the small state machine the watchdog runs it with.
//!
//! Whenever the lock is not confirmed by a successful extension, the job's
//! process group gets SIGTERM at `valid_until - grace - MARGIN` and SIGKILL
//! at `valid_until - MARGIN`. Each confirmed extension moves both later.
//! `valid_until` is the core's: TTL minus the time the successful attempt
//! took minus the drift allowance (TTL / 100 + 2 ms), so the moment of
//! SIGKILL is before any other client can take the lock.

use std::time::Duration;

// The arithmetic is the library's, shared with `LockGuard`: one schedule.
pub use redlock_wasm::guard::schedule::{MARGIN, best_validity, deadlines, max_grace};

/// The grace `run` will use for `ttl`: `grace` itself, or clamped to what
/// the validity allows (`Ok((clamped, true))`). A TTL too short for any
/// schedule is refused.
pub fn plan_grace(ttl: Duration, grace: Duration) -> Result<(Duration, bool), String> {
    let validity = best_validity(ttl);
    if !redlock_wasm::guard::schedule::ttl_fits(ttl) {
        return Err(format!(
            "--ttl {} is too short for run: half the lock's validity must exceed the {} ms \
             kill margin; use --ttl 250ms or more",
            humantime::format_duration(ttl),
            MARGIN.as_millis()
        ));
    }
    let max = max_grace(validity);
    Ok(if grace > max {
        (max, true)
    } else {
        (grace, false)
    })
}

/// What the watchdog must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Term,
    Kill,
}

/// The termination schedule as the watchdog runs it, in nanoseconds of
/// `CLOCK_BOOTTIME`.
#[derive(Debug, Clone)]
pub struct Enforcer {
    term_at: u64,
    kill_at: u64,
    grace: u64,
    termed_at: Option<u64>,
    killed: bool,
}

impl Enforcer {
    pub fn new(term_at: u64, kill_at: u64, grace: Duration) -> Self {
        Enforcer {
            term_at: term_at.min(kill_at),
            kill_at,
            grace: u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX),
            termed_at: None,
            killed: false,
        }
    }

    /// A newer confirmation (an extension succeeded). After SIGTERM the job
    /// keeps its grace, bounded by the new SIGKILL time.
    pub fn confirm(&mut self, term_at: u64, kill_at: u64) {
        self.term_at = term_at.min(kill_at);
        self.kill_at = kill_at;
    }

    /// The lock is certainly lost: SIGTERM now, SIGKILL after the grace or
    /// at the scheduled time, whichever is first.
    pub fn terminate_now(&mut self, now: u64) {
        self.term_at = self.term_at.min(now);
    }

    fn kill_time(&self) -> u64 {
        match self.termed_at {
            Some(t) => self.kill_at.min(t.saturating_add(self.grace)),
            None => self.kill_at,
        }
    }

    /// The actions due at `now`, in order; each happens once.
    pub fn due(&mut self, now: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if self.termed_at.is_none() && now >= self.term_at {
            self.termed_at = Some(now);
            out.push(Action::Term);
        }
        if self.termed_at.is_some() && !self.killed && now >= self.kill_time() {
            self.killed = true;
            out.push(Action::Kill);
        }
        out
    }

    /// When to wake up next, if anything is left to do.
    pub fn next_at(&self) -> Option<u64> {
        if self.killed {
            None
        } else if self.termed_at.is_none() {
            Some(self.term_at)
        } else {
            Some(self.kill_time())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// The documented margin and the TTL floor, as the README states them.
    #[test]
    fn documented_margin_and_floor() {
        assert_eq!(MARGIN, Duration::from_millis(100));
        assert!(plan_grace(Duration::from_millis(250), Duration::ZERO).is_ok());
        assert!(plan_grace(Duration::from_millis(200), Duration::ZERO).is_err());
    }

    /// A grace that fits is kept; one that does not is clamped so that
    /// SIGTERM comes no earlier than half the validity.
    #[test]
    fn grace_is_clamped_to_half_the_validity() {
        let ttl = Duration::from_secs(30);
        assert_eq!(
            plan_grace(ttl, Duration::from_secs(5)),
            Ok((Duration::from_secs(5), false))
        );
        let (g, clamped) = plan_grace(Duration::from_secs(1), Duration::from_secs(5)).unwrap();
        assert!(clamped);
        // validity 988 ms: half is 494, less the margin.
        assert_eq!(g, Duration::from_millis(394));
    }

    /// SIGKILL a margin before validity ends, SIGTERM the grace before it.
    #[test]
    fn deadlines_are_before_validity_ends() {
        use std::time::Instant;
        let now = Instant::now();
        let validity = Duration::from_secs(10);
        let (term, kill) = deadlines(now + validity, validity, Duration::from_secs(2));
        assert_eq!(kill, now + validity - MARGIN);
        assert_eq!(term, kill - Duration::from_secs(2));
        // A grace too long for this validity is cut here as well.
        let (term, kill) = deadlines(now + validity, validity, Duration::from_secs(60));
        assert_eq!(kill - term, max_grace(validity));
    }

    /// Unconfirmed: SIGTERM at term_at, SIGKILL at kill_at, each once.
    #[test]
    fn unconfirmed_lock_terms_then_kills() {
        let mut e = Enforcer::new(100 * MS, 200 * MS, Duration::from_millis(500));
        assert_eq!(e.due(99 * MS), []);
        assert_eq!(e.next_at(), Some(100 * MS));
        assert_eq!(e.due(100 * MS), [Action::Term]);
        assert_eq!(e.due(150 * MS), []);
        assert_eq!(e.next_at(), Some(200 * MS), "kill_at bounds the grace");
        assert_eq!(e.due(200 * MS), [Action::Kill]);
        assert_eq!(e.due(300 * MS), []);
        assert_eq!(e.next_at(), None);
    }

    /// A confirmation moves both later; after SIGTERM it cannot extend the
    /// grace, only the bound.
    #[test]
    fn confirmation_moves_the_schedule() {
        let mut e = Enforcer::new(100 * MS, 200 * MS, Duration::from_millis(50));
        e.confirm(1_000 * MS, 1_100 * MS);
        assert_eq!(e.due(200 * MS), []);
        assert_eq!(e.due(1_000 * MS), [Action::Term]);
        e.confirm(5_000 * MS, 5_100 * MS);
        assert_eq!(e.next_at(), Some(1_050 * MS), "grace after SIGTERM");
    }

    /// A certain loss terminates now and kills after the grace.
    #[test]
    fn terminate_now_keeps_the_grace() {
        let mut e = Enforcer::new(10_000 * MS, 10_100 * MS, Duration::from_millis(300));
        e.terminate_now(1_000 * MS);
        assert_eq!(e.due(1_000 * MS), [Action::Term]);
        assert_eq!(e.next_at(), Some(1_300 * MS));
        // Both at once when the time is already past both.
        let mut e = Enforcer::new(100 * MS, 100 * MS, Duration::ZERO);
        assert_eq!(e.due(500 * MS), [Action::Term, Action::Kill]);
    }
}
