//! The fence of a fenced attempt that a quorum granted, and whether it must
//! still be committed (docs/FENCING.md).
//!
//! Each granting node answered with its fence counter right after the grant
//! raised it to `max(counter + 1, floor)`. The fence is the highest of those
//! values. It is *committed* once a quorum of nodes is known to hold a
//! counter of at least the fence: then every later acquire's granting
//! quorum shares a node with them and reads a higher counter. A node is
//! known to hold it when it reported at least the fence, here or in the
//! commit round. The maximum alone is not monotonic: with counters 5, 5, 9,
//! a grant by {n1, n3} gives 10, a later one by {n1, n2} gives 7.

use crate::quorum::quorum;

/// The fence of a granted attempt: the highest counter the granting nodes
/// reported (`values[i]`: node i's counter, `None` when it did not grant or
/// did not answer). `None` when no node reported one.
pub fn of(values: &[Option<u64>]) -> Option<u64> {
    values.iter().flatten().max().copied()
}

/// Which nodes are known to hold a counter of at least `fence`.
pub fn holders(values: &[Option<u64>], fence: u64) -> Vec<bool> {
    values
        .iter()
        .map(|v| v.is_some_and(|v| v >= fence))
        .collect()
}

/// True when a quorum of the `holders.len()` nodes holds the fence: no
/// commit round is needed.
pub fn committed(holders: &[bool]) -> bool {
    let n = holders.len() as u32;
    holders.iter().filter(|h| **h).count() as u32 >= quorum(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fence is the maximum over the granting nodes, and it is committed
    /// only when a quorum reported it.
    #[test]
    fn the_maximum_needs_a_quorum_that_holds_it() {
        // Kleppmann's example, after the grants by {n1, n3}: 6 and 10.
        let a = [Some(6), None, Some(10)];
        assert_eq!(of(&a), Some(10));
        assert_eq!(holders(&a, 10), [false, false, true]);
        assert!(!committed(&holders(&a, 10)), "10 lives on n3 alone");
        // Counters that moved together: one round trip.
        let b = [Some(7), Some(7), None, Some(7), Some(3)];
        assert_eq!(of(&b), Some(7));
        assert!(committed(&holders(&b, 7)), "3 of 5 hold 7");
        let c = [Some(7), Some(7), None, Some(6), Some(3)];
        assert!(!committed(&holders(&c, 7)), "2 of 5 hold 7");
        assert_eq!(of(&[None, None]), None);
        assert!(committed(&[true]), "one node is its own quorum");
        assert!(!committed(&[true, false]), "2 nodes need both");
    }
}
