//! `redlock-bench hosts`: the same work from each host of the lock core, on
//! the same 3 local nodes in one run: acquire + release pairs, uncontended,
//! each on a new key. The hosts: the Rust host library (the core with native
//! `redis-node`), and the portable component (core + wasi:sockets plug)
//! under wasmtime-py, under jco on Node.js, and under the `wasmtime` CLI,
//! which runs one process per call: a pair is an acquire process and then a
//! release process, start-up and compile-cache load included.
//!
//! Rounds as in the main bench: the hosts' order rotates, each ratio to the
//! Rust host is taken within a round, and the table shows the median of the
//! per-round ratios with their spread. Prints a Markdown table.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use redlock_wasm::local::LocalCluster;

use crate::contenders::{Contender, Retry};
use crate::measure::{Bounds, median, pct};

/// One host's run: p50 and p99 in ms, client CPU per pair in us.
#[derive(Debug, Clone, Copy)]
struct Run {
    p50_ms: f64,
    p99_ms: f64,
    cpu_us: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Host {
    Rust,
    Python,
    Node,
    Cli,
}

impl Host {
    const ALL: [Host; 4] = [Host::Rust, Host::Python, Host::Node, Host::Cli];

    fn name(self) -> &'static str {
        match self {
            Host::Rust => "Rust host library",
            Host::Python => "Python (wasmtime-py)",
            Host::Node => "Node.js (jco)",
            Host::Cli => "wasmtime CLI, a process per call",
        }
    }
}

pub async fn run(root: &Path, rounds: usize, iters: usize, cli_runs: usize) -> Result<()> {
    let cluster = LocalCluster::start(3).context("start 3 local redis-server nodes")?;
    let urls = cluster.urls();
    let mut runs: BTreeMap<Host, Vec<Run>> = BTreeMap::new();
    for round in 0..rounds {
        for host in crate::rotated(&Host::ALL, round) {
            eprintln!("round {} of {rounds}: {}", round + 1, host.name());
            let prefix = format!("bench:hosts:r{round}");
            let r = match host {
                Host::Rust => rust(&urls, &prefix, iters).await?,
                Host::Python => script(
                    root,
                    host,
                    root.join("target/py/bin/python").as_os_str(),
                    "hosts/python/cli.py",
                    &urls,
                    &prefix,
                    iters,
                )?,
                Host::Node => script(
                    root,
                    host,
                    "node".as_ref(),
                    "hosts/js/cli.mjs",
                    &urls,
                    &prefix,
                    iters,
                )?,
                Host::Cli => cli(root, &urls, &prefix, cli_runs)?,
            };
            runs.entry(host).or_default().push(r);
        }
    }

    println!(
        "3 local nodes; {rounds} rounds; per round {iters} pairs per library host \
         (after 100 not counted), {cli_runs} pairs of CLI processes (after one not counted)\n"
    );
    println!(
        "| host | p50 ms | p99 ms | client CPU per pair | p50 vs Rust host |\n|---|---|---|---|---|"
    );
    let base = runs.get(&Host::Rust).cloned().unwrap_or_default();
    for host in Host::ALL {
        let Some(v) = runs.get(&host) else { continue };
        let med = |f: fn(&Run) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
        let ratios: Vec<f64> = v
            .iter()
            .zip(&base)
            .map(|(r, b)| r.p50_ms / b.p50_ms)
            .collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let ratio = if host == Host::Rust {
            "1.0x".to_owned()
        } else {
            format!("{:.1}x ({lo:.1}-{hi:.1})", median(&ratios))
        };
        println!(
            "| {} | {:.3} | {:.3} | {:.0} us | {ratio} |",
            host.name(),
            med(|r| r.p50_ms),
            med(|r| r.p99_ms),
            med(|r| r.cpu_us),
        );
    }
    Ok(())
}

async fn rust(urls: &[String], prefix: &str, iters: usize) -> Result<Run> {
    let ours = Contender::ours(urls, None, Retry::Defaults)?;
    let warm = Bounds {
        iters: 100,
        max_secs: None,
        hang: Duration::from_secs(10),
    };
    ours.latency(&format!("{prefix}:warm"), &warm).await?;
    let l = ours
        .latency(
            prefix,
            &Bounds {
                iters,
                ..warm.clone()
            },
        )
        .await?;
    Ok(Run {
        p50_ms: l.pct(50.0) / 1e3,
        p99_ms: l.pct(99.0) / 1e3,
        cpu_us: l.cpu_us_per_pair,
    })
}

/// A script host's `bench` command (hosts/python/cli.py, hosts/js/cli.mjs).
fn script(
    root: &Path,
    host: Host,
    program: &std::ffi::OsStr,
    script: &str,
    urls: &[String],
    prefix: &str,
    iters: usize,
) -> Result<Run> {
    let out = Command::new(program)
        .arg(root.join(script))
        .args(["bench", prefix, &iters.to_string(), "100"])
        .env("REDLOCK_NODES", urls.join(","))
        .output()
        .with_context(|| {
            format!(
                "run {} (./scripts/setup --for-tests prepares it)",
                host.name()
            )
        })?;
    if !out.status.success() {
        bail!("{}: {}", host.name(), String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: {}", host.name(), String::from_utf8_lossy(&out.stdout)))?;
    let num = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("{}: {k}", host.name()))
    };
    Ok(Run {
        p50_ms: num("p50_ms")?,
        p99_ms: num("p99_ms")?,
        cpu_us: num("cpu_us_per_pair")?,
    })
}

/// Acquire in one `wasmtime run` process, release in another; the first
/// pair fills wasmtime's compile cache and is not counted.
fn cli(root: &Path, urls: &[String], prefix: &str, runs: usize) -> Result<Run> {
    let wasmtime = std::env::var_os("REDLOCK_WASMTIME")
        .map(Into::into)
        .unwrap_or_else(|| root.join("target/tools/bin/wasmtime"));
    let wasm = root.join("host/core/redlock-portable.wasm");
    let nodes = format!("REDLOCK_NODES={}", urls.join(","));
    let invoke = |call: String| -> Result<String> {
        let out = Command::new(&wasmtime)
            .args(["run", "-S", "inherit-network", "--env", &nodes, "--invoke"])
            .arg(&call)
            .arg(&wasm)
            .output()
            .context("run the wasmtime CLI (./scripts/setup --for-tests builds it)")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || !text.starts_with("ok") {
            bail!("wasmtime CLI {call}: {out:?}");
        }
        Ok(text)
    };
    let mut samples = Vec::with_capacity(runs);
    let mut cpu = Duration::ZERO;
    for i in 0..runs + 1 {
        let key = format!("{prefix}:cli:{i}");
        let c0 = crate::measure::children_cpu();
        let t = Instant::now();
        let got = invoke(format!(
            r#"acquire("{key}", {{ttl-ms: 10000}}, some(2000))"#
        ))?;
        let token = got
            .split("token: \"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .with_context(|| format!("no token in {got}"))?;
        invoke(format!(
            r#"release({{key: "{key}", token: "{token}", validity-ms: 0, expires-at: 0}}, some(1000))"#
        ))?;
        if i > 0 {
            samples.push(t.elapsed().as_secs_f64() * 1e3);
            cpu += crate::measure::children_cpu().saturating_sub(c0);
        }
    }
    Ok(Run {
        p50_ms: pct(&samples, 50.0),
        p99_ms: pct(&samples, 99.0),
        cpu_us: cpu.as_secs_f64() * 1e6 / runs.max(1) as f64,
    })
}
