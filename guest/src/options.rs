//! Defaults and limits, each with its reason, and the checks that reject bad
//! input before any I/O.

use crate::engine::Error;
use crate::validity::drift_ms;

/// Longest key accepted, in bytes. Lock names are identifiers, not data; a
/// cap keeps a typo (a whole document passed as a key) from reaching Redis.
pub const MAX_KEY_BYTES: usize = 1024;

/// Longest token accepted on release / extend, in bytes. Our tokens are 32;
/// other Redlock clients use up to ~40. Anything longer is not a token.
pub const MAX_TOKEN_BYTES: usize = 256;

/// Longest TTL accepted: 24 hours. A lock meant to outlive a day is a lease
/// that should be extended, and a huge TTL is usually a unit mistake
/// (seconds passed as milliseconds).
pub const MAX_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// Further attempts after the first when acquire does not win a quorum. The
/// time budget usually ends retries first. (redsync tries 32 times.)
pub const DEFAULT_RETRY_COUNT: u32 = 32;

/// Fixed part of the pause between attempts. Short enough that a lock freed
/// by its holder is taken again quickly.
pub const DEFAULT_RETRY_DELAY_MS: u32 = 50;

/// Random extra pause, uniform in `0..=jitter`, so contenders that collided
/// once do not collide again (redsync: 50-250 ms; ours: 50-200 ms).
pub const DEFAULT_RETRY_JITTER_MS: u32 = 150;

/// After a cancelled acquire, how long to wait for the replies to the
/// deletes that clean up its keys. The deletes are sent either way; this
/// only bounds how long a cancelled call can take to return.
pub const CANCEL_CLEANUP_MS: u64 = 100;

/// Acquire options as the caller gave them; `None` means the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcquireOptions {
    /// Lock TTL in Redis, ms.
    pub ttl_ms: u64,
    /// See [`DEFAULT_RETRY_COUNT`].
    pub retry_count: Option<u32>,
    /// See [`DEFAULT_RETRY_DELAY_MS`].
    pub retry_delay_ms: Option<u32>,
    /// See [`DEFAULT_RETRY_JITTER_MS`].
    pub retry_jitter_ms: Option<u32>,
    /// Give the lock a fencing token (docs/FENCING.md). Off by default: no
    /// fence counter is touched and an attempt is one round trip.
    pub fence: bool,
}

impl AcquireOptions {
    /// Options with the given TTL and every other field at its default.
    pub fn with_ttl(ttl_ms: u64) -> Self {
        Self {
            ttl_ms,
            retry_count: None,
            retry_delay_ms: None,
            retry_jitter_ms: None,
            fence: false,
        }
    }
}

/// Retry policy with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Further attempts after the first.
    pub count: u32,
    /// Fixed pause, ms.
    pub delay_ms: u32,
    /// Random extra pause bound, ms.
    pub jitter_ms: u32,
}

impl AcquireOptions {
    /// The retry policy with defaults applied.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            count: self.retry_count.unwrap_or(DEFAULT_RETRY_COUNT),
            delay_ms: self.retry_delay_ms.unwrap_or(DEFAULT_RETRY_DELAY_MS),
            jitter_ms: self.retry_jitter_ms.unwrap_or(DEFAULT_RETRY_JITTER_MS),
        }
    }
}

/// Checks a key: not empty, at most [`MAX_KEY_BYTES`].
pub fn check_key(key: &str) -> Result<(), Error> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("key is empty".into()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "key is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// Checks a TTL: above zero, at most [`MAX_TTL_MS`], and larger than its own
/// drift allowance (otherwise no lock could ever have validity left).
pub fn check_ttl(ttl_ms: u64) -> Result<(), Error> {
    if ttl_ms == 0 {
        return Err(Error::InvalidArgument("ttl is 0 ms".into()));
    }
    if ttl_ms > MAX_TTL_MS {
        return Err(Error::InvalidArgument(format!(
            "ttl is {ttl_ms} ms; the limit is {MAX_TTL_MS} ms (24 h)"
        )));
    }
    let drift = drift_ms(ttl_ms);
    if ttl_ms <= drift {
        return Err(Error::InvalidArgument(format!(
            "ttl of {ttl_ms} ms is not larger than the clock drift allowance of {drift} ms"
        )));
    }
    Ok(())
}

/// Checks a token handed back on release / extend.
pub fn check_token(token: &str) -> Result<(), Error> {
    if token.is_empty() {
        return Err(Error::InvalidArgument("token is empty".into()));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Error::InvalidArgument(format!(
            "token is {} bytes; the limit is {MAX_TOKEN_BYTES}",
            token.len()
        )));
    }
    Ok(())
}

/// Checks the time budget: present (else [`Error::DeadlineNeeded`]) and
/// above zero.
pub fn check_budget(budget_ms: Option<u64>) -> Result<u64, Error> {
    match budget_ms {
        None => Err(Error::DeadlineNeeded),
        Some(0) => Err(Error::InvalidArgument(
            "time budget is 0 ms: the deadline has already passed".into(),
        )),
        Some(ms) => Ok(ms),
    }
}

/// Checks the node count: at least one.
pub fn check_nodes(count: u32) -> Result<(), Error> {
    if count == 0 {
        return Err(Error::InvalidArgument(
            "no Redis nodes are configured".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked() {
        assert!(check_key("").is_err());
        assert!(check_key("a").is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES + 1)).is_err());
    }

    #[test]
    fn ttls_are_checked() {
        assert!(check_ttl(0).is_err());
        assert!(check_ttl(2).is_err(), "2 ms is all drift");
        assert!(check_ttl(3).is_ok());
        assert!(check_ttl(MAX_TTL_MS).is_ok());
        assert!(check_ttl(MAX_TTL_MS + 1).is_err());
        assert!(check_ttl(u64::MAX).is_err());
    }

    #[test]
    fn budget_is_required() {
        assert_eq!(check_budget(None), Err(Error::DeadlineNeeded));
        assert!(matches!(
            check_budget(Some(0)),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(check_budget(Some(1)), Ok(1));
    }

    /// Each retry setting is the caller's when given, else its own default
    /// (not another field's). The defaults' values are checked against the
    /// README by the host test `defaults::documented_defaults_are_the_code_defaults`.
    #[test]
    fn each_retry_setting_is_the_callers_or_its_own_default() {
        let given = AcquireOptions {
            ttl_ms: 1000,
            retry_count: Some(1),
            retry_delay_ms: Some(2),
            retry_jitter_ms: Some(3),
            fence: false,
        };
        let policy = |count, delay_ms, jitter_ms| RetryPolicy {
            count,
            delay_ms,
            jitter_ms,
        };
        assert_eq!(given.retry(), policy(1, 2, 3));
        let (count, delay, jitter) = (
            DEFAULT_RETRY_COUNT,
            DEFAULT_RETRY_DELAY_MS,
            DEFAULT_RETRY_JITTER_MS,
        );
        let only = |f: fn(&mut AcquireOptions)| {
            let mut o = AcquireOptions::with_ttl(1000);
            f(&mut o);
            o.retry()
        };
        assert_eq!(only(|_| {}), policy(count, delay, jitter));
        assert_eq!(only(|o| o.retry_count = Some(1)), policy(1, delay, jitter));
        assert_eq!(
            only(|o| o.retry_delay_ms = Some(2)),
            policy(count, 2, jitter)
        );
        assert_eq!(
            only(|o| o.retry_jitter_ms = Some(3)),
            policy(count, delay, 3)
        );
    }
}
