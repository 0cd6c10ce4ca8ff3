//! Benchmarks, in one run so the ratios stay fair on a noisy machine: the
//! quorum floor (the redis crate used directly), rslock, node-redlock (when
//! Node.js is installed) and redlock-wasm, on 5 local `redis-server` nodes
//! that this program starts and stops.
//!
//! The method: every round measures every contender once, in an order that
//! rotates from round to round; a ratio is taken within each round, and the
//! report gives the median of the per-round ratios with their spread (min to
//! max), never a ratio of medians taken from different rounds.
//!
//! `./scripts/bench` builds everything in release mode and runs it; it
//! writes docs/BENCHMARKS.md, docs/benchmarks.json and docs/latency.png.
//!
//! Modules: `contenders` (who is measured), `measure` (the loops, CPU time),
//! `node` (node-redlock's child process), `faults` (the faulty node),
//! `footprint` (memory, cold start), `report` (statistics and Markdown),
//! `chart`, `hosts` (the lock core from other hosts, for docs/HOSTS.md) and
//! `scaling` (cluster members against single processes, for docs/SCALING.md).

mod chart;
mod contenders;
mod faults;
mod footprint;
mod hosts;
mod measure;
mod node;
mod report;
mod scaling;

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use redlock_wasm::Redlock;
use redlock_wasm::local::LocalCluster;

use crate::contenders::{Contender, Retry, SAME_POLICY, TTL};
use crate::faults::{Fault, Site};
use crate::measure::Bounds;
use crate::node::NodeChild;
use crate::report::Round;

#[derive(Debug, Clone, Parser)]
#[command(about = "Benchmarks redlock-wasm against the quorum floor, rslock and node-redlock")]
pub struct Args {
    /// Rounds; each ratio is the median of the per-round ratios.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Sequential pairs per uncontended latency run.
    #[arg(long, default_value_t = 2000)]
    iters: usize,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 1.0)]
    secs: f64,
    /// At most this many pairs per fault run...
    #[arg(long, default_value_t = 200)]
    fault_iters: usize,
    /// ...and at most this many seconds (once 3 pairs are in).
    #[arg(long, default_value_t = 1.0)]
    fault_secs: f64,
    /// A pair without an answer after this many seconds counts as a hang:
    /// the run stops and the report says "no answer in N s".
    #[arg(long, default_value_t = 2.0)]
    hang_secs: f64,
    /// Seconds of node-redlock pairs before anything is measured, so that
    /// V8 has optimised its hot code.
    #[arg(long, default_value_t = 3.0)]
    node_warmup: f64,
    /// Worker threads of the multi-thread runtime row.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Where BENCHMARKS.md, benchmarks.json and latency.png go.
    #[arg(long, default_value = "docs")]
    out: PathBuf,
    #[command(subcommand)]
    sub: Option<Sub>,
}

#[derive(Debug, Clone, Subcommand)]
enum Sub {
    /// Only redlock-wasm's throughput on distinct keys, for a profiler.
    Profile {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// The concurrency limit; the library's default when not given.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
    /// Acquire + release pairs on new keys from each host of the lock core:
    /// the Rust host, Python, Node.js and the wasmtime CLI (needs
    /// ./scripts/setup --for-tests).
    Hosts {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 300)]
        iters: usize,
        #[arg(long, default_value_t = 21)]
        cli_runs: usize,
    },
    /// Only the wasm boundary (5 in-memory nodes): acquire + release pairs,
    /// for a profiler.
    Boundary {
        #[arg(long, default_value_t = 200_000)]
        pairs: usize,
    },
    /// Quorum members that are Redis Clusters against single processes, in
    /// one run (docs/SCALING.md); needs redis-cli.
    Scaling(scaling::Plan),
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
    match args.sub.clone() {
        Some(Sub::Rss { nodes, locks }) => rt.block_on(footprint::rss_child(&nodes, locks)),
        Some(Sub::Profile {
            clients,
            limit,
            secs,
        }) => rt.block_on(async {
            let cluster = LocalCluster::start(5)?;
            let ours = Rc::new(Contender::ours(&cluster.urls(), limit, Retry::Defaults)?);
            ours.warm("profile").await?;
            let tp = ours.throughput("profile", clients, secs, false).await?;
            println!(
                "{:.0} pairs/s, {:.1} us of client CPU per pair",
                tp.per_sec, tp.cpu_us_per_pair
            );
            Ok(())
        }),
        Some(Sub::Hosts {
            rounds,
            iters,
            cli_runs,
        }) => rt.block_on(hosts::run(&workspace_root()?, rounds, iters, cli_runs)),
        Some(Sub::Scaling(plan)) => rt.block_on(scaling::run(plan)),
        Some(Sub::Boundary { pairs }) => rt.block_on(async {
            let mut m = Round::new();
            boundary(pairs, 0, &mut m).await?;
            println!(
                "one call p50 {:.1} us, acquire + release p50 {:.1} us",
                m["boundary_call_p50"], m["boundary_pair_p50"]
            );
            Ok(())
        }),
        None => rt.block_on(run(args)),
    }
}

