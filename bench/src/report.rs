//! Statistics over rounds and the Markdown of docs/BENCHMARKS.md.
//!
//! A figure is the median over rounds of one metric. A ratio is computed in
//! each round from that round's two figures, and the report shows the median
//! of these per-round ratios with their spread, "1.25x (1.20-1.31)": min to
//! max over the rounds. A ratio of two medians could pair a good round of
//! one contender with a bad round of the other; a per-round ratio cannot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::Args;
use crate::contenders::SAME_POLICY;
use crate::faults::Fault;
use crate::measure::median;

/// Metric name -> value, for one round.
pub type Round = BTreeMap<String, f64>;

/// Client counts of the throughput table.
pub const CLIENTS: [usize; 3] = [1, 16, 64];

/// A metric or a ratio over rounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Rounds that had it.
    pub rounds: usize,
}

impl Stat {
    fn of(v: &[f64]) -> Option<Stat> {
        let v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        Some(Stat {
            median: median(&v),
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            rounds: v.len(),
        })
    }

    /// "1.25x (1.20-1.31)"; without the spread when one round had it.
    fn ratio(&self) -> String {
        if self.rounds > 1 {
            format!("{:.2}x ({:.2}-{:.2})", self.median, self.min, self.max)
        } else {
            format!("{:.2}x", self.median)
        }
    }
}

/// What the run was and where, for the report's first paragraph.
pub struct Setup {
    command: String,
    machine: String,
    versions: String,
    node: bool,
    elapsed_s: f64,
    /// The 1-minute load average at the start and the end of the run.
    load: (f64, f64),
    date: String,
    args: Args,
}

impl Setup {
    pub fn describe(
        root: &Path,
        args: &Args,
        node: bool,
        elapsed_s: f64,
        load: (f64, f64),
    ) -> Setup {
        let first_line = |program: &str, arg: &str| {
            Command::new(program)
                .arg(arg)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_default();
        let redis: String = first_line(&redlock_wasm::local::binary(), "--version")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        let machine = format!(
            "{} logical CPUs ({cpu}), Linux, {redis}",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
        );
        let mut versions = format!(
            "rslock {}",
            locked_version(&root.join("Cargo.lock"), "rslock")
        );
        if node {
            let npm = |name: &str| {
                std::fs::read_to_string(root.join("bench/package-lock.json"))
                    .ok()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                    .and_then(|v| {
                        v["packages"][format!("node_modules/{name}")]["version"]
                            .as_str()
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| "?".into())
            };
            let _ = write!(
                versions,
                ", node-redlock {} on ioredis {}, Node.js {}",
                npm("redlock"),
                npm("ioredis"),
                first_line("node", "--version").trim_start_matches('v')
            );
        }
        let command = format!(
            "./target/release/redlock-bench --rounds {} --iters {} --secs {} --fault-iters {} \
             --fault-secs {} --hang-secs {} --node-warmup {} --workers {}",
            args.rounds,
            args.iters,
            args.secs,
            args.fault_iters,
            args.fault_secs,
            args.hang_secs,
            args.node_warmup,
            args.workers
        );
        Setup {
            command,
            machine,
            versions,
            node,
            elapsed_s,
            load,
            date: first_line("date", "+%Y-%m-%d"),
            args: args.clone(),
        }
    }
}

/// The 1-minute load average: other work on the machine shows here.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The version of `name` in a Cargo.lock.
fn locked_version(lock: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(lock).unwrap_or_default();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l == format!("name = \"{name}\"")
            && let Some(v) = lines.next().and_then(|v| v.strip_prefix("version = "))
        {
            return v.trim_matches('"').to_owned();
        }
    }
    "?".into()
}

/// The contender's name in the tables.
pub fn label(name: &str) -> &str {
    match name {
        "floor-quorum" => "floor (quorum)",
        "floor-all" => "floor (all nodes)",
        "ours" => "redlock-wasm",
        "ours-256" => "redlock-wasm, limit 256",
        "ours-mt" => "redlock-wasm, multi-thread",
        "ours-fenced" => "redlock-wasm, fenced",
        other => other,
    }
}

fn runtime(name: &str, workers: usize) -> String {
    match name {
        "node-redlock" => "Node.js".into(),
        "ours-mt" => format!("tokio multi-thread, {workers} workers"),
        _ => "tokio current-thread".into(),
    }
}

fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1000.0)
}

