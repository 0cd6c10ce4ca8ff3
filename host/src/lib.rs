//! Redis Redlock whose algorithm lives in a WebAssembly component (the lock
//! core, `guest/`) and whose I/O lives here, in a wasmtime host.
//!
//! ```no_run
//! # async fn demo() -> Result<(), redlock_wasm::Error> {
//! use std::time::Duration;
//! use redlock_wasm::Redlock;
//!
//! let redlock = Redlock::new(
//!     ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"],
//!     Duration::from_secs(10),
//! )?;
//! let lock = redlock.acquire("invoice:42", Duration::from_secs(2)).await?;
//! // ... work that must finish before lock.valid_until() ...
//! redlock.release(&lock).await?;
//! # Ok(()) }
//! ```
//!
//! Map of the crate:
//! - [`lock`]: [`Redlock`], its builder, [`Lock`], [`Deadline`]: the API,
//!   shaped like the Go library it grew from.
//! - [`guard`]: [`LockGuard`] ([`Redlock::acquire_guard`]): a lock extended
//!   in the background that signals its loss before its validity ends, and
//!   the schedule it shares with `redlock run`.
//! - [`error`]: [`Error`] and the per-node detail of quorum failures.
//! - [`metrics`]: the lock metrics' names and labels (the `metrics` facade).
//! - [`check`]: deployment checks ([`Redlock::check`], `redlock doctor`):
//!   does each node meet Redlock's assumptions, and does a quorum?
//! - [`node`]: the `redis-node` capability (connections, per-node timeout,
//!   concurrency limit, Lua scripts), reusable by any wasmtime embedder.
//! - [`addr`]: node URLs, printable without passwords.
//! - `local` (feature `local`): local `redis-server` processes and a fault
//!   proxy, for the demo, the tests and the benchmark; not the library's API.
//! - `signal` (feature `local`): sending signals to processes (the tests).
//! - `sandbox`: the engine, the compiled core, warm instances and limits.
//! - `bindings`: the one `bindgen!` of `wit/redlock.wit`.

#![deny(missing_docs)]

// Every Rust snippet of the README compiles (`cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

pub mod addr;
mod bindings;
pub mod check;
pub mod error;
pub mod guard;
#[cfg(feature = "local")]
pub mod local;
pub mod lock;
pub mod metrics;
pub mod node;
mod sandbox;
#[cfg(feature = "local")]
pub mod signal;

pub use addr::{NodeAddr, split_node_list};
pub use check::{Check, DeploymentReport, Finding, Level, NodeReport, Verdict};
pub use error::{Error, NodeError, NodeOutcome, Outcome, QuorumFailure};
pub use guard::{GuardOptions, LockGuard, Loss};
pub use lock::{AcquireOptions, Deadline, Lock, Redlock, RedlockBuilder};
pub use node::{
    KeyState, RedisNode, RedisNodeCtx, RedisNodeCtxBuilder, Shard, add_to_linker, key_slot,
};
pub use sandbox::{CORE_WASM, PORTABLE_WASM, ProcessClock};
pub use tokio_util::sync::CancellationToken;