/// What every round shares.
struct Bench {
    args: Args,
    cluster: LocalCluster,
    node: Option<Rc<NodeChild>>,
}

async fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let load_start = report::loadavg();
    let root = workspace_root()?;
    let cluster = LocalCluster::start(5).context("start 5 local redis-server nodes")?;
    let urls = cluster.urls();
    eprintln!("nodes: {}", urls.join(" "));
    let node = match start_node(&root, &urls, args.node_warmup).await {
        Ok(n) => n.map(Rc::new),
        Err(e) => {
            eprintln!("node-redlock skipped: {e:#}");
            None
        }
    };
    let bench = Bench {
        args: args.clone(),
        cluster,
        node,
    };
    let mut rounds: Vec<Round> = Vec::new();
    let mut last_samples = Vec::new();
    for round in 0..args.rounds {
        eprintln!(
            "round {} of {} ({:.0} s so far)",
            round + 1,
            args.rounds,
            started.elapsed().as_secs_f64()
        );
        let (r, samples) = one_round(&bench, round).await?;
        rounds.push(r);
        last_samples = samples;
    }
    eprintln!("memory with 10,000 locks held; cold CLI");
    let mut once = footprint::rss(&urls)?;
    once.extend(footprint::cold_cli(&urls)?);
    let elapsed = started.elapsed().as_secs_f64();

    std::fs::create_dir_all(&args.out)?;
    let load = (load_start, report::loadavg());
    let setup = report::Setup::describe(&root, &args, bench.node.is_some(), elapsed, load);
    let (table, json) = report::write(&rounds, &once, &setup);
    println!("{table}");
    let read =
        |name: &str| std::fs::read_to_string(root.join("bench").join(name)).unwrap_or_default();
    let (engine, notes) = (read("engine.md"), read("notes.md"));
    std::fs::write(
        args.out.join("BENCHMARKS.md"),
        format!("{table}\n{engine}\n{notes}"),
    )?;
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
    eprintln!("done in {elapsed:.0} s");
    Ok(())
}

/// node-redlock's child with its JIT warmed up, or `None` without Node.js.
async fn start_node(root: &Path, urls: &[String], warmup: f64) -> Result<Option<NodeChild>> {
    let Some(dir) = node::prepare(root)? else {
        eprintln!("node-redlock skipped: Node.js or npm is not installed");
        return Ok(None);
    };
    let child = NodeChild::start(&dir).await?;
    eprintln!("node-redlock: {warmup} s of warm-up");
    let id = child.open(urls, Retry::Defaults).await?;
    child.warm(id, warmup).await?;
    child.close(id).await?;
    Ok(Some(child))
}

pub fn workspace_root() -> Result<PathBuf> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    Ok(here
        .parent()
        .context("bench/ sits in the workspace")?
        .to_path_buf())
}

/// `v` rotated left by `round`: each contender takes each place in turn.
fn rotated<T: Clone>(v: &[T], round: usize) -> Vec<T> {
    let mut v = v.to_vec();
    if !v.is_empty() {
        let n = round % v.len();
        v.rotate_left(n);
    }
    v
}

