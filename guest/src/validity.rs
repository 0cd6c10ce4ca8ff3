//! The validity arithmetic, in whole milliseconds as Redlock states it, with
//! no overflow and no underflow for any input.

/// Nanoseconds per millisecond.
pub const NS_PER_MS: u64 = 1_000_000;

/// Clock drift allowance for a TTL: `ttl / 100 + 2` ms (redlock-rb's rule:
/// 1% for clock rate differences plus 2 ms for Redis's expiry resolution).
pub fn drift_ms(ttl_ms: u64) -> u64 {
    ttl_ms / 100 + 2
}

/// Elapsed nanoseconds rounded UP to whole milliseconds, so rounding never
/// makes a lock look younger than it is.
pub fn elapsed_ms_ceil(elapsed_ns: u64) -> u64 {
    elapsed_ns.div_ceil(NS_PER_MS)
}

/// Validity left after an attempt that took `elapsed_ns`:
/// `ttl - elapsed - drift`, or `None` when that is not above zero.
pub fn validity_ms(ttl_ms: u64, elapsed_ns: u64) -> Option<u64> {
    ttl_ms
        .checked_sub(elapsed_ms_ceil(elapsed_ns))?
        .checked_sub(drift_ms(ttl_ms))
        .filter(|v| *v > 0)
}

/// The monotonic instant (ns) at which a lock whose attempt started at
/// `start_ns` stops being valid: `start + ttl - drift`. Saturates.
pub fn expires_at_ns(start_ns: u64, ttl_ms: u64) -> u64 {
    let usable_ms = ttl_ms.saturating_sub(drift_ms(ttl_ms));
    start_ns.saturating_add(usable_ms.saturating_mul(NS_PER_MS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn spec_example() {
        // 10 s TTL, 5 ms spent: 10000 - 5 - (100 + 2) = 9893.
        assert_eq!(validity_ms(10_000, 5 * NS_PER_MS), Some(9_893));
        // A partial millisecond counts as a whole one.
        assert_eq!(validity_ms(10_000, 4 * NS_PER_MS + 1), Some(9_893));
        assert_eq!(validity_ms(10_000, 0), Some(9_898));
    }

    #[test]
    fn no_validity_is_none() {
        // TTL 100 ms: drift is 100 / 100 + 2 = 3 ms.
        assert_eq!(validity_ms(100, 96 * NS_PER_MS), Some(1));
        assert_eq!(
            validity_ms(100, 97 * NS_PER_MS),
            None,
            "exactly zero is not granted"
        );
        assert_eq!(validity_ms(100, u64::MAX), None);
        assert_eq!(validity_ms(0, 0), None);
    }

    proptest! {
        #[test]
        fn never_panics_and_never_exceeds_ttl_minus_drift(ttl in any::<u64>(), elapsed in any::<u64>()) {
            if let Some(v) = validity_ms(ttl, elapsed) {
                prop_assert!(v > 0);
                prop_assert!(v <= ttl - drift_ms(ttl));
                // The exact formula, computed wide.
                let wide = ttl as i128 - elapsed_ms_ceil(elapsed) as i128 - drift_ms(ttl) as i128;
                prop_assert_eq!(v as i128, wide);
            } else {
                let wide = ttl as i128 - elapsed_ms_ceil(elapsed) as i128 - drift_ms(ttl) as i128;
                prop_assert!(wide <= 0);
            }
        }

        #[test]
        fn validity_shrinks_as_time_passes(ttl in 3u64..=86_400_000, a in 0u64..=u64::MAX / 2, b in 0u64..=u64::MAX / 2) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            let vl = validity_ms(ttl, lo).unwrap_or(0);
            let vh = validity_ms(ttl, hi).unwrap_or(0);
            prop_assert!(vh <= vl);
        }

        #[test]
        fn expiry_matches_validity(start in any::<u64>(), ttl in any::<u64>()) {
            let e = expires_at_ns(start, ttl);
            prop_assert!(e >= start);
        }
    }
}