/// Every round's metrics, and the ratios the report computed from them.
struct Runs<'a> {
    rounds: &'a [Round],
    once: &'a Round,
    ratios: BTreeMap<String, Stat>,
}

impl Runs<'_> {
    fn stat(&self, key: &str) -> Option<Stat> {
        let v: Vec<f64> = self
            .rounds
            .iter()
            .filter_map(|r| r.get(key).copied())
            .collect();
        Stat::of(&v)
    }

    fn med(&self, key: &str) -> f64 {
        self.stat(key).map_or(f64::NAN, |s| s.median)
    }

    /// In how many rounds the key was there.
    fn count(&self, key: &str) -> usize {
        self.rounds.iter().filter(|r| r.contains_key(key)).count()
    }

    fn sum(&self, key: &str) -> f64 {
        self.rounds.iter().filter_map(|r| r.get(key)).sum()
    }

    /// a / b in each round that had both; kept for benchmarks.json.
    fn ratio(&mut self, a: &str, b: &str) -> Option<Stat> {
        let v: Vec<f64> = self
            .rounds
            .iter()
            .filter_map(|r| Some(r.get(a)? / r.get(b)?))
            .collect();
        let s = Stat::of(&v)?;
        self.ratios.insert(format!("{a} / {b}"), s);
        Some(s)
    }

    fn ratio_cell(&mut self, a: &str, b: &str) -> String {
        if a == b {
            return "1.00x".into();
        }
        self.ratio(a, b).map_or("-".into(), |s| s.ratio())
    }
}

/// The Markdown report and the JSON that goes with it.
pub fn write(rounds: &[Round], once: &Round, setup: &Setup) -> (String, serde_json::Value) {
    let mut r = Runs {
        rounds,
        once,
        ratios: BTreeMap::new(),
    };
    let mut out = String::new();
    header(&mut out, setup);
    uncontended(&mut out, &mut r, setup);
    throughput(&mut out, &mut r, setup);
    contended(&mut out, &mut r, setup);
    faults(&mut out, &mut r, setup);
    core_and_memory(&mut out, &mut r);
    targets(&mut out, &mut r);
    let medians: BTreeMap<&String, Stat> = rounds
        .iter()
        .flat_map(|x| x.keys())
        .filter_map(|k| Some((k, r.stat(k)?)))
        .collect();
    let json = serde_json::json!({
        "command": setup.command,
        "machine": setup.machine,
        "versions": setup.versions,
        "date": setup.date,
        "load_average": [setup.load.0, setup.load.1],
        "rounds": rounds,
        "once": once,
        "over_rounds": medians,
        "ratios": r.ratios,
    });
    (out, json)
}

fn header(out: &mut String, s: &Setup) {
    let a = &s.args;
    out.push_str("# Benchmarks\n\n");
    let _ = write!(
        out,
        "Measured by `./scripts/bench`, that is `{}`, on {}, with 5 local nodes on loopback \
         started by the bench; {}. Date: {}; the run took {:.0} s; the 1-minute load average \
         was {:.2} at its start and {:.2} at its end.\n\n",
        s.command, s.machine, s.versions, s.date, s.elapsed_s, s.load.0, s.load.1
    );
    let _ = write!(
        out,
        "**Method.** {} round{}; each round measures every contender once, in an order that \
         rotates by one place from round to round. A figure is the median over the rounds. \
         A ratio is computed within each round, from that round's two figures, and shown as \
         the median of the per-round ratios with their spread, min-max: `1.25x (1.20-1.31)`. \
         A pair is one acquire and one release, on a new key unless the row says otherwise. \
         Client CPU is the client process's user + system time (every thread; getrusage for the \
         Rust clients, `process.cpuUsage()` for Node.js) over the measured loop, divided by its \
         pairs; the 5 redis-server processes are not in it. A pair that gets no answer within \
         {} s ends its run, which is reported as \"no answer in {} s\".\n\n",
        a.rounds,
        if a.rounds == 1 { "" } else { "s" },
        a.hang_secs,
        a.hang_secs
    );
    if !s.node {
        out.push_str("node-redlock: skipped (Node.js or npm not installed).\n\n");
    }
}

