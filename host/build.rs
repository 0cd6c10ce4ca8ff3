//! Builds the lock core (`guest/`) for `wasm32-wasip2` so that an ordinary
//! `cargo build` or `cargo test` of the workspace needs no manual step, and
//! exports its path as `REDLOCK_CORE_WASM` for `include_bytes!`.
//!
//! The guest gets its own target directory: sharing the outer build's would
//! deadlock on cargo's lock. Flags meant for the host (`RUSTFLAGS`,
//! `target-cpu=native`, ...) are kept out of the wasm build.

use std::env;
use std::path::PathBuf;
use std::process::Command;

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
    for (crate_name, var) in [
        ("redlock_core", "REDLOCK_CORE_WASM"),
        ("hostile_core", "REDLOCK_HOSTILE_CORE_WASM"),
    ] {
        let wasm = target_dir
            .join("wasm32-wasip2")
            .join(dir)
            .join(format!("{crate_name}.wasm"));
        let copy = out_dir.join(format!("{crate_name}.wasm"));
        std::fs::copy(&wasm, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", wasm.display()));
        println!("cargo:rustc-env={var}={}", copy.display());
    }
}
