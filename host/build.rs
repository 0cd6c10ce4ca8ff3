//! Builds the lock core (`guest/`) for `wasm32-wasip2` so that an ordinary
//! `cargo build` or `cargo test` of the workspace needs no manual step, and
//! exports its path as `REDLOCK_CORE_WASM` for `include_bytes!`.
//!
//! It also builds the other components and composes them (with `wac-graph`,
//! the library behind `wac plug`):
//! - `redlock-portable.wasm`: the core plugged with the wasi:sockets
//!   `redis-node` (`plug/`); imports only standard WASI 0.2, exports
//!   `redlock`. For the `wasmtime` CLI, jco and other hosts.
//! - `plugin-example.wasm`: the example plugin (`examples/plugin/`) plugged
//!   with the core; imports `redis-node` and WASI, exports the plugin's job.
//!
//! Both are written to `target/components/` (for the README's commands) and
//! their paths exported as `REDLOCK_PORTABLE_WASM` and
//! `REDLOCK_PLUGIN_EXAMPLE_WASM`.
//!
//! The guest gets its own target directory: sharing the outer build's would
//! deadlock on cargo's lock. Flags meant for the host (`RUSTFLAGS`,
//! `target-cpu=native`, ...) are kept out of the wasm build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("host/ sits in the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));

    for path in [
        "guest/src",
        "guest/Cargo.toml",
        "tests/hostile-guest/src",
        "tests/hostile-guest/Cargo.toml",
        "plug/src",
        "plug/Cargo.toml",
        "examples/plugin/src",
        "examples/plugin/wit",
        "examples/plugin/Cargo.toml",
        "lua",
        "wit",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=REDLOCK_CORE_PROFILE");

    // The core is small and hot: build it optimised even in debug host builds.
    let profile = env::var("REDLOCK_CORE_PROFILE").unwrap_or_else(|_| "release".into());
    let target_dir = root.join("target").join("guest");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--target",
            "wasm32-wasip2",
            "--package",
            "redlock-core",
        ])
        // A core that misbehaves on purpose, for the sandbox tests (tiny).
        .args(["--package", "hostile-core"])
        .args(["--package", "redis-node-plug"])
        .args(["--package", "redlock-plugin-example"])
        .arg("--profile")
        .arg(&profile)
        .arg("--target-dir")
        .arg(&target_dir);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("could not run cargo to build the lock core");
    if !status.success() {
        panic!(
            "building the lock core for wasm32-wasip2 failed ({status}).\n\
             If the error above says the target is missing, run:\n    \
             rustup target add wasm32-wasip2\n\
             (or ./scripts/setup, which installs everything the project needs)"
        );
    }
    let dir = if profile == "dev" {
        "debug"
    } else {
        profile.as_str()
    };
    let built = |crate_name: &str| {
        target_dir
            .join("wasm32-wasip2")
            .join(dir)
            .join(format!("{crate_name}.wasm"))
    };
    for (crate_name, var) in [
        ("redlock_core", "REDLOCK_CORE_WASM"),
        ("hostile_core", "REDLOCK_HOSTILE_CORE_WASM"),
    ] {
        let wasm = built(crate_name);
        let copy = out_dir.join(format!("{crate_name}.wasm"));
        std::fs::copy(&wasm, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", wasm.display()));
        println!("cargo:rustc-env={var}={}", copy.display());
    }

    let components = root.join("target").join("components");
    std::fs::create_dir_all(&components).expect("create target/components");
    for (socket, plug, name, var) in [
        (
            "redlock_core",
            "redis_node_plug",
            "redlock-portable.wasm",
            "REDLOCK_PORTABLE_WASM",
        ),
        (
            "redlock_plugin_example",
            "redlock_core",
            "plugin-example.wasm",
            "REDLOCK_PLUGIN_EXAMPLE_WASM",
        ),
    ] {
        let bytes = compose(&built(socket), &built(plug))
            .unwrap_or_else(|e| panic!("composing {name}: {e:#}"));
        let out = components.join(name);
        std::fs::write(&out, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
        let copy = out_dir.join(name);
        std::fs::write(&copy, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", copy.display()));
        println!("cargo:rustc-env={var}={}", copy.display());
    }
}

/// `wac plug SOCKET --plug PLUG`: the plug's exports satisfy the socket's
/// imports of the same name; what neither provides stays an import.
fn compose(socket: &Path, plug: &Path) -> anyhow::Result<Vec<u8>> {
    let mut graph = CompositionGraph::new();
    let socket = Package::from_file("redlock:socket", None, socket, graph.types_mut())?;
    let socket = graph.register_package(socket)?;
    let plug = Package::from_file("redlock:plug", None, plug, graph.types_mut())?;
    let plug = graph.register_package(plug)?;
    wac_graph::plug(&mut graph, vec![plug], socket)?;
    Ok(graph.encode(EncodeOptions::default())?)
}