fn uncontended(out: &mut String, r: &mut Runs<'_>, s: &Setup) {
    let _ = write!(
        out,
        "## Uncontended: 1 client, {} sequential pairs per round\n\n",
        s.args.iters
    );
    out.push_str(
        "| client | runtime | p50 | p99 | p50 / floor (quorum) | p50 / rslock | client CPU per pair | CPU / floor's |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for name in [
        "floor-quorum",
        "floor-all",
        "rslock",
        "node-redlock",
        "ours",
        "ours-mt",
        "ours-fenced",
    ] {
        let p50 = format!("lat_p50/{name}");
        if r.count(&p50) == 0 {
            continue;
        }
        let cells = [
            label(name).to_owned(),
            runtime(name, s.args.workers),
            ms(r.med(&p50)),
            ms(r.med(&format!("lat_p99/{name}"))),
            r.ratio_cell(&p50, "lat_p50/floor-quorum"),
            r.ratio_cell(&p50, "lat_p50/rslock"),
            format!("{:.1} us", r.med(&format!("lat_cpu/{name}"))),
            r.ratio_cell(&format!("lat_cpu/{name}"), "lat_cpu/floor-quorum"),
        ];
        row(out, &cells);
    }
    if r.count("lat_p50/ours-fenced") > 0 {
        let _ = write!(
            out,
            "\nFencing (*redlock-wasm, fenced*: every lock carries a fence monotonic across the \
             quorum, docs/FENCING.md) against the same library without: p50 {}, client CPU per \
             pair {}. One round trip while the nodes' counters agree, as here; a second when \
             they do not.\n",
            r.ratio_cell("lat_p50/ours-fenced", "lat_p50/ours"),
            r.ratio_cell("lat_cpu/ours-fenced", "lat_cpu/ours"),
        );
    }
    out.push('\n');
}

fn throughput(out: &mut String, r: &mut Runs<'_>, s: &Setup) {
    let _ = write!(
        out,
        "## Throughput: pairs per second on new keys, {} s per run\n\n",
        s.args.secs
    );
    let mut head = "| client | runtime | concurrency limit |".to_owned();
    for c in CLIENTS {
        let _ = write!(head, " {c} client{} |", if c == 1 { "" } else { "s" });
    }
    let top = CLIENTS[CLIENTS.len() - 1];
    let _ = writeln!(
        head,
        " {top} / rslock | client CPU per pair, {top} clients | CPU / floor's |"
    );
    out.push_str(&head);
    out.push_str(&"|---".repeat(CLIENTS.len() + 6));
    out.push_str("|\n");
    for (name, limit) in [
        ("floor-quorum", "none"),
        ("rslock", "none"),
        ("node-redlock", "none"),
        ("ours", "default"),
        ("ours-256", "256"),
        ("ours-mt", "default"),
    ] {
        if r.count(&format!("tp1/{name}")) == 0 {
            continue;
        }
        let mut cells = vec![
            label(name).to_owned(),
            runtime(name, s.args.workers),
            limit.to_owned(),
        ];
        for c in CLIENTS {
            cells.push(format!("{:.0}", r.med(&format!("tp{c}/{name}"))));
        }
        cells.push(r.ratio_cell(&format!("tp{top}/{name}"), &format!("tp{top}/rslock")));
        let cpu = format!("tp{top}_cpu/{name}");
        cells.push(format!("{:.1} us", r.med(&cpu)));
        cells.push(r.ratio_cell(&cpu, &format!("tp{top}_cpu/floor-quorum")));
        row(out, &cells);
    }
    out.push('\n');
}

