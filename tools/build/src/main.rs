//! `redlock-build`: rebuilds the lock core that `redlock-wasm` ships
//! (`host/core/`) from `guest/` and `plug/`.
//!
//! - `redlock-build`: writes `host/core/redlock-core.wasm` (the core) and
//!   `host/core/redlock-portable.wasm` (the core plugged with the
//!   wasi:sockets `redis-node`, for the wasmtime CLI, jco, Python and any
//!   WASI 0.2 host).
//! - `redlock-build --check`: builds and compares instead of writing; exits 1
//!   when the shipped files differ from what the sources give (CI runs it,
//!   so the shipped binaries can be trusted).

use std::process::ExitCode;

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => {
            eprintln!("redlock-build: unknown argument {other:?} (usage: redlock-build [--check])");
            return ExitCode::from(2);
        }
    };
    match run(check) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("redlock-build: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(check: bool) -> anyhow::Result<bool> {
    let root = redlock_build::workspace_root();
    let out = redlock_build::build(
        &root,
        &root.join("target").join("wasm-components"),
        &["redlock-core", "redis-node-plug"],
    )?;
    let core = std::fs::read(out.join("redlock_core.wasm"))?;
    let plug = std::fs::read(out.join("redis_node_plug.wasm"))?;
    let portable = redlock_build::compose(&core, &plug)?;
    let shipped = root.join("host").join("core");
    let mut same = true;
    for (name, bytes) in [
        ("redlock-core.wasm", &core),
        ("redlock-portable.wasm", &portable),
    ] {
        let path = shipped.join(name);
        if check {
            let old = std::fs::read(&path).unwrap_or_default();
            if &old != bytes {
                eprintln!(
                    "redlock-build: {} differs from what guest/ and plug/ build to ({} bytes \
                     shipped, {} built): run ./scripts/build-core and commit it",
                    path.display(),
                    old.len(),
                    bytes.len()
                );
                same = false;
            }
        } else {
            std::fs::create_dir_all(&shipped)?;
            std::fs::write(&path, bytes)?;
            println!("wrote {} ({} bytes)", path.display(), bytes.len());
        }
    }
    if check && same {
        println!("host/core/ matches its sources");
    }
    Ok(same)
}
