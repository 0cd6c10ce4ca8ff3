//! Benchmarks, in one run so the ratios stay fair on a noisy machine: the
//! quorum floor (the redis crate used directly), rslock, node-redlock (when
//! Node.js is installed) and redlock-wasm, on 5 local `redis-server` nodes
//! that this program starts and stops.
//!
//! `./scripts/bench` builds everything in release mode and runs it; it
//! writes docs/BENCHMARKS.md, docs/benchmarks.json and docs/latency.png.

mod chart;
mod contenders;
mod hosts;
mod measure;
mod node;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use redlock_wasm::Redlock;
use redlock_wasm::local::proxy::{Mode, Proxy};
use redlock_wasm::local::{LocalCluster, free_port};

use crate::contenders::{Contender, TTL};
use crate::measure::{latency, median, throughput};

#[derive(Debug, Parser)]
#[command(about = "Benchmarks redlock-wasm against the quorum floor, rslock and node-redlock")]
struct Args {
    /// Rounds; each metric reports the median over rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Sequential pairs per latency measurement.
    #[arg(long, default_value_t = 2000)]
    iters: usize,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Where BENCHMARKS.md, benchmarks.json and latency.png go.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    #[command(subcommand)]
    sub: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Only redlock-wasm's throughput on distinct keys, for a profiler.
    Profile {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 256)]
        limit: usize,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    /// One uncontended pair from each host of the lock core: the Rust host,
    /// Python, Node.js and the wasmtime CLI (needs ./scripts/setup).
    Hosts {
        #[arg(long, default_value_t = 300)]
        iters: usize,
        #[arg(long, default_value_t = 21)]
        cli_runs: usize,
    },
    /// (internal) Hold N locks and report this process's memory.
    Rss {
        #[arg(long = "node")]
        nodes: Vec<String>,
        #[arg(long, default_value_t = 10_000)]
        locks: usize,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.sub {
        Some(Sub::Rss { ref nodes, locks }) => rt.block_on(rss_child(nodes, locks)),
        Some(Sub::Profile {
            clients,
            limit,
            secs,
        }) => rt.block_on(async {
            let cluster = LocalCluster::start(5)?;
            let ours = Rc::new(Contender::ours(&cluster.urls(), limit)?);
            ours.warm("profile").await?;
            let tp = throughput(ours, "profile", clients, secs, false).await?;
            println!("{tp:.0} pairs/s");
            Ok(())
        }),
        Some(Sub::Hosts { iters, cli_runs }) => {
            rt.block_on(hosts::run(&workspace_root()?, iters, cli_runs))
        }
        None => rt.block_on(run(args)),
    }
}

/// Metric name -> value, per round.
type Round = BTreeMap<String, f64>;

async fn run(args: Args) -> Result<()> {
    let root = workspace_root()?;
    let cluster = LocalCluster::start(5).context("start 5 local redis-server nodes")?;
    let urls = cluster.urls();
    eprintln!("nodes: {}", urls.join(" "));
    let node_dir = match node::prepare(&root) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("node-redlock skipped: {e:#}");
            None
        }
    };
    if node_dir.is_none() {
        eprintln!("node-redlock skipped: Node.js is not installed");
    }
    let mut rounds: Vec<Round> = Vec::new();
    let mut last_samples: Vec<(String, Vec<f64>)> = Vec::new();
    for round in 0..args.rounds {
        eprintln!("round {} of {}", round + 1, args.rounds);
        let (r, samples) = one_round(&args, &urls, &cluster, node_dir.as_deref(), round).await?;
        rounds.push(r);
        last_samples = samples;
    }
    let metrics = aggregate(&rounds);
    let cli = cold_cli(&root, &urls)?;
    let mut all = metrics.clone();
    all.extend(cli.clone());

    std::fs::create_dir_all(&args.out)?;
    let table = report(&all, &args, node_dir.is_some());
    println!("{table}");
    let notes = std::fs::read_to_string(root.join("bench").join("notes.md")).unwrap_or_default();
    std::fs::write(args.out.join("BENCHMARKS.md"), format!("{table}\n{notes}"))?;
    let json = serde_json::json!({ "rounds": rounds, "median": all });
    std::fs::write(
        args.out.join("benchmarks.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    match chart::cdf(
        &args.out.join("latency.png"),
        "Uncontended acquire + release, 5 local nodes (last round)",
        &last_samples,
    ) {
        Ok(()) => eprintln!("wrote {}", args.out.join("latency.png").display()),
        Err(e) => eprintln!("chart skipped: {e:#}"),
    }
    Ok(())
}