fn contended(out: &mut String, r: &mut Runs<'_>, s: &Setup) {
    let pause = SAME_POLICY.max_pause.as_millis();
    let _ = write!(
        out,
        "## Contended: 16 clients on one key, acquisitions per second, {} s per run\n\n\
         Each library with its own default retry policy, then all with the same one: \
         {} attempts, a pause uniform on 0-{pause} ms between them.\n\n",
        s.args.secs, SAME_POLICY.attempts
    );
    out.push_str(
        "| client | its default retry policy | defaults | same policy | same policy / rslock |\n\
         |---|---|---|---|---|\n",
    );
    for (name, policy) in [
        ("rslock", "3 attempts, pause 0-200 ms"),
        ("node-redlock", "11 attempts, pause 100-300 ms"),
        (
            "ours",
            "33 attempts, pause 50-200 ms, within the bench's 2 s deadline",
        ),
    ] {
        if r.count(&format!("contended/{name}")) == 0 {
            continue;
        }
        let same = format!("contended_same/{name}");
        let cells = [
            label(name).to_owned(),
            policy.to_owned(),
            format!("{:.0}", r.med(&format!("contended/{name}"))),
            format!("{:.0}", r.med(&same)),
            r.ratio_cell(&same, "contended_same/rslock"),
        ];
        row(out, &cells);
    }
    out.push('\n');
}

fn faults(out: &mut String, r: &mut Runs<'_>, s: &Setup) {
    let a = &s.args;
    let _ = write!(
        out,
        "## One node of 5 faulty: uncontended p50, and its ratio to the same client's healthy p50 in the same round\n\n\
         The clients connect and warm up while all nodes are healthy; then the last node is \
         slowed (its replies delayed 50 ms by a proxy), paused (SIGSTOP: connections stay \
         open, nothing answers), blackholed (a proxy swallows every byte) or dead (nothing \
         listens: it never connected). Up to {} pairs or {} s per run.\n\n",
        a.fault_iters, a.fault_secs
    );
    let mut head = "| client | healthy |".to_owned();
    for f in Fault::ALL {
        let _ = write!(head, " {} |", f.heading());
    }
    out.push_str(&head);
    out.push('\n');
    out.push_str(&"|---".repeat(Fault::ALL.len() + 2));
    out.push_str("|\n");
    for name in [
        "floor-quorum",
        "floor-all",
        "rslock",
        "node-redlock",
        "ours",
    ] {
        let healthy = format!("lat_p50/{name}");
        if r.count(&healthy) == 0 {
            continue;
        }
        let mut cells = vec![label(name).to_owned(), ms(r.med(&healthy))];
        for f in Fault::ALL {
            let k = f.key();
            let p50 = format!("{k}_p50/{name}");
            let hung = r.count(&format!("{k}_hung/{name}"));
            let failed = r.sum(&format!("{k}_failed/{name}"));
            let mut cell = if hung == r.rounds.len() && hung > 0 {
                format!("no answer in {} s", a.hang_secs)
            } else if r.count(&p50) == 0 {
                "-".into()
            } else {
                format!("{}, {}", ms(r.med(&p50)), r.ratio_cell(&p50, &healthy))
            };
            if hung > 0 && hung < r.rounds.len() {
                let _ = write!(
                    cell,
                    "; no answer in {} s in {hung} of {} rounds",
                    a.hang_secs,
                    r.rounds.len()
                );
            }
            if failed > 0.0 {
                let _ = write!(cell, "; {failed:.0} pairs failed");
            }
            cells.push(cell);
        }
        row(out, &cells);
    }
    out.push('\n');
}