/// The named contenders of one section.
type Named = Vec<(&'static str, Rc<Contender>)>;

fn pick(all: &Named, names: &[&str]) -> Named {
    names
        .iter()
        .filter_map(|n| all.iter().find(|(m, _)| m == n).cloned())
        .collect()
}

async fn close_all(all: Named) -> Result<()> {
    for (name, c) in all {
        if let Ok(c) = Rc::try_unwrap(c) {
            c.close().await.with_context(|| format!("close {name}"))?;
        }
    }
    Ok(())
}

/// Uncontended samples of the last round, for the chart.
type Samples = Vec<(String, Vec<f64>)>;

async fn one_round(b: &Bench, round: usize) -> Result<(Round, Samples)> {
    let args = &b.args;
    let urls = b.cluster.urls();
    let hang = Duration::from_secs_f64(args.hang_secs);
    let mut m = Round::new();
    let tag = |s: &str| format!("r{round}:{s}");

    let mut all: Named = vec![
        (
            "floor-quorum",
            Rc::new(Contender::floor(&urls, false).await?),
        ),
        ("floor-all", Rc::new(Contender::floor(&urls, true).await?)),
        ("rslock", Rc::new(Contender::rslock(&urls, Retry::Defaults))),
        (
            "ours",
            Rc::new(Contender::ours(&urls, None, Retry::Defaults)?),
        ),
        (
            "ours-256",
            Rc::new(Contender::ours(&urls, Some(256), Retry::Defaults)?),
        ),
        (
            "ours-mt",
            Rc::new(Contender::ours_mt(&urls, args.workers, None)?),
        ),
        ("ours-fenced", Rc::new(Contender::ours_fenced(&urls)?)),
    ];
    if let Some(child) = &b.node {
        all.push((
            "node-redlock",
            Rc::new(Contender::node(child, &urls, Retry::Defaults).await?),
        ));
    }
    for (name, c) in rotated(&all, round) {
        c.warm(&tag(name)).await?;
    }

    // Uncontended latency and CPU per pair.
    let mut samples = Vec::new();
    let lat = pick(
        &all,
        &[
            "floor-quorum",
            "floor-all",
            "rslock",
            "node-redlock",
            "ours",
            "ours-mt",
            "ours-fenced",
        ],
    );
    let bounds = Bounds {
        iters: args.iters,
        max_secs: None,
        hang,
    };
    for (name, c) in rotated(&lat, round) {
        eprintln!("  latency: {name}");
        let l = c.latency(&tag(&format!("lat-{name}")), &bounds).await?;
        record_latency(&mut m, "lat", name, &l);
        samples.push((name, l.samples_us));
    }
    // The chart's legend in a fixed order, whatever the round's order was.
    samples.sort_by_key(|(n, _)| lat.iter().position(|(m, _)| m == n));
    let samples = samples
        .into_iter()
        .map(|(n, s)| (report::label(n).to_owned(), s))
        .collect();

    // Throughput on distinct keys.
    let tp = pick(
        &all,
        &[
            "floor-quorum",
            "rslock",
            "node-redlock",
            "ours",
            "ours-256",
            "ours-mt",
        ],
    );
    for clients in report::CLIENTS {
        for (name, c) in rotated(&tp, round) {
            eprintln!("  throughput: {name}, {clients} clients");
            let t = c
                .throughput(
                    &tag(&format!("tp-{name}-{clients}")),
                    clients,
                    args.secs,
                    false,
                )
                .await?;
            m.insert(format!("tp{clients}/{name}"), t.per_sec);
            m.insert(format!("tp{clients}_cpu/{name}"), t.cpu_us_per_pair);
        }
    }

    // Contended: 16 clients on one key, each library's defaults, then one
    // retry policy for all.
    let mut same: Named = vec![
        (
            "rslock",
            Rc::new(Contender::rslock(&urls, Retry::Same(SAME_POLICY))),
        ),
        (
            "ours",
            Rc::new(Contender::ours(&urls, None, Retry::Same(SAME_POLICY))?),
        ),
    ];
    if let Some(child) = &b.node {
        same.push((
            "node-redlock",
            Rc::new(Contender::node(child, &urls, Retry::Same(SAME_POLICY)).await?),
        ));
    }
    for (name, c) in rotated(&same, round) {
        c.warm(&tag(&format!("same-{name}"))).await?;
    }
    let defaults = pick(&all, &["rslock", "node-redlock", "ours"]);
    for (policy, set) in [("contended", &defaults), ("contended_same", &same)] {
        for (name, c) in rotated(set, round) {
            eprintln!("  {policy}: {name}");
            let t = c
                .throughput(&tag(&format!("{policy}-{name}")), 16, args.secs, true)
                .await?;
            m.insert(format!("{policy}/{name}"), t.per_sec);
        }
    }
    close_all(same).await?;
    drop((lat, tp, defaults));
    close_all(all).await?;

    // One node of five slow, paused, blackholed or dead.
    for fault in Fault::ALL {
        faulty_node(b, round, fault, &mut m).await?;
    }

    boundary(args.iters, round, &mut m).await?;
    flush(&b.cluster);
    Ok((m, samples))
}

fn record_latency(m: &mut Round, section: &str, name: &str, l: &measure::Latency) {
    if !l.samples_us.is_empty() {
        m.insert(format!("{section}_p50/{name}"), l.pct(50.0));
        m.insert(format!("{section}_p99/{name}"), l.pct(99.0));
        m.insert(format!("{section}_cpu/{name}"), l.cpu_us_per_pair);
    }
    m.insert(format!("{section}_failed/{name}"), l.failed as f64);
    if l.hung {
        m.insert(format!("{section}_hung/{name}"), 1.0);
    }
}

async fn faulty_node(b: &Bench, round: usize, fault: Fault, m: &mut Round) -> Result<()> {
    let args = &b.args;
    let site = Site::prepare(fault, &b.cluster).await?;
    let urls = site.urls();
    let mut cs: Named = vec![(
        "floor-quorum",
        Rc::new(Contender::floor(urls, false).await?),
    )];
    // The floor connects only to nodes that answer: with a dead node it
    // would wait for 4 of 4, which is not the point of waiting for all.
    if fault != Fault::Dead {
        cs.push(("floor-all", Rc::new(Contender::floor(urls, true).await?)));
    }
    cs.push(("rslock", Rc::new(Contender::rslock(urls, Retry::Defaults))));
    cs.push((
        "ours",
        Rc::new(Contender::ours(urls, None, Retry::Defaults)?),
    ));
    if let Some(child) = &b.node {
        cs.push((
            "node-redlock",
            Rc::new(Contender::node(child, urls, Retry::Defaults).await?),
        ));
    }
    let key = fault.key();
    for (name, c) in &cs {
        c.warm(&format!("r{round}:{key}-{name}")).await?;
    }
    let bounds = Bounds {
        iters: args.fault_iters,
        max_secs: Some(args.fault_secs),
        hang: Duration::from_secs_f64(args.hang_secs),
    };
    site.inject(&b.cluster)?;
    let mut result = Ok(());
    for (name, c) in rotated(&cs, round) {
        eprintln!("  {key} node: {name}");
        match c
            .latency(&format!("r{round}:{key}-lat-{name}"), &bounds)
            .await
        {
            Ok(l) => record_latency(m, key, name, &l),
            Err(e) => {
                result = Err(e.context(format!("{key} node: {name}")));
                break;
            }
        }
    }
    site.heal(&b.cluster)?;
    close_all(cs).await?;
    result
}

/// The wasm boundary alone: in-memory nodes, no Redis, no sockets.
async fn boundary(iters: usize, round: usize, m: &mut Round) -> Result<()> {
    eprintln!("  wasm boundary");
    let mem = Redlock::builder().in_memory_nodes(5).ttl(TTL).build()?;
    let mut acq = Vec::with_capacity(iters);
    let mut pair = Vec::with_capacity(iters);
    for i in 0..iters + 100 {
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
    Ok(())
}

/// Empties the nodes between rounds (keys of a paused node's backlog, locks
/// that a hung client left).
fn flush(cluster: &LocalCluster) {
    for n in &cluster.nodes {
        if let Ok(mut c) = redis::Client::open(n.url()).and_then(|c| c.get_connection()) {
            let _: redis::RedisResult<()> = redis::cmd("FLUSHALL").query(&mut c);
        }
    }
}
