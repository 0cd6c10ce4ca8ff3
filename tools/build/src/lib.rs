//! Building the workspace's WebAssembly components, reproducibly, and
//! composing them with `wac-graph` (the library behind `wac plug`).
//!
//! Used by the `redlock-build` binary (`./scripts/build-core`), which makes
//! the lock core that the `redlock-wasm` crate ships, and by the build script
//! of the test fixtures (`tests/fixtures`).
//!
//! Reproducible: the same sources, `Cargo.lock` and toolchain give the same
//! bytes wherever the checkout lives. Paths that would end up in the wasm
//! (panic locations) are remapped (`--remap-path-prefix`), no debug info is
//! kept, and flags meant for the host (`RUSTFLAGS`, `target-cpu=native`,
//! ...) are kept out of the wasm build.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions};

/// The workspace root, from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tools/build sits two levels below the root")
        .to_path_buf()
}

/// Builds `packages` for `wasm32-wasip2` in release mode into `target_dir`
/// (its own: sharing the outer build's would deadlock on cargo's lock) and
/// returns the directory holding the `.wasm` files.
pub fn build(root: &Path, target_dir: &Path, packages: &[&str]) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    let mut flags = OsString::new();
    for (from, to) in [(root, "/redlock"), (cargo_home.as_path(), "/cargo")] {
        flags.push("--remap-path-prefix=");
        flags.push(from.as_os_str());
        flags.push(format!("={to}\x1f"));
    }
    flags.push("-Cdebuginfo=0\x1f-Cstrip=debuginfo");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--release",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags);
    for p in packages {
        cmd.args(["--package", p]);
    }
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().context("run cargo to build the components")?;
    if !status.success() {
        bail!(
            "building {packages:?} for wasm32-wasip2 failed ({status}). If the error above says \
             the target is missing, run `rustup target add wasm32-wasip2` (or ./scripts/setup)"
        );
    }
    Ok(target_dir.join("wasm32-wasip2").join("release"))
}

/// `wac plug SOCKET --plug PLUG`: the plug's exports satisfy the socket's
/// imports of the same name; what neither provides stays an import.
pub fn compose(socket: &[u8], plug: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut graph = CompositionGraph::new();
    let socket = Package::from_bytes("redlock:socket", None, socket.to_vec(), graph.types_mut())?;
    let socket = graph.register_package(socket)?;
    let plug = Package::from_bytes("redlock:plug", None, plug.to_vec(), graph.types_mut())?;
    let plug = graph.register_package(plug)?;
    wac_graph::plug(&mut graph, vec![plug], socket)?;
    Ok(graph.encode(EncodeOptions::default())?)
}
