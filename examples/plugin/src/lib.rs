//! An example plugin: a job that runs under a Redlock lock.
//!
//! It is written against the `redlock` interface only (`wit/plugin.wit`);
//! the build composes it with the lock core, and a wasmtime embedder runs the
//! result, linking `redis-node` with `redlock_wasm::add_to_linker` (see
//! `host/examples/plugin_host.rs`). The plugin has no sockets and no files:
//! it cannot reach Redis, or anything else, except through its locks.

#[cfg(target_arch = "wasm32")]
mod component;

/// Whether a lock with `validity_ms` left should be extended before a step
/// of `step_ms`: when less than half the validity would remain after it.
pub fn should_extend(validity_ms: u64, step_ms: u64) -> bool {
    validity_ms.saturating_sub(step_ms) < validity_ms / 2
}

#[cfg(test)]
mod tests {
    use super::should_extend;

    #[test]
    fn extends_when_a_step_would_eat_half_the_validity() {
        assert!(!should_extend(1000, 100));
        assert!(should_extend(1000, 600));
        assert!(should_extend(10, 10));
    }
}
