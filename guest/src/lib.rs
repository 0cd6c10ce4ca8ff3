//! The Redlock algorithm, written once and run from any host that speaks the
//! WebAssembly component model.
//!
//! Map of the crate:
//! - [`options`]: every default and limit in one place, and the input checks
//!   that run before any I/O.
//! - [`quorum`]: what each node said, and when an outcome becomes certain.
//! - [`validity`]: the drift allowance and the validity arithmetic.
//! - [`fence`]: the fence of a granted fenced attempt, and whether it must
//!   still be committed to a quorum (docs/FENCING.md).
//! - [`engine`]: acquire, release and extend over the small [`engine::Nodes`]
//!   trait. No binding types appear here, so all of it compiles and is tested
//!   natively.
//! - `component` (wasm32 only): the `wit-bindgen` glue that implements
//!   [`engine::Nodes`] with the `redis-node` import, `wasi:io/poll`,
//!   `wasi:clocks` and `wasi:random`, and exports `redlock`.

pub mod engine;
pub mod fence;
pub mod options;
pub mod quorum;
pub mod validity;

#[cfg(target_arch = "wasm32")]
mod component;

#[cfg(test)]
mod sim;
