//! `redlock run --once-per PERIOD`: a job that exited 0 leaves a marker on a
//! quorum of nodes, and any `run` of the same key that finds the marker
//! skips the job (exit 79).
//!
//! The marker is written while the lock is still held, by the lock core's
//! own acquire (`SET NX PX` on every node, success at quorum), under the
//! key `<key>:once-per`. It expires `PERIOD - tolerance` after the run that
//! wrote it took the lock, tolerance = PERIOD / 10, at most 1 minute: so a
//! host whose cron fires a few seconds early next period is not skipped.
//!
//! Reading it is the dual of writing it: the marker counts as present when
//! any node that answered has it, and as absent only when a majority
//! answered without it. A write that reached a majority W and a read that
//! reached a majority R share a node, so a run that takes the lock after
//! the marker was written always sees it.

use std::time::{Duration, Instant};

use redlock_wasm::{AcquireOptions, Error, KeyState, NodeError, Redlock};

/// The longest tolerance, whatever the period.
const MAX_TOLERANCE: Duration = Duration::from_secs(60);

/// The shortest and longest period (the lock core's TTL range bounds the
/// marker's TTL).
pub const MIN_PERIOD: Duration = Duration::from_secs(1);
pub const MAX_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// Time budget for the marker's read and write.
const MARKER_BUDGET: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy)]
pub struct OncePer {
    pub period: Duration,
}

/// What the nodes say about the marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Marker {
    /// At least one node has it.
    Present { on: usize, of: usize },
    /// A majority answered, none has it.
    Absent,
    /// Too few nodes answered to tell.
    Unknown { answered: usize, quorum: usize },
}

impl OncePer {
    /// Checks the period and that `wait` leaves the marker alive for the
    /// hosts that waited; before any I/O.
    pub fn new(period: Duration, wait: Duration) -> Result<Self, String> {
        if !(MIN_PERIOD..=MAX_PERIOD).contains(&period) {
            return Err(format!(
                "--once-per must be between 1s and 24h, not {}",
                humantime::format_duration(period)
            ));
        }
        let o = OncePer { period };
        if wait >= o.marker_life() {
            return Err(format!(
                "--wait {} is not shorter than what the once-per marker lives ({}): a host that \
                 waited that long could run the job a second time",
                humantime::format_duration(wait),
                humantime::format_duration(o.marker_life())
            ));
        }
        Ok(o)
    }

    /// How much earlier than PERIOD the marker expires.
    pub fn tolerance(&self) -> Duration {
        (self.period / 10).min(MAX_TOLERANCE)
    }

    /// How long after the lock was taken the marker expires.
    pub fn marker_life(&self) -> Duration {
        self.period - self.tolerance()
    }

    /// The marker's TTL when written now for a run that took the lock at
    /// `started`; `None` when the job outlasted the marker's life.
    pub fn marker_ttl(&self, started: Instant) -> Option<Duration> {
        (started + self.marker_life())
            .checked_duration_since(Instant::now())
            .filter(|ttl| *ttl >= Duration::from_millis(10))
    }
}

/// The marker's key for a lock key.
pub fn marker_key(key: &str) -> String {
    format!("{key}:once-per")
}

/// Decides from each node's read (see the module doc).
pub fn judge(reads: &[Result<KeyState, NodeError>]) -> Marker {
    let of = reads.len();
    let quorum = of / 2 + 1;
    let on = reads
        .iter()
        .filter(|r| matches!(r, Ok(s) if s.holder.is_some()))
        .count();
    let answered = reads.iter().filter(|r| r.is_ok()).count();
    if on > 0 {
        Marker::Present { on, of }
    } else if answered >= quorum {
        Marker::Absent
    } else {
        Marker::Unknown { answered, quorum }
    }
}

/// Reads the marker on every node.
pub async fn find(r: &Redlock, key: &str) -> Marker {
    judge(&r.nodes().inspect(&marker_key(key)).await)
}

/// Writes the marker on a quorum (the lock core's acquire, one attempt).
pub async fn write(r: &Redlock, key: &str, ttl: Duration) -> Result<(), Error> {
    let options = AcquireOptions::new().ttl(ttl).retry_count(0);
    r.acquire_with(&marker_key(key), MARKER_BUDGET, options)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> Result<KeyState, NodeError> {
        Ok(KeyState {
            holder: Some("t".into()),
            ttl: None,
        })
    }

    fn free() -> Result<KeyState, NodeError> {
        Ok(KeyState {
            holder: None,
            ttl: None,
        })
    }

    fn down() -> Result<KeyState, NodeError> {
        Err(NodeError::Timeout)
    }

    /// Present on any node; absent only when a majority answered; else unknown.
    #[test]
    fn judged_by_quorum_intersection() {
        assert_eq!(
            judge(&[down(), down(), held(), free(), free()]),
            Marker::Present { on: 1, of: 5 }
        );
        assert_eq!(
            judge(&[down(), down(), free(), free(), free()]),
            Marker::Absent
        );
        assert_eq!(
            judge(&[down(), down(), down(), free(), free()]),
            Marker::Unknown {
                answered: 2,
                quorum: 3
            }
        );
    }

    /// The documented tolerance: a tenth of the period, at most a minute.
    #[test]
    fn documented_tolerance() {
        let o = |s| OncePer::new(Duration::from_secs(s), Duration::ZERO).unwrap();
        assert_eq!(o(300).tolerance(), Duration::from_secs(30));
        assert_eq!(o(3600).tolerance(), Duration::from_secs(60));
        assert_eq!(o(300).marker_life(), Duration::from_secs(270));
    }

    /// Out-of-range periods and waits that outlive the marker are refused.
    #[test]
    fn bad_periods_and_waits_are_refused() {
        assert!(OncePer::new(Duration::from_millis(500), Duration::ZERO).is_err());
        assert!(OncePer::new(Duration::from_secs(25 * 3600), Duration::ZERO).is_err());
        assert!(OncePer::new(Duration::from_secs(60), Duration::from_secs(54)).is_err());
        assert!(OncePer::new(Duration::from_secs(60), Duration::from_secs(53)).is_ok());
    }
}
