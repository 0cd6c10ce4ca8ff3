//! `redlock-bench hosts`: one acquire + release pair, uncontended, from each
//! host of the lock core, on the same 3 local nodes in one run: the Rust
//! host library (the core with native `redis-node`), and the portable
//! component (core + wasi:sockets plug) under wasmtime-py, under jco on
//! Node.js, and under the `wasmtime` CLI (one process per call: acquire
//! only, process start and compile cache load included).
//!
//! Prints a table with each host's ratio to the Rust host.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use redlock_wasm::local::LocalCluster;

use crate::contenders::Contender;
use crate::measure::{latency, pct};

struct Row {
    host: &'static str,
    what: &'static str,
    p50_ms: f64,
    p99_ms: f64,
}

pub async fn run(root: &Path, iters: usize, cli_runs: usize) -> Result<()> {
    let cluster = LocalCluster::start(3).context("start 3 local redis-server nodes")?;
    let urls = cluster.urls();
    let nodes = urls.join(",");
    let mut rows = Vec::new();

    let ours = Contender::ours(&urls, 10)?;
    ours.warm("hosts").await?;
    let l = latency(&ours, "hosts", iters).await?;
    rows.push(Row {
        host: "Rust host library",
        what: "acquire + release",
        p50_ms: l.pct(50.0) / 1e3,
        p99_ms: l.pct(99.0) / 1e3,
    });

    let python = root.join("target/py/bin/python");
    for (host, program, script) in [
        (
            "Python (wasmtime-py)",
            python.as_os_str(),
            "hosts/python/cli.py",
        ),
        ("Node.js (jco)", "node".as_ref(), "hosts/js/cli.mjs"),
    ] {
        let out = Command::new(program)
            .arg(root.join(script))
            .args(["cycle", "bench:hosts:cycle", &iters.to_string()])
            .env("REDLOCK_NODES", &nodes)
            .output()
            .with_context(|| format!("run {host} (./scripts/setup --for-tests prepares it)"))?;
        if !out.status.success() {
            bail!("{host}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("{host}: {}", String::from_utf8_lossy(&out.stdout)))?;
        rows.push(Row {
            host,
            what: "acquire + release",
            p50_ms: v["p50_ms"].as_f64().context("p50_ms")?,
            p99_ms: v["p99_ms"].as_f64().context("p99_ms")?,
        });
    }

    let wasmtime = std::env::var_os("REDLOCK_WASMTIME")
        .map(Into::into)
        .unwrap_or_else(|| root.join("target/tools/bin/wasmtime"));
    let wasm = root.join("host/core/redlock-portable.wasm");
    let mut samples = Vec::with_capacity(cli_runs);
    for i in 0..cli_runs + 1 {
        let t = Instant::now();
        let out = Command::new(&wasmtime)
            .args(["run", "-S", "inherit-network", "--env"])
            .arg(format!("REDLOCK_NODES={nodes}"))
            .arg("--invoke")
            .arg(format!(
                r#"acquire("bench:hosts:cli:{i}", {{ttl-ms: 10000}}, some(2000))"#
            ))
            .arg(&wasm)
            .output()
            .context("run the wasmtime CLI (./scripts/setup --for-tests builds it)")?;
        if !out.status.success() || !out.stdout.starts_with(b"ok(") {
            bail!("wasmtime CLI: {out:?}");
        }
        // The first run fills wasmtime's compile cache; not counted.
        if i > 0 {
            samples.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    rows.push(Row {
        host: "wasmtime CLI 48",
        what: "acquire, whole process",
        p50_ms: pct(&samples, 50.0),
        p99_ms: pct(&samples, 99.0),
    });

    let base = rows[0].p50_ms;
    println!("3 local nodes; {iters} sequential pairs per library host, {cli_runs} CLI runs\n");
    println!("| host | measured | p50 ms | p99 ms | p50 vs Rust host |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.1}x |",
            r.host,
            r.what,
            r.p50_ms,
            r.p99_ms,
            r.p50_ms / base
        );
    }
    Ok(())
}
