//! `redis-node` over standard `wasi:sockets` (WASI 0.2).
//!
//! The lock core imports `redis-node`; the wasmtime host in this repository
//! implements it natively. This component implements it *inside* WebAssembly,
//! so that the core composed with it (`wac plug`) imports nothing but standard
//! WASI 0.2 and runs under any host that has `wasi:sockets`: the `wasmtime`
//! CLI, jco on Node.js, and other embedders.
//!
//! Plain Rust, tested natively:
//! - [`config`]: the environment: node addresses (`REDLOCK_NODES`) and the
//!   per-node timeout (`REDLOCK_NODE_TIMEOUT_MS`).
//! - [`defaults`]: every number the plug runs by, and why.
//! - [`wire`]: what each operation sends and expects, and which commands may
//!   go out twice (never a SET).
//! - [`resp`]: the RESP encoder and a bounded, incremental reply parser.
//! - [`timing`]: when a pending request is looked at again (the per-node
//!   timeout without a pollable of its own), and when a connection is stale.
//! - [`names`]: the cache of a node name's DNS answer.
//!
//! wasm32 only, the component: `component` (the exports and pending
//! replies), `component::node` (a node: address, down or up, connection) and
//! `component::conn` (one pipelined connection).

pub mod config;
pub mod defaults;
pub mod names;
pub mod resp;
pub mod timing;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod component;
