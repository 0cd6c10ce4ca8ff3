//! The one place `bindgen!` runs: host-side types for `wit/redlock.wit`.

wasmtime::component::bindgen!({
    world: "lock-core",
    path: "wit", // a link to the root wit/, so that the packaged crate carries it
    imports: { default: trappable },
    exports: { default: async },
    with: {
        "wasi": wasmtime_wasi::p2::bindings,
        "redlock:core/redis-node.fan-out": crate::node::FanOut,
    },
});

pub use exports::redlock::core::redlock as api;
pub use redlock::core::redis_node as node;