fn core_and_memory(out: &mut String, r: &mut Runs<'_>) {
    out.push_str("## The lock core alone, and memory\n\n| what | value |\n|---|---|\n");
    let _ = writeln!(
        out,
        "| wasm boundary: one call (instance from the warm pool + acquire in the core + 5 in-memory nodes), p50 | {:.1} us |",
        r.med("boundary_call_p50")
    );
    let _ = writeln!(
        out,
        "| the same, acquire + release, p50 | {:.1} us |",
        r.med("boundary_pair_p50")
    );
    let once = |k: &str| r.once.get(k).copied().unwrap_or(f64::NAN);
    let _ = writeln!(
        out,
        "| host RSS: before / while holding 10,000 locks / peak (once per run) | {:.1} / {:.1} / {:.1} MiB |",
        once("rss_before_mib"),
        once("rss_held_mib"),
        once("peak_mib")
    );
    let (t, c) = (once("cli_true_ms"), once("cli_run_ms"));
    if !c.is_nan() {
        let _ = writeln!(
            out,
            "| cold `redlock run -- true` / bare `true` (median of 21, wall, once per run) | {c:.1} / {t:.1} ms: {:.1} ms above |",
            c - t
        );
    }
    out.push('\n');
}

fn targets(out: &mut String, r: &mut Runs<'_>) {
    out.push_str(
        "## Targets\n\nEach is judged on the median of the per-round ratios.\n\n\
         | target | measured | met |\n|---|---|---|\n",
    );
    let mut line = |what: &str, stat: Option<Stat>, limit: f64, at_most: bool, unit: &str| {
        let (shown, met) = match stat {
            None => ("-".to_owned(), "-"),
            Some(s) => {
                let ok = if at_most {
                    s.median <= limit
                } else {
                    s.median >= limit
                };
                let shown = if unit == "x" {
                    s.ratio()
                } else {
                    format!("{:.1} {unit}", s.median)
                };
                (shown, if ok { "yes" } else { "**no**" })
            }
        };
        let _ = writeln!(out, "| {what} | {shown} | {met} |");
    };
    let top = CLIENTS[CLIENTS.len() - 1];
    line(
        "uncontended p50 <= 1.1 x floor (quorum)",
        r.ratio("lat_p50/ours", "lat_p50/floor-quorum"),
        1.1,
        true,
        "x",
    );
    line(
        &format!("throughput at {top} clients >= 1.2 x rslock, default configuration"),
        r.ratio(&format!("tp{top}/ours"), &format!("tp{top}/rslock")),
        1.2,
        false,
        "x",
    );
    line(
        &format!("throughput at {top} clients >= 1.2 x rslock, limit raised to 256"),
        r.ratio(&format!("tp{top}/ours-256"), &format!("tp{top}/rslock")),
        1.2,
        false,
        "x",
    );
    for f in [Fault::Slow, Fault::Paused, Fault::Dead] {
        let k = f.key();
        line(
            &format!("{}: p50 <= 1.3 x healthy", f.heading()),
            r.ratio(&format!("{k}_p50/ours"), "lat_p50/ours"),
            1.3,
            true,
            "x",
        );
    }
    line(
        "wasm boundary (one call into a warm instance, 5 in-memory nodes) p50 <= 5 us",
        r.stat("boundary_call_p50"),
        5.0,
        true,
        "us",
    );
    line(
        &format!(
            "client CPU per pair at {top} clients, default configuration <= 1.3 x the floor's"
        ),
        r.ratio(
            &format!("tp{top}_cpu/ours"),
            &format!("tp{top}_cpu/floor-quorum"),
        ),
        1.3,
        true,
        "x",
    );
    let (t, c) = (
        r.once.get("cli_true_ms").copied(),
        r.once.get("cli_run_ms").copied(),
    );
    if let (Some(t), Some(c)) = (t, c) {
        line(
            "cold `redlock run -- true` <= 50 ms above bare `true`",
            Stat::of(&[c - t]),
            50.0,
            true,
            "ms",
        );
    }
    out.push('\n');
}

fn row(out: &mut String, cells: &[String]) {
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}