fn workspace_root() -> Result<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    Ok(here
        .parent()
        .context("bench/ sits in the workspace")?
        .to_path_buf())
}

async fn one_round(
    args: &Args,
    urls: &[String],
    cluster: &LocalCluster,
    node_dir: Option<&Path>,
    round: usize,
) -> Result<(Round, Vec<(String, Vec<f64>)>)> {
    let mut m = Round::new();
    let tag = |s: &str| format!("r{round}:{s}");

    let floor_q = Rc::new(Contender::floor(urls, false).await?);
    let floor_a = Rc::new(Contender::floor(urls, true).await?);
    let rsl = Rc::new(Contender::rslock(urls));
    let ours = Rc::new(Contender::ours(
        urls,
        redlock_wasm::node::DEFAULT_CONCURRENCY,
    )?);
    let ours_wide = Rc::new(Contender::ours(urls, 256)?);
    let named: [(&str, &Rc<Contender>); 5] = [
        ("floor-quorum", &floor_q),
        ("floor-all", &floor_a),
        ("rslock", &rsl),
        ("ours", &ours),
        ("ours-256", &ours_wide),
    ];
    for (name, c) in &named {
        c.warm(&tag(name)).await?;
    }

    // Uncontended latency.
    let mut samples = Vec::new();
    for (name, c) in &named[..4] {
        eprintln!("  latency: {name}");
        let l = latency(c, &tag(&format!("lat-{name}")), args.iters).await?;
        m.insert(format!("lat_p50/{name}"), l.pct(50.0));
        m.insert(format!("lat_p99/{name}"), l.pct(99.0));
        samples.push((label(name), l.samples_us));
    }

    // Throughput on distinct keys.
    for clients in [1usize, 16, 64] {
        for (name, c) in [
            ("floor-quorum", &floor_q),
            ("rslock", &rsl),
            ("ours", &ours),
            ("ours-256", &ours_wide),
        ] {
            eprintln!("  throughput: {name}, {clients} clients");
            let tp = throughput(
                (*c).clone(),
                &tag(&format!("tp-{name}-{clients}")),
                clients,
                args.secs,
                false,
            )
            .await?;
            m.insert(format!("tp{clients}/{name}"), tp);
        }
    }

    // Contended: 16 clients on one key, each library's default retries.
    for (name, c) in [("rslock", &rsl), ("ours", &ours)] {
        eprintln!("  contended: {name}");
        let tp = throughput(
            (*c).clone(),
            &tag(&format!("one-{name}")),
            16,
            args.secs,
            true,
        )
        .await?;
        m.insert(format!("contended/{name}"), tp);
    }

    if let Some(dir) = node_dir {
        eprintln!("  node-redlock");
        let n = node::run(dir, urls, args.iters, &[1, 16, 64], args.secs, &tag("node"))?;
        m.insert(
            "lat_p50/node-redlock".into(),
            measure::pct(&n.samples_us, 50.0),
        );
        m.insert(
            "lat_p99/node-redlock".into(),
            measure::pct(&n.samples_us, 99.0),
        );
        for (k, v) in &n.throughput {
            m.insert(format!("tp{k}/node-redlock"), *v);
        }
        m.insert("contended/node-redlock".into(), n.contended);
        samples.push(("node-redlock".into(), n.samples_us));
    }

    // One node slowed by 50 ms, then one node dead.
    let degraded_iters = (args.iters / 10).max(100);
    let proxy = Proxy::start(cluster.nodes[4].port()).await?;
    proxy.set(Mode::Delay(Duration::from_millis(50)));
    let dead = format!("redis://127.0.0.1:{}", free_port()?);
    for (case, last) in [("slow", proxy.url()), ("dead", dead)] {
        let mut u = urls[..4].to_vec();
        u.push(last);
        let cs = [
            ("floor-quorum", Contender::floor(&u, false).await?),
            ("floor-all", Contender::floor(&u, true).await?),
            ("rslock", Contender::rslock(&u)),
            (
                "ours",
                Contender::ours(&u, redlock_wasm::node::DEFAULT_CONCURRENCY)?,
            ),
        ];
        for (name, c) in &cs {
            if case == "dead" && *name == "floor-all" {
                continue; // it cannot await a node that is not there
            }
            eprintln!("  {case} node: {name}");
            c.warm(&tag(&format!("{case}-{name}"))).await?;
            let l = latency(c, &tag(&format!("{case}-{name}")), degraded_iters).await?;
            m.insert(format!("{case}_p50/{name}"), l.pct(50.0));
        }
    }
    drop(proxy);

    // The wasm boundary alone: in-memory nodes, no Redis, no sockets.
    eprintln!("  wasm boundary");
    let mem = Redlock::builder().in_memory_nodes(5).ttl(TTL).build()?;
    let mut acq = Vec::with_capacity(args.iters);
    let mut pair = Vec::with_capacity(args.iters);
    for i in 0..args.iters + 100 {
        let key = format!("bench:mem:{round}:{i}");
        let t = Instant::now();
        let lock = mem.acquire(&key, Duration::from_secs(1)).await?;
        let a = t.elapsed();
        mem.release(&lock).await?;
        if i >= 100 {
            acq.push(a.as_secs_f64() * 1e6);
            pair.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    m.insert("boundary_call_p50".into(), measure::pct(&acq, 50.0));
    m.insert("boundary_pair_p50".into(), measure::pct(&pair, 50.0));

    // Memory with 10,000 locks held, in a fresh process.
    eprintln!("  memory with 10,000 locks held");
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("rss");
    for u in urls {
        cmd.arg("--node").arg(u);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("rss child failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    for k in ["rss_before_mib", "rss_held_mib", "peak_mib"] {
        m.insert(k.into(), v[k].as_f64().unwrap_or(f64::NAN));
    }
    for n in &cluster.nodes {
        let _: redis::RedisResult<()> =
            redis::cmd("FLUSHALL").query(&mut redis::Client::open(n.url())?.get_connection()?);
    }
    Ok((m, samples))
}

fn label(name: &str) -> String {
    match name {
        "floor-quorum" => "floor (quorum)".into(),
        "floor-all" => "floor (all nodes)".into(),
        "ours" => "redlock-wasm".into(),
        other => other.into(),
    }
}

/// The child process of the memory measurement.
async fn rss_child(urls: &[String], locks: usize) -> Result<()> {
    let r = Redlock::builder()
        .nodes(urls.iter().cloned())
        .ttl(Duration::from_secs(60))
        .build()?;
    let first = r.acquire("bench:rss:warm", Duration::from_secs(1)).await?;
    r.release(&first).await?;
    let before = status_kib("VmRSS:");
    let mut held = Vec::with_capacity(locks);
    for i in 0..locks {
        held.push(
            r.acquire(&format!("bench:rss:{i}"), Duration::from_secs(1))
                .await?,
        );
    }
    let during = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    for l in &held {
        r.release(l).await?;
    }
    r.settle(Duration::from_secs(2)).await;
    println!(
        "{}",
        serde_json::json!({
            "rss_before_mib": before / 1024.0,
            "rss_held_mib": during / 1024.0,
            "peak_mib": peak / 1024.0,
        })
    );
    Ok(())
}

fn status_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(f64::NAN)
}

/// A cold `redlock run -- true` against a bare `true`, 20 runs each.
fn cold_cli(root: &Path, urls: &[String]) -> Result<Round> {
    let mut m = Round::new();
    let exe = std::env::current_exe()?;
    let redlock = exe.with_file_name("redlock");
    if !redlock.exists() {
        eprintln!(
            "cold CLI run skipped: {} not built (cargo build --release --bin redlock)",
            redlock.display()
        );
        return Ok(m);
    }
    let _ = root;
    let time = |cmd: &mut Command| -> Result<f64> {
        let t = Instant::now();
        let ok = cmd.output()?.status.success();
        if !ok {
            bail!("{cmd:?} failed");
        }
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let (mut bare, mut run) = (Vec::new(), Vec::new());
    for i in 0..21 {
        bare.push(time(&mut Command::new("true"))?);
        let mut c = Command::new(&redlock);
        c.env("REDLOCK_NODES", urls.join(",")).args([
            "run",
            "--key",
            &format!("bench:cli:{i}"),
            "--",
            "true",
        ]);
        run.push(time(&mut c)?);
    }
    m.insert("cli_true_ms".into(), median(&bare));
    m.insert("cli_run_ms".into(), median(&run));
    Ok(m)
}

fn aggregate(rounds: &[Round]) -> Round {
    let mut keys: Vec<&String> = rounds.iter().flat_map(|r| r.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let v: Vec<f64> = rounds.iter().filter_map(|r| r.get(k).copied()).collect();
            (k.clone(), median(&v))
        })
        .collect()
}

fn report(m: &Round, args: &Args, node: bool) -> String {
    let g = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    let ms = |us: f64| format!("{:.3} ms", us / 1000.0);
    let ratio = |a: f64, b: f64| format!("{:.2}x", a / b);
    let mut out = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let redis = Command::new(redlock_wasm::local::binary())
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    out.push_str("# Benchmarks\n\n");
    out.push_str(&format!(
        "Measured by `./scripts/bench` (that is, `./target/release/redlock-bench --rounds {} --iters {} --secs {}`) \
         on {} logical CPUs ({cpu}), {redis}, 5 local nodes on loopback started by the bench, Linux. \
         Every figure is the median of {} rounds taken in the same run; ratios compare figures from that run. \
         Date: {}.\n\n",
        args.rounds, args.iters, args.secs,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        args.rounds,
        today(),
    ));
    if !node {
        out.push_str("node-redlock: skipped (Node.js not installed).\n\n");
    }
    out.push_str("## Uncontended acquire + release (1 client, distinct keys)\n\n");
    out.push_str(
        "| client | p50 | p99 | p50 / floor (quorum) | p50 / rslock |\n|---|---|---|---|---|\n",
    );
    for name in [
        "floor-quorum",
        "floor-all",
        "rslock",
        "node-redlock",
        "ours",
    ] {
        let p50 = g(&format!("lat_p50/{name}"));
        if p50.is_nan() {
            continue;
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            label(name),
            ms(p50),
            ms(g(&format!("lat_p99/{name}"))),
            ratio(p50, g("lat_p50/floor-quorum")),
            ratio(p50, g("lat_p50/rslock"))
        ));
    }
    out.push_str("\n## Throughput (acquire + release pairs per second, distinct keys)\n\n");
    out.push_str("| client | limit | 1 client | 16 clients | 64 clients | 64 / rslock |\n|---|---|---|---|---|---|\n");
    for (name, limit) in [
        ("floor-quorum", "none"),
        ("rslock", "none"),
        ("node-redlock", "none"),
        ("ours", "10 (default)"),
        ("ours-256", "256"),
    ] {
        let t1 = g(&format!("tp1/{name}"));
        if t1.is_nan() {
            continue;
        }
        let t64 = g(&format!("tp64/{name}"));
        out.push_str(&format!(
            "| {} | {limit} | {:.0} | {:.0} | {t64:.0} | {} |\n",
            label(name),
            t1,
            g(&format!("tp16/{name}")),
            ratio(t64, g("tp64/rslock"))
        ));
    }
    out.push_str("\n## Contended: 16 clients on one key (acquisitions per second, each library's default retry pause)\n\n");
    out.push_str("| client | acquisitions/s |\n|---|---|\n");
    for name in ["rslock", "node-redlock", "ours"] {
        let v = g(&format!("contended/{name}"));
        if !v.is_nan() {
            out.push_str(&format!("| {} | {v:.0} |\n", label(name)));
        }
    }
    out.push_str("\n## One node of 5 slowed by 50 ms (proxy) or dead (nothing listening): uncontended p50\n\n");
    out.push_str(
        "| client | healthy | one slow | slow / healthy | one dead |\n|---|---|---|---|---|\n",
    );
    for name in ["floor-quorum", "floor-all", "rslock", "ours"] {
        let h = g(&format!("lat_p50/{name}"));
        let s = g(&format!("slow_p50/{name}"));
        let d = g(&format!("dead_p50/{name}"));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            label(name),
            ms(h),
            ms(s),
            ratio(s, h),
            if d.is_nan() { "-".into() } else { ms(d) }
        ));
    }
    out.push_str("\n## The lock core alone, and memory\n\n");
    out.push_str("| what | value |\n|---|---|\n");
    out.push_str(&format!(
        "| wasm boundary: one call (instance from the warm pool + acquire in the core + 5 in-memory nodes), p50 | {:.1} us |\n",
        g("boundary_call_p50")
    ));
    out.push_str(&format!(
        "| the same, acquire + release, p50 | {:.1} us |\n",
        g("boundary_pair_p50")
    ));
    out.push_str(&format!(
        "| host RSS: before / while holding 10,000 locks / peak | {:.1} / {:.1} / {:.1} MiB |\n",
        g("rss_before_mib"),
        g("rss_held_mib"),
        g("peak_mib")
    ));
    let (t, r) = (g("cli_true_ms"), g("cli_run_ms"));
    if !r.is_nan() {
        out.push_str(&format!(
            "| cold `redlock run -- true` / bare `true` (median of 21, wall) | {r:.1} / {t:.1} ms: {:.1} ms above |\n",
            r - t
        ));
    }
    out.push_str("\n## Targets\n\n| target | measured | met |\n|---|---|---|\n");
    let mut target = |what: &str, value: f64, limit: f64, lower_is_better: bool, shown: String| {
        let met = if lower_is_better {
            value <= limit
        } else {
            value >= limit
        };
        out.push_str(&format!(
            "| {what} | {shown} | {} |\n",
            if met { "yes" } else { "**no**" }
        ));
    };
    let l = g("lat_p50/ours");
    target(
        "uncontended p50 <= 1.15 x floor (quorum)",
        l / g("lat_p50/floor-quorum"),
        1.15,
        true,
        ratio(l, g("lat_p50/floor-quorum")),
    );
    target(
        "uncontended p50 <= 0.9 x rslock",
        l / g("lat_p50/rslock"),
        0.9,
        true,
        ratio(l, g("lat_p50/rslock")),
    );
    let best64 = g("tp64/ours").max(g("tp64/ours-256"));
    target(
        "throughput at 64 clients >= 1.2 x rslock (best limit)",
        best64 / g("tp64/rslock"),
        1.2,
        false,
        ratio(best64, g("tp64/rslock")),
    );
    target(
        "one node slowed 50 ms: p50 <= 1.3 x healthy",
        g("slow_p50/ours") / l,
        1.3,
        true,
        ratio(g("slow_p50/ours"), l),
    );
    target(
        "wasm boundary (instance + call) p50 <= 15 us",
        g("boundary_call_p50"),
        15.0,
        true,
        format!("{:.1} us", g("boundary_call_p50")),
    );
    if !r.is_nan() {
        target(
            "cold `redlock run -- true` <= 50 ms above bare `true`",
            r - t,
            50.0,
            true,
            format!("{:.1} ms", r - t),
        );
    }
    out
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
