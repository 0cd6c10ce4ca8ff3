//! `redis-node` over standard `wasi:sockets` (WASI 0.2).
//!
//! The lock core imports `redis-node`; the wasmtime host in this repository
//! implements it natively. This component implements it *inside* WebAssembly,
//! so that the core composed with it (`wac plug`) imports nothing but standard
//! WASI 0.2 and runs under any host that has `wasi:sockets`: the `wasmtime`
//! CLI, jco on Node.js, and other embedders.
//!
//! - [`config`]: node addresses from the `REDLOCK_NODES` environment variable.
//! - [`resp`]: the RESP encoder and a bounded, incremental reply parser.
//! - `component` (wasm32 only): connections and the `redis-node` resources.
//!
//! The first two are plain Rust and tested natively.

pub mod config;
pub mod resp;

#[cfg(target_arch = "wasm32")]
mod component;
