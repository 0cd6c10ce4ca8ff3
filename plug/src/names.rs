//! What a node given by name connects to: its cached DNS answer.
//!
//! A lookup never blocks a request. The first request to a name waits for
//! the answer like it waits for a connect, within its own node timeout; a
//! lookup that outlives that request keeps going (up to
//! [`LOOKUP_TIMEOUT_NS`]) and answers the requests after it. An answer is
//! used for [`NAME_REFRESH_NS`] and then refreshed in the background, and
//! sooner after a connect to it failed; while a refresh runs, and if it
//! fails, the last good address stays in use. A failure with no address to
//! fall back on fails requests at once for [`NAME_FAILURE_TTL_NS`].

use crate::defaults::{LOOKUP_TIMEOUT_NS, NAME_FAILURE_TTL_NS, NAME_RECHECK_NS, NAME_REFRESH_NS};

/// Where a connect should go now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<A> {
    /// This address.
    Addr(A),
    /// Nowhere yet: a lookup is running.
    Wait,
    /// Nowhere: the last lookup failed, for this reason.
    Fail(String),
}

/// The cache of one name's answer (generic over the address type, so that
/// it is tested natively).
#[derive(Debug, Clone)]
pub struct NameCache<A> {
    /// The last good answer.
    addr: Option<A>,
    /// Why the last lookup failed, if it did.
    failure: Option<String>,
    /// When the last lookup ended, monotonic ns.
    checked_at: Option<u64>,
    /// When the running lookup started.
    running_since: Option<u64>,
    /// A connect to `addr` failed: look again soon.
    recheck: bool,
}

impl<A> Default for NameCache<A> {
    fn default() -> Self {
        NameCache {
            addr: None,
            failure: None,
            checked_at: None,
            running_since: None,
            recheck: false,
        }
    }
}

impl<A: Clone> NameCache<A> {
    /// Where a connect made at `now` should go.
    pub fn target(&self) -> Target<A> {
        match (&self.addr, &self.failure) {
            (Some(a), _) => Target::Addr(a.clone()),
            _ if self.running_since.is_some() => Target::Wait,
            (None, Some(why)) => Target::Fail(why.clone()),
            (None, None) => Target::Wait,
        }
    }

    /// True when a lookup should start at `now`.
    pub fn lookup_due(&self, now: u64) -> bool {
        if self.running_since.is_some() {
            return false;
        }
        let Some(at) = self.checked_at else {
            return true;
        };
        let age = now.saturating_sub(at);
        if self.failure.is_some() {
            age >= NAME_FAILURE_TTL_NS
        } else if self.recheck {
            age >= NAME_RECHECK_NS
        } else {
            age >= NAME_REFRESH_NS
        }
    }

    /// A lookup started at `now`.
    pub fn started(&mut self, now: u64) {
        self.running_since = Some(now);
    }

    /// True when the running lookup has taken too long at `now`.
    pub fn expired(&self, now: u64) -> bool {
        self.running_since
            .is_some_and(|since| now.saturating_sub(since) >= LOOKUP_TIMEOUT_NS)
    }

    /// The lookup answered `addr` at `now`.
    pub fn answered(&mut self, addr: A, now: u64) {
        self.addr = Some(addr);
        self.failure = None;
        self.checked_at = Some(now);
        self.running_since = None;
        self.recheck = false;
    }

    /// The lookup failed at `now`; a previous address stays in use.
    pub fn failed(&mut self, why: String, now: u64) {
        self.failure = Some(why);
        self.checked_at = Some(now);
        self.running_since = None;
        self.recheck = false;
    }

    /// A connect to the cached address failed: the name may point
    /// elsewhere now.
    pub fn connect_failed(&mut self) {
        self.recheck = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_first_request_waits_for_the_first_lookup() {
        let mut c = NameCache::<u8>::default();
        assert!(c.lookup_due(0));
        assert_eq!(c.target(), Target::Wait);
        c.started(0);
        assert!(!c.lookup_due(1), "one lookup at a time");
        assert_eq!(c.target(), Target::Wait);
        c.answered(7, 5);
        assert_eq!(c.target(), Target::Addr(7));
        assert!(!c.lookup_due(5 + NAME_REFRESH_NS - 1));
    }

    #[test]
    fn refreshes_in_the_background_and_keeps_the_address_meanwhile() {
        let mut c = NameCache::<u8>::default();
        c.started(0);
        c.answered(7, 0);
        assert!(c.lookup_due(NAME_REFRESH_NS));
        c.started(NAME_REFRESH_NS);
        assert_eq!(c.target(), Target::Addr(7), "used while refreshing");
        c.failed("timed out".into(), NAME_REFRESH_NS + S);
        assert_eq!(c.target(), Target::Addr(7), "kept when the refresh fails");
        assert!(!c.lookup_due(NAME_REFRESH_NS + S + NAME_FAILURE_TTL_NS - 1));
        assert!(c.lookup_due(NAME_REFRESH_NS + S + NAME_FAILURE_TTL_NS));
        c.started(40 * S);
        c.answered(8, 40 * S);
        assert_eq!(c.target(), Target::Addr(8), "a new answer replaces it");
    }

    #[test]
    fn a_failure_is_remembered_briefly() {
        let mut c = NameCache::<u8>::default();
        c.started(0);
        assert!(!c.expired(LOOKUP_TIMEOUT_NS - 1) && c.expired(LOOKUP_TIMEOUT_NS));
        c.failed("timed out".into(), LOOKUP_TIMEOUT_NS);
        assert_eq!(c.target(), Target::Fail("timed out".into()));
        let later = LOOKUP_TIMEOUT_NS + NAME_FAILURE_TTL_NS;
        assert!(!c.lookup_due(later - 1));
        assert!(c.lookup_due(later));
        c.started(later);
        assert_eq!(c.target(), Target::Wait, "asking again: wait for it");
    }

    #[test]
    fn a_failed_connect_asks_again_soon_but_not_for_every_request() {
        let mut c = NameCache::<u8>::default();
        c.started(0);
        c.answered(7, 0);
        c.connect_failed();
        assert!(!c.lookup_due(NAME_RECHECK_NS - 1));
        assert!(c.lookup_due(NAME_RECHECK_NS));
        c.started(NAME_RECHECK_NS);
        c.answered(9, NAME_RECHECK_NS);
        assert_eq!(c.target(), Target::Addr(9));
        assert!(
            !c.lookup_due(2 * NAME_RECHECK_NS),
            "back to the slow refresh"
        );
    }
}
