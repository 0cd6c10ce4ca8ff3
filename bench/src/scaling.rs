//! `redlock-bench scaling`: quorum members that are Redis Clusters against
//! members that are single processes, in one run (issue #15, the numbers of
//! docs/SCALING.md). The clusters come from the same harness the tests use
//! (`LocalRedisCluster`), and are stopped at the end.
//!
//! Each round measures both deployments once, the first of them alternating
//! from round to round: the uncontended acquire + release latency, and the
//! throughput of `clients` callers on distinct keys with the client's CPU
//! per pair. A ratio (clusters over singles) is taken within each round; the
//! report gives the median of the per-round ratios with their spread. It
//! also gives the load per Redis process: a pair touches every member once,
//! so a single-process member carries every pair and each master of an
//! S-master cluster about 1/S of them.

use std::rc::Rc;

use anyhow::{Context, Result};
use redlock_wasm::local::{LocalCluster, LocalRedisCluster};

use crate::contenders::{Contender, Retry};
use crate::measure::{Bounds, median};

/// How `scaling` runs.
#[derive(Debug, Clone, clap::Args)]
pub struct Plan {
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Quorum members of each deployment.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// Masters per cluster member.
    #[arg(long, default_value_t = 3)]
    masters: usize,
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds per throughput run.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Sequential pairs per latency run.
    #[arg(long, default_value_t = 1000)]
    iters: usize,
    /// The concurrency limit of both managers; the library's default when
    /// not given.
    #[arg(long)]
    limit: Option<usize>,
}

/// One deployment's figures in one round.
#[derive(Debug, Clone, Copy)]
struct Figures {
    p50_us: f64,
    pairs_per_sec: f64,
    cpu_us_per_pair: f64,
}

pub async fn run(plan: Plan) -> Result<()> {
    anyhow::ensure!(
        redlock_wasm::local::cli_available(),
        "redis-cli is needed to make the clusters (Debian: apt-get install redis-tools)"
    );
    let singles = LocalCluster::start(plan.members).context("start the single processes")?;
    let clusters: Vec<LocalRedisCluster> = (0..plan.members)
        .map(|_| LocalRedisCluster::start(plan.masters))
        .collect::<Result<_, _>>()
        .context("start the clusters")?;
    let cluster_urls: Vec<String> = clusters.iter().map(LocalRedisCluster::url).collect();
    let single = Rc::new(Contender::ours(
        &singles.urls(),
        plan.limit,
        Retry::Defaults,
    )?);
    let cluster = Rc::new(Contender::ours(&cluster_urls, plan.limit, Retry::Defaults)?);
    single.warm("scaling-single").await?;
    cluster.warm("scaling-cluster").await?;

    let bounds = Bounds {
        iters: plan.iters,
        max_secs: Some(plan.secs * 2.0),
        hang: std::time::Duration::from_secs(5),
    };
    let measure = |c: Rc<Contender>, tag: String| {
        let bounds = bounds.clone();
        async move {
            let lat = c.latency(&format!("{tag}:lat"), &bounds).await?;
            anyhow::ensure!(!lat.hung, "{tag}: a pair got no answer");
            let tp = c
                .throughput(&format!("{tag}:tp"), plan.clients, plan.secs, false)
                .await?;
            Ok::<_, anyhow::Error>(Figures {
                p50_us: median(&lat.samples_us),
                pairs_per_sec: tp.per_sec,
                cpu_us_per_pair: tp.cpu_us_per_pair,
            })
        }
    };

    let load = crate::report::loadavg();
    let started = std::time::Instant::now();
    let mut rounds: Vec<(Figures, Figures)> = Vec::new();
    for round in 0..plan.rounds {
        let (s, c) = if round % 2 == 0 {
            let s = measure(single.clone(), format!("s{round}")).await?;
            (s, measure(cluster.clone(), format!("c{round}")).await?)
        } else {
            let c = measure(cluster.clone(), format!("c{round}")).await?;
            (measure(single.clone(), format!("s{round}")).await?, c)
        };
        eprintln!(
            "round {round}: singles {:.0} pairs/s, clusters {:.0} pairs/s",
            s.pairs_per_sec, c.pairs_per_sec
        );
        rounds.push((s, c));
    }
    print!(
        "{}",
        table(&plan, &rounds, load, crate::report::loadavg(), started)
    );
    Ok(())
}

/// "1.25x (1.20-1.31)": the median of per-round ratios and their spread.
fn ratio(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2}x ({min:.2}-{max:.2})", median(v))
}

fn table(
    plan: &Plan,
    rounds: &[(Figures, Figures)],
    load_before: f64,
    load_after: f64,
    started: std::time::Instant,
) -> String {
    use std::fmt::Write as _;
    let (m, s) = (plan.members, plan.masters);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{m} members: {m} single processes against {m} clusters of {s} masters; {} clients on \
         distinct keys, {} s per throughput run, {} pairs per latency run, {} rounds ({:.0} s, \
         load average {load_before:.1} -> {load_after:.1})\n",
        plan.clients,
        plan.secs,
        plan.iters,
        plan.rounds,
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| round | members | p50 (us) | pairs/s | per Redis process (pairs/s) | client CPU per pair (us) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for (i, (single, cluster)) in rounds.iter().enumerate() {
        for (what, f, per_process) in [
            ("singles", single, single.pairs_per_sec),
            ("clusters", cluster, cluster.pairs_per_sec / s as f64),
        ] {
            let _ = writeln!(
                out,
                "| {i} | {what} | {:.0} | {:.0} | {per_process:.0} | {:.1} |",
                f.p50_us, f.pairs_per_sec, f.cpu_us_per_pair
            );
        }
    }
    let per = |get: fn(&Figures) -> f64| -> Vec<f64> {
        rounds.iter().map(|(a, b)| get(b) / get(a)).collect()
    };
    let _ = writeln!(
        out,
        "\nClusters over singles, median of the per-round ratios (min-max):\n\n\
         | measure | ratio |\n|---|---|\n\
         | uncontended p50 | {} |\n\
         | pairs/s ({} clients) | {} |\n\
         | load per Redis process | {} |\n\
         | client CPU per pair | {} |",
        ratio(&per(|f| f.p50_us)),
        plan.clients,
        ratio(&per(|f| f.pairs_per_sec)),
        ratio(
            &per(|f| f.pairs_per_sec)
                .iter()
                .map(|r| r / s as f64)
                .collect::<Vec<_>>()
        ),
        ratio(&per(|f| f.cpu_us_per_pair)),
    );
    out
}
