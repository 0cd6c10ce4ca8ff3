//! Deployment checks: does a set of nodes meet Redlock's assumptions?
//!
//! Redlock is safe only on N independent masters that keep their keys (no
//! eviction, no restart that forgets locks before the longest TTL has
//! passed) and whose clocks behave; no peer checks this.
//! [`Redlock::check`] asks every node, read-only (`TIME`, `INFO`,
//! `CONFIG GET`, `ROLE`), and returns a [`DeploymentReport`]: per node a
//! [`Finding`] for each [`Check`], and a [`Verdict`] for the quorum.
//! `redlock doctor` prints it.
//!
//! A command the server refuses (an ACL without `CONFIG`, a renamed or
//! disabled command) makes that finding [`Level::Unknown`], never a
//! failure; where `INFO` carries the same fact, it is read from there
//! instead. Each node gets a connection of its own (never the one lock
//! requests share, and outside the concurrency limit), and everything asked
//! of a node fits in the check timeout; nodes are asked all at once, so a
//! check returns within about that timeout whatever the nodes do.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError, Value};
use tokio::time::Instant;

use crate::addr::NodeAddr;
use crate::lock::Redlock;
use crate::node::RedisNodeCtx;

/// How long a check may spend on each node (connect and every command)
/// unless configured: 1 s. A check connects afresh and makes a few round
/// trips, more than one lock request's per-node timeout allows; a node that
/// answers inside 1 s but slower than that timeout gets a warning instead.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A server clock further than this from the local clock is a warning: 1 s.
/// Redlock needs clocks that run at the same rate, not the same time, but an
/// offset this large hints that NTP is not working on one side.
pub const CLOCK_OFFSET_WARNING: Duration = Duration::from_secs(1);

/// Below this Redis version a node cannot hold locks: the Lua scripts in
/// `lua/` need scripting (2.6) and `SET key value PX ms` (2.6.12).
const REQUIRED_VERSION: (u32, u32, u32) = (2, 6, 12);

/// Below this Redis version a node gets a warning: end of life, and no ACL
/// users or TLS.
const RECOMMENDED_VERSION: (u32, u32, u32) = (6, 0, 0);

/// What is checked on each node, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Check {
    /// A connection is made and the server answers as Redis, faster than
    /// the per-node timeout.
    Reachable,
    /// A master, not a replica or a Sentinel; a master with replicas that a
    /// failover could promote is a warning.
    Role,
    /// Cluster mode matches the URL: off for `redis://`, on for
    /// `redis+cluster://` (a whole cluster as one member).
    Cluster,
    /// Redis 2.6.12 or newer (the Lua scripts need it); older than 6.0 is a
    /// warning.
    Version,
    /// `maxmemory-policy noeviction`; any other policy can evict a held lock.
    Eviction,
    /// AOF and its fsync policy, and what that means for restarts.
    Persistence,
    /// The server's wall clock (`TIME`) against this machine's.
    Clock,
    /// Not the same server (`run_id`) as another node of the set.
    Duplicate,
}

impl Check {
    /// Every check, in report order.
    pub const ALL: [Check; 8] = [
        Check::Reachable,
        Check::Role,
        Check::Cluster,
        Check::Version,
        Check::Eviction,
        Check::Persistence,
        Check::Clock,
        Check::Duplicate,
    ];

    /// A short lowercase name: `reachable`, `role`, `cluster`, `version`,
    /// `eviction`, `persistence`, `clock`, `duplicate`.
    pub fn name(self) -> &'static str {
        match self {
            Check::Reachable => "reachable",
            Check::Role => "role",
            Check::Cluster => "cluster",
            Check::Version => "version",
            Check::Eviction => "eviction",
            Check::Persistence => "persistence",
            Check::Clock => "clock",
            Check::Duplicate => "duplicate",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a finding bears on Redlock's assumptions, from fine to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// The assumption holds (the detail may still state a rule to follow).
    Ok,
    /// Could not be checked: the command was refused (ACL), renamed or
    /// disabled, failed, or not answered in time.
    Unknown,
    /// Locks work, but an assumption may break: read the detail.
    Warning,
    /// This node cannot take part in the lock.
    Unusable,
}

impl Level {
    /// `ok`, `unknown`, `warning`, `unusable`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Unknown => "unknown",
            Level::Warning => "warning",
            Level::Unusable => "unusable",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One check's result on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finding {
    /// What was checked.
    pub what: Check,
    /// How it bears on the lock.
    pub level: Level,
    /// A few words for a table cell: `master`, `allkeys-lru`, `+0.2 ms`.
    pub summary: String,
    /// What was found and why it matters, in a sentence or two.
    pub detail: String,
}

impl Finding {
    fn new(
        what: Check,
        level: Level,
        summary: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Finding {
            what,
            level,
            summary: summary.into(),
            detail: detail.into(),
        }
    }

    fn unknown(what: Check, why: impl Into<String>) -> Self {
        Finding::new(what, Level::Unknown, "unknown", why)
    }
}

/// What one node said.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeReport {
    /// Index into the configured node list.
    pub index: usize,
    /// The node's address (never its password).
    pub addr: NodeAddr,
    /// True when the node can hold locks: reachable, a master, not a
    /// cluster member, a recent enough version. A server listed twice is
    /// usable here and counted once in [`DeploymentReport::usable`].
    pub usable: bool,
    /// Findings in [`Check::ALL`] order. An unreachable node has only
    /// [`Check::Reachable`]; an in-memory node only that one as well.
    pub findings: Vec<Finding>,
    /// Round trip of the `TIME` command, when it was answered.
    pub latency: Option<Duration>,
    /// The server's clock minus this machine's, in microseconds (give or
    /// take half of [`latency`](Self::latency)), when `TIME` was answered.
    pub clock_offset_us: Option<i64>,
    /// `redis_version` from `INFO server`, when `INFO` was answered.
    pub version: Option<String>,
    /// For a cluster member: one report per master that serves slots (its
    /// address, its slots in [`slots`](Self::slots), its own findings); the
    /// member's findings are the worst of its shards', naming the shard.
    /// Empty for a single process, and for a cluster member whose slot map
    /// could not be read (then its findings are its first answering seed's).
    pub shards: Vec<NodeReport>,
    /// For a shard of a cluster member: the slot ranges it serves
    /// (`0-5460`, or `0-100 5000-5460`).
    pub slots: Option<String>,
    /// `run_id` from `INFO server`: what tells servers apart (one per shard
    /// for a cluster member).
    run_ids: Vec<String>,
    /// True when the node was connected and answered.
    answered: bool,
}

impl NodeReport {
    /// The finding of one check, if it was made on this node.
    pub fn finding(&self, what: Check) -> Option<&Finding> {
        self.findings.iter().find(|f| f.what == what)
    }

    /// The worst level among the findings.
    pub fn level(&self) -> Level {
        self.findings
            .iter()
            .map(|f| f.level)
            .max()
            .unwrap_or(Level::Ok)
    }
}

/// The overall answer: can this set of nodes hold Redlock locks safely?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Verdict {
    /// Every finding is ok, and a node may fail without stopping locks.
    Ok,
    /// Locks work, but something needs attention: a warning, an unknown
    /// finding (an assumption that could not be checked), an unusable or
    /// unreachable node that the quorum can do without, or no node to spare.
    Warnings,
    /// No lock can be trusted: fewer usable masters than a quorum, or one
    /// server listed twice (a quorum could sit on one process).
    Unusable,
}

impl Verdict {
    /// `ok`, `warnings`, `unusable`.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warnings => "warnings",
            Verdict::Unusable => "unusable",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every node's findings and the verdict for the quorum.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DeploymentReport {
    /// One report per configured node, in order.
    pub nodes: Vec<NodeReport>,
    /// Nodes a lock needs: N / 2 + 1 of the configured N.
    pub quorum: usize,
    /// Usable nodes, a server listed twice counted once.
    pub usable: usize,
    /// The overall answer.
    pub verdict: Verdict,
    /// What decided the verdict beyond single findings: servers listed
    /// twice, too few usable nodes, no node to spare. Node addresses are
    /// shown as [`NodeAddr`] shows them (no passwords).
    pub reasons: Vec<String>,
}

impl DeploymentReport {
    /// Every finding that is not [`Level::Ok`], with its node.
    pub fn problems(&self) -> impl Iterator<Item = (&NodeReport, &Finding)> {
        self.nodes.iter().flat_map(|n| {
            n.findings
                .iter()
                .filter(|f| f.level != Level::Ok)
                .map(move |f| (n, f))
        })
    }
}

impl RedisNodeCtx {
    /// Checks every node against Redlock's assumptions (see [`crate::check`]),
    /// spending at most `within` on each, all nodes at once. Read-only;
    /// never fails: what could not be learned is reported as such.
    pub async fn check(&self, within: Duration) -> DeploymentReport {
        let probes = self.nodes().enumerate().map(|(i, addr)| async move {
            let deadline = deadline_after(within);
            let timeout = self.node_timeout();
            let reach = match self.check_client(i) {
                None => Reach::Memory,
                Some(_) if addr.is_cluster() => {
                    return cluster_member(i, addr, deadline, within, timeout).await;
                }
                Some(client) => probe(client, deadline, false).await,
            };
            node_report(i, addr.clone(), reach, within, timeout, false)
        });
        let nodes = futures::future::join_all(probes).await;
        judge(nodes)
    }
}

impl Redlock {
    /// Checks every node against Redlock's assumptions (see
    /// [`crate::check`]), within [`DEFAULT_CHECK_TIMEOUT`] (1 s) per node,
    /// all nodes at once.
    pub async fn check(&self) -> DeploymentReport {
        self.check_within(DEFAULT_CHECK_TIMEOUT).await
    }

    /// [`check`](Self::check) spending at most `within` on each node.
    pub async fn check_within(&self, within: Duration) -> DeploymentReport {
        self.nodes().check(within).await
    }
}

/// What one probe command got.
enum Answer<T> {
    Got(T),
    /// Refused by the ACL (NOPERM), or unknown: renamed or disabled.
    NotAllowed(String),
    /// Another error reply (`LOADING`, `BUSY`, ...).
    Failed(String),
    /// No Redis reply: the connection broke, or the bytes were not RESP or
    /// not of the expected shape.
    Broken(String),
    /// Nothing before the check's deadline.
    Late(String),
    /// Not asked: another command already told.
    NotAsked,
}

impl<T> Answer<T> {
    fn got(&self) -> Option<&T> {
        match self {
            Answer::Got(v) => Some(v),
            _ => None,
        }
    }

    /// Why there is no value, for an unknown finding.
    fn why(&self) -> Option<&str> {
        match self {
            Answer::NotAllowed(s) | Answer::Failed(s) | Answer::Broken(s) | Answer::Late(s) => {
                Some(s)
            }
            Answer::Got(_) | Answer::NotAsked => None,
        }
    }
}

/// One command, answered or not before `deadline`.
async fn ask<T: FromRedisValue>(
    conn: &MultiplexedConnection,
    deadline: Instant,
    args: &[&str],
) -> Answer<T> {
    let shown = args.join(" ");
    let Some((name, rest)) = args.split_first() else {
        return Answer::Broken("no command".into());
    };
    let mut cmd = redis::cmd(name);
    for a in rest {
        cmd.arg(*a);
    }
    let mut conn = conn.clone();
    match tokio::time::timeout_at(deadline, cmd.query_async::<T>(&mut conn)).await {
        Err(_) => Answer::Late(format!("no answer to {shown} in time")),
        Ok(Ok(v)) => Answer::Got(v),
        Ok(Err(e)) => refusal(&shown, &e),
    }
}

/// Sorts an error reply: a refusal (ACL, renamed or disabled command) is
/// not a failure of the node.
fn refusal<T>(shown: &str, e: &RedisError) -> Answer<T> {
    let detail = e.detail().unwrap_or("");
    match e.code() {
        Some("NOPERM") => Answer::NotAllowed(format!("{shown} refused by the server's ACL")),
        Some("ERR")
            if detail.starts_with("unknown command")
                || detail.starts_with("unknown subcommand") =>
        {
            Answer::NotAllowed(format!("{shown} is renamed or disabled on the server"))
        }
        Some(code) => Answer::Failed(format!("{shown}: {code} {detail}").trim_end().to_owned()),
        None => Answer::Broken(format!("{shown}: {e}")),
    }
}

/// How far a node got.
enum Reach {
    /// An in-memory node: nothing to ask.
    Memory,
    /// No connection: why.
    Down(String),
    /// Connected, but not even `TIME` was answered in time.
    Silent,
    /// Connected and answering.
    Up(Box<Probe>),
}

/// A reachable node's answers.
struct Probe {
    /// Wall-clock time just before `TIME` was sent.
    sent: SystemTime,
    /// `TIME`'s round trip.
    latency: Duration,
    time: Answer<(u64, u64)>,
    info: Answer<String>,
    /// Asked only when `INFO` gave nothing.
    role: Answer<Value>,
    policy: Answer<Vec<String>>,
    appendonly: Answer<Vec<String>>,
    appendfsync: Answer<Vec<String>>,
    /// `CLUSTER NODES`, asked of a cluster member's seed only.
    cluster_nodes: Answer<String>,
}

/// `within` from now; a timeout too large to add means "no limit" in
/// practice, and a year will do.
fn deadline_after(within: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(within)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// Asks one node everything before `deadline`; with `cluster_nodes`, its
/// cluster's node list as well (a cluster member's seed).
async fn probe(client: &redis::Client, deadline: Instant, cluster_nodes: bool) -> Reach {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(None)
        .set_response_timeout(None);
    let connect = client.get_multiplexed_async_connection_with_config(&config);
    let conn = match tokio::time::timeout_at(deadline, connect).await {
        Err(_) => return Reach::Down("no connection before the check's deadline".into()),
        Ok(Err(e)) => return Reach::Down(format!("cannot connect: {e}")),
        Ok(Ok(c)) => c,
    };
    // TIME first and alone: its round trip is the latency, and half of it
    // bounds the error of the clock offset.
    let sent = SystemTime::now();
    let t0 = Instant::now();
    let time = ask::<(u64, u64)>(&conn, deadline, &["TIME"]).await;
    let latency = t0.elapsed();
    match &time {
        Answer::Late(_) => return Reach::Silent,
        // Not a Redis server, or not one that works: nothing else to ask.
        Answer::Broken(why) => return Reach::Down(format!("connected, but {why}")),
        _ => {}
    }
    let nodes = async {
        if cluster_nodes {
            ask::<String>(&conn, deadline, &["CLUSTER", "NODES"]).await
        } else {
            Answer::NotAsked
        }
    };
    let (info, policy, appendonly, appendfsync, cluster_nodes) = futures::join!(
        ask::<String>(&conn, deadline, &["INFO"]),
        ask::<Vec<String>>(&conn, deadline, &["CONFIG", "GET", "maxmemory-policy"]),
        ask::<Vec<String>>(&conn, deadline, &["CONFIG", "GET", "appendonly"]),
        ask::<Vec<String>>(&conn, deadline, &["CONFIG", "GET", "appendfsync"]),
        nodes,
    );
    let role = match info {
        Answer::Got(_) => Answer::NotAsked,
        _ => ask::<Value>(&conn, deadline, &["ROLE"]).await,
    };
    Reach::Up(Box::new(Probe {
        sent,
        latency,
        time,
        info,
        role,
        policy,
        appendonly,
        appendfsync,
        cluster_nodes,
    }))
}

/// A master that serves slots, from `CLUSTER NODES`.
#[derive(Debug, PartialEq)]
struct Master {
    host: String,
    port: u16,
    /// Its slot ranges as the reply gives them (`0-5460`), space-separated.
    slots: String,
}

/// The masters that serve slots, in slot order, from a `CLUSTER NODES`
/// reply: `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong>
/// <epoch> <link> <slot> <slot> ...`. A slot being imported or migrated
/// (`[5460->-id]`) is not counted as served; `seed` stands in for an empty
/// address (a node that does not know its own yet).
fn cluster_masters(reply: &str, seed: &str) -> Vec<Master> {
    let mut masters: Vec<(u16, Master)> = reply
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = f.get(2)?;
            if !flags.split(',').any(|x| x == "master") || flags.contains("noaddr") {
                return None;
            }
            let slots: Vec<&str> = f
                .get(8..)?
                .iter()
                .copied()
                .filter(|x| !x.starts_with('['))
                .collect();
            let first: u16 = slots.first()?.split('-').next()?.parse().ok()?;
            let addr = f.get(1)?.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            let host = if host.is_empty() { seed } else { host };
            Some((
                first,
                Master {
                    host: host.to_owned(),
                    port: port.parse().ok()?,
                    slots: slots.join(" "),
                },
            ))
        })
        .collect();
    masters.sort_by_key(|(first, _)| *first);
    masters.into_iter().map(|(_, m)| m).collect()
}

/// A cluster member: its first seed that answers tells the slot map, then
/// every master that serves slots is checked, all at once, before the same
/// deadline. The member's findings are the worst of its shards'.
async fn cluster_member(
    index: usize,
    addr: &NodeAddr,
    deadline: Instant,
    within: Duration,
    node_timeout: Duration,
) -> NodeReport {
    let mut seed_report = None;
    let mut nodes = None;
    for seed in addr.seeds() {
        let reach = match redis::Client::open(seed.clone()) {
            Ok(client) => probe(&client, deadline, true).await,
            Err(e) => Reach::Down(format!("cannot connect: {e}")),
        };
        if let Reach::Up(p) = &reach {
            nodes = p.cluster_nodes.got().cloned();
        }
        let report = node_report(index, addr.clone(), reach, within, node_timeout, true);
        let answered = report.answered;
        seed_report = Some(report);
        if answered {
            break;
        }
    }
    let Some(seed_report) = seed_report else {
        return node_report(
            index,
            addr.clone(),
            Reach::Down("no seed".into()),
            within,
            node_timeout,
            true,
        );
    };
    // Cluster mode off, no seed answering, or CLUSTER refused: the seed's
    // findings say which.
    let seed_host = addr.identity().0;
    let masters = nodes
        .map(|n| cluster_masters(&n, &seed_host))
        .unwrap_or_default();
    if masters.is_empty() {
        return seed_report;
    }
    let shards = masters.into_iter().map(|m| async move {
        let reach = match addr.cluster_node(&m.host, m.port) {
            Err(e) => Reach::Down(e.to_string()),
            Ok(shard) => match redis::Client::open(shard.info().clone()) {
                Ok(client) => {
                    let reach = probe(&client, deadline, false).await;
                    let mut r = node_report(index, shard, reach, within, node_timeout, true);
                    r.slots = Some(m.slots);
                    return r;
                }
                Err(e) => Reach::Down(format!("cannot connect: {e}")),
            },
        };
        let mut r = node_report(index, addr.clone(), reach, within, node_timeout, true);
        r.slots = Some(m.slots);
        r
    });
    let shards = futures::future::join_all(shards).await;
    merge_shards(index, addr.clone(), shards)
}

/// A cluster member's report from its shards': per check the worst finding,
/// naming the shards at that level; usable when every shard is.
fn merge_shards(index: usize, addr: NodeAddr, shards: Vec<NodeReport>) -> NodeReport {
    let name = |s: &NodeReport| {
        format!(
            "shard {} (slots {})",
            s.addr,
            s.slots.as_deref().unwrap_or("?")
        )
    };
    let mut findings = Vec::new();
    for what in Check::ALL {
        let all: Vec<(&NodeReport, &Finding)> = shards
            .iter()
            .filter_map(|s| s.finding(what).map(|f| (s, f)))
            .collect();
        let Some(level) = all.iter().map(|(_, f)| f.level).max() else {
            continue;
        };
        let worst: Vec<&(&NodeReport, &Finding)> =
            all.iter().filter(|(_, f)| f.level == level).collect();
        let same = |get: fn(&Finding) -> &str| worst.iter().all(|(_, f)| get(f) == get(worst[0].1));
        // Where ok shards differ by a measure, the member shows its worst
        // shard's: the slowest round trip, the largest clock offset.
        let extreme = match what {
            Check::Reachable => worst.iter().max_by_key(|(s, _)| s.latency),
            Check::Clock => worst
                .iter()
                .max_by_key(|(s, _)| s.clock_offset_us.map(i64::unsigned_abs)),
            _ => None,
        };
        let summary = match (level, worst.len()) {
            (Level::Ok, _) if same(|f| &f.summary) => worst[0].1.summary.clone(),
            (Level::Ok, n) => {
                extreme.map_or_else(|| format!("{n} shards ok"), |(_, f)| f.summary.clone())
            }
            (_, 1) => format!("{} on {}", worst[0].1.summary, worst[0].0.addr),
            (_, n) => format!("{} on {n} shards", worst[0].1.summary),
        };
        // All shards alike read as one node (and group with single nodes in
        // `redlock doctor`'s restart rules).
        let detail = if level == Level::Ok && same(|f| &f.detail) {
            worst[0].1.detail.clone()
        } else {
            worst
                .iter()
                .map(|(s, f)| format!("{}: {}", name(s), f.detail))
                .collect::<Vec<_>>()
                .join("; ")
        };
        findings.push(Finding::new(what, level, summary, detail));
    }
    NodeReport {
        index,
        addr,
        usable: shards.iter().all(|s| s.usable),
        findings,
        latency: shards.iter().filter_map(|s| s.latency).max(),
        clock_offset_us: shards
            .iter()
            .filter_map(|s| s.clock_offset_us)
            .max_by_key(|us| us.unsigned_abs()),
        version: shards
            .iter()
            .filter_map(|s| s.version.clone())
            .min_by_key(|v| parse_version(v)),
        run_ids: shards.iter().flat_map(|s| s.run_ids.clone()).collect(),
        answered: shards.iter().any(|s| s.answered),
        slots: None,
        shards,
    }
}

/// `INFO`'s `key:value` lines.
fn parse_info(text: &str) -> HashMap<&str, &str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// `CONFIG GET name`'s value: the reply is `[name, value]`, or empty when
/// the server does not know the parameter.
fn config_value(a: &Answer<Vec<String>>) -> Option<&str> {
    a.got().and_then(|v| v.get(1)).map(String::as_str)
}

/// "7.0.15" as (7, 0, 15); a missing part is 0.
fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next().flatten()?;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Why a fact is unknown, from every answer that could have told it.
fn because(reasons: &[Option<&str>]) -> String {
    let known: Vec<&str> = reasons.iter().flatten().copied().collect();
    if known.is_empty() {
        "not reported by the server".into()
    } else {
        format!("could not check: {}", known.join("; "))
    }
}

fn show_duration(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// A signed offset in microseconds, short: `+0.3 ms`, `-12 ms`, `+1.52 s`.
fn show_offset(us: i64) -> String {
    let abs = us.unsigned_abs();
    // Below 50 µs it shows as 0.0: no sign worth showing.
    let sign = if us < 0 && abs >= 50 { '-' } else { '+' };
    if abs < 10_000 {
        format!("{sign}{:.1} ms", abs as f64 / 1e3)
    } else if abs < 1_000_000 {
        format!("{sign}{} ms", abs / 1000)
    } else {
        format!("{sign}{:.2} s", abs as f64 / 1e6)
    }
}

const NO_AOF: &str = "no AOF: a node that restarts comes back without the locks it held \
     (an RDB snapshot, if any, misses recent ones). It must not rejoin before the longest lock \
     TTL has passed since it stopped, or a second client can take a lock that is still held. \
     appendonly yes with appendfsync always lifts this rule";
const AOF_ALWAYS: &str = "AOF with appendfsync always: each lock is on disk before the node \
     answers, so a restarted node still has its locks";
const AOF_EVERYSEC: &str = "AOF with appendfsync everysec: a restarted process keeps its locks, \
     but a machine crash (power, kernel) can lose the last second or so of them. After one, \
     the node must not rejoin before the longest lock TTL has passed";
const AOF_NO: &str = "AOF without fsync (appendfsync no: the OS writes it out, about every 30 s \
     on Linux): a restarted process keeps its locks, but a machine crash can lose the last \
     half minute of them. After one, the node must not rejoin before the longest lock TTL has \
     passed";

/// Findings of one node, all but [`Check::Duplicate`] (which needs every
/// node); `cluster` when it should be in cluster mode (a cluster member's
/// seed or shard).
fn node_report(
    index: usize,
    addr: NodeAddr,
    reach: Reach,
    within: Duration,
    node_timeout: Duration,
    cluster: bool,
) -> NodeReport {
    let mut report = NodeReport {
        index,
        addr,
        usable: false,
        findings: Vec::new(),
        latency: None,
        clock_offset_us: None,
        version: None,
        shards: Vec::new(),
        slots: None,
        run_ids: Vec::new(),
        answered: false,
    };
    let p = match reach {
        Reach::Memory => {
            report.usable = true;
            report.findings.push(Finding::new(
                Check::Reachable,
                Level::Warning,
                "in-memory",
                "in-memory: not a Redis server; its locks exclude only within this process",
            ));
            return report;
        }
        Reach::Down(why) => {
            report
                .findings
                .push(Finding::new(Check::Reachable, Level::Unusable, "no", why));
            return report;
        }
        Reach::Silent => {
            report.findings.push(Finding::new(
                Check::Reachable,
                Level::Unusable,
                "no answer",
                format!(
                    "connected, but no answer within {} (a paused or overloaded server?)",
                    show_duration(within)
                ),
            ));
            return report;
        }
        Reach::Up(p) => p,
    };
    report.answered = true;
    report.latency = Some(p.latency);
    let f = &mut report.findings;

    // Reachable, and fast enough for the lock's per-node timeout.
    let rtt = show_duration(p.latency);
    f.push(if p.latency > node_timeout {
        Finding::new(
            Check::Reachable,
            Level::Warning,
            format!("slow {rtt}"),
            format!(
                "answered in {rtt}, more than the per-node timeout ({}): lock requests to it \
                 would time out and count as failed",
                show_duration(node_timeout)
            ),
        )
    } else {
        Finding::new(
            Check::Reachable,
            Level::Ok,
            rtt.clone(),
            format!("answered in {rtt}"),
        )
    });

    let info = p.info.got().map(|t| parse_info(t));
    let field = |k: &str| info.as_ref().and_then(|m| m.get(k).copied());

    // Role.
    f.push(role_finding(&p, &field));

    // Cluster mode.
    let member = cluster;
    f.push(match (field("cluster_enabled"), &info) {
        (Some("1"), _) if member => Finding::new(
            Check::Cluster,
            Level::Ok,
            "cluster member",
            "a Redis Cluster, one quorum member (redis+cluster://): keys are routed by hash \
             slot",
        ),
        (Some("1"), _) => Finding::new(
            Check::Cluster,
            Level::Unusable,
            "enabled",
            "cluster mode is on (cluster_enabled:1): as a single node it answers keys of \
             other slots with MOVED; list the whole cluster as one member instead: \
             redis+cluster://host1:port1,host2:port2",
        ),
        (_, Some(_)) if member => Finding::new(
            Check::Cluster,
            Level::Unusable,
            "off",
            "listed as redis+cluster:// but cluster mode is off: list it as redis://",
        ),
        (_, Some(_)) => Finding::new(Check::Cluster, Level::Ok, "off", "not in cluster mode"),
        (_, None) => Finding::unknown(Check::Cluster, because(&[p.info.why()])),
    });

    // Version.
    report.version = field("redis_version").map(str::to_owned);
    f.push(match field("redis_version") {
        None => Finding::unknown(Check::Version, because(&[p.info.why()])),
        Some(v) => match parse_version(v) {
            None => Finding::unknown(Check::Version, format!("redis_version {v:?} not understood")),
            Some(n) if n < REQUIRED_VERSION => Finding::new(
                Check::Version,
                Level::Unusable,
                v,
                format!(
                    "Redis {v}: the lock's Lua scripts need SET with PX (Redis 2.6.12)"
                ),
            ),
            Some(n) if n < RECOMMENDED_VERSION => Finding::new(
                Check::Version,
                Level::Warning,
                v,
                format!("Redis {v} is older than 6.0: end of life (no security fixes), no ACL users, no TLS"),
            ),
            Some(_) => Finding::new(Check::Version, Level::Ok, v, format!("Redis {v}")),
        },
    });

    // Eviction: CONFIG GET, else INFO memory.
    let policy = config_value(&p.policy).or_else(|| field("maxmemory_policy"));
    f.push(match policy {
        None => Finding::unknown(Check::Eviction, because(&[p.policy.why(), p.info.why()])),
        Some("noeviction") => Finding::new(
            Check::Eviction,
            Level::Ok,
            "noeviction",
            "maxmemory-policy noeviction: a held lock key is never evicted",
        ),
        Some(other) => {
            let limit = match field("maxmemory") {
                Some("0") => " (maxmemory is 0 now, so nothing is evicted until a limit is set)",
                _ => "",
            };
            Finding::new(
                Check::Eviction,
                Level::Warning,
                other,
                format!(
                    "maxmemory-policy {other}: when memory reaches maxmemory, Redis may evict a \
                     held lock key (volatile-* policies choose among keys with a TTL, which \
                     every lock key has), and another client can then take the lock while it is \
                     held{limit}. Set it to noeviction: a full node then refuses new locks (OOM) \
                     instead of dropping held ones"
                ),
            )
        }
    });

    // Persistence: CONFIG GET, else INFO persistence for whether AOF is on.
    let aof = match config_value(&p.appendonly) {
        Some(v) => Some(v.eq_ignore_ascii_case("yes")),
        None => field("aof_enabled").map(|v| v == "1"),
    };
    let fsync = config_value(&p.appendfsync);
    f.push(match (aof, fsync) {
        (Some(false), _) => Finding::new(Check::Persistence, Level::Ok, "none", NO_AOF),
        (Some(true), Some("always")) => {
            Finding::new(Check::Persistence, Level::Ok, "aof always", AOF_ALWAYS)
        }
        (Some(true), Some("everysec")) => {
            Finding::new(Check::Persistence, Level::Ok, "aof everysec", AOF_EVERYSEC)
        }
        (Some(true), Some("no")) => Finding::new(Check::Persistence, Level::Ok, "aof no", AOF_NO),
        (Some(true), _) => Finding::unknown(
            Check::Persistence,
            format!(
                "AOF is on, but its fsync policy is unknown ({})",
                because(&[p.appendfsync.why()])
            ),
        ),
        (None, _) => Finding::unknown(
            Check::Persistence,
            because(&[p.appendonly.why(), p.info.why()]),
        ),
    });

    // Clock: TIME against the local clock at the middle of the round trip.
    let local_us = p
        .sent
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i128)
        + p.latency.as_micros() as i128 / 2;
    f.push(match p.time.got() {
        None => Finding::unknown(Check::Clock, because(&[p.time.why()])),
        Some(&(secs, micros)) => {
            let server_us = secs as i128 * 1_000_000 + micros as i128;
            let offset = i64::try_from(server_us - local_us).unwrap_or(i64::MAX);
            report.clock_offset_us = Some(offset);
            let uncertainty = p.latency.as_micros() as i128 / 2;
            let shown = show_offset(offset);
            let side = if offset < 0 { "behind" } else { "ahead of" };
            if (offset.unsigned_abs() as i128) - uncertainty
                > CLOCK_OFFSET_WARNING.as_micros() as i128
            {
                Finding::new(
                    Check::Clock,
                    Level::Warning,
                    shown.clone(),
                    format!(
                        "the server's clock is {shown} {side} this machine's: Redis expires keys \
                         on its own wall clock. Redlock needs clocks that run at the same rate, \
                         not the same time, but an offset over {} hints that NTP is not working \
                         on one side, and a clock set right later jumps (a jump forward expires \
                         locks early)",
                        show_duration(CLOCK_OFFSET_WARNING)
                    ),
                )
            } else {
                Finding::new(
                    Check::Clock,
                    Level::Ok,
                    shown.clone(),
                    format!(
                        "the server's clock is {shown} {side} this machine's (give or take {})",
                        show_duration(p.latency / 2)
                    ),
                )
            }
        }
    });

    report.run_ids = field("run_id")
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .into_iter()
        .collect();
    report.usable = report.findings.iter().all(|f| f.level != Level::Unusable);
    report
}

/// The role finding: `INFO replication`, else `ROLE`.
fn role_finding<'a>(p: &Probe, field: &impl Fn(&str) -> Option<&'a str>) -> Finding {
    let replica = |master: String| {
        Finding::new(
            Check::Role,
            Level::Unusable,
            "replica",
            format!(
                "a replica of {master}: it refuses the lock's writes (READONLY), or with \
                 replica-read-only off has them overwritten by its master; list independent \
                 masters only"
            ),
        )
    };
    let master = |replicas: usize| {
        if replicas == 0 {
            Finding::new(
                Check::Role,
                Level::Ok,
                "master",
                "a master without replicas",
            )
        } else {
            Finding::new(
                Check::Role,
                Level::Warning,
                format!(
                    "master, {replicas} replica{}",
                    if replicas == 1 { "" } else { "s" }
                ),
                format!(
                    "a master with {replicas} connected replica(s): replication is asynchronous, \
                     so if a failover promotes a replica, locks it had not received yet are gone, \
                     as after a restart without persistence; Redlock wants independent masters \
                     without failover"
                ),
            )
        }
    };
    let sentinel = || {
        Finding::new(
            Check::Role,
            Level::Unusable,
            "sentinel",
            "a Redis Sentinel, not a data node: it cannot hold locks",
        )
    };
    if p.info.got().is_some() {
        if field("redis_mode") == Some("sentinel") {
            return sentinel();
        }
        return match field("role") {
            Some("master") => master(
                field("connected_slaves")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
            ),
            Some("slave") | Some("replica") => replica(format!(
                "{}:{}",
                field("master_host").unwrap_or("?"),
                field("master_port").unwrap_or("?")
            )),
            Some(other) => Finding::unknown(Check::Role, format!("INFO says role:{other}")),
            None => Finding::unknown(Check::Role, "INFO has no role field"),
        };
    }
    // ROLE: ["master", offset, [replicas]] or ["slave", host, port, ...].
    let Some(Value::Array(items)) = p.role.got() else {
        return Finding::unknown(Check::Role, because(&[p.info.why(), p.role.why()]));
    };
    let text = |i: usize| match items.get(i) {
        Some(Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        Some(Value::SimpleString(s)) => Some(s.clone()),
        Some(Value::Int(n)) => Some(n.to_string()),
        _ => None,
    };
    match text(0).as_deref() {
        Some("master") => master(match items.get(2) {
            Some(Value::Array(r)) => r.len(),
            _ => 0,
        }),
        Some("slave") | Some("replica") => replica(format!(
            "{}:{}",
            text(1).unwrap_or_else(|| "?".into()),
            text(2).unwrap_or_else(|| "?".into())
        )),
        Some("sentinel") => sentinel(),
        _ => Finding::unknown(Check::Role, "ROLE's reply not understood"),
    }
}

/// Adds the duplicate findings and decides the verdict.
fn judge(mut nodes: Vec<NodeReport>) -> DeploymentReport {
    let n = nodes.len();
    let quorum = n / 2 + 1;
    let mut reasons = Vec::new();

    // Servers listed more than once, by run_id (a cluster member has one
    // per shard: two members that name one cluster share them all).
    let mut by_run: HashMap<String, Vec<usize>> = HashMap::new();
    for node in &nodes {
        for id in &node.run_ids {
            let group = by_run.entry(id.clone()).or_default();
            if !group.contains(&node.index) {
                group.push(node.index);
            }
        }
    }
    let mut duplicated = false;
    let mut groups: Vec<(&Vec<usize>, &str)> = by_run
        .iter()
        .filter(|(_, g)| g.len() > 1)
        .map(|(id, g)| (g, id.as_str()))
        .collect();
    groups.sort();
    groups.dedup_by(|a, b| a.0 == b.0);
    for (group, id) in &groups {
        duplicated = true;
        let names: Vec<String> = group.iter().map(|&i| nodes[i].addr.to_string()).collect();
        let what = if group.iter().any(|&i| nodes[i].addr.is_cluster()) {
            "share a server"
        } else {
            "are the same server"
        };
        reasons.push(format!(
            "{} {what} (run_id {}…): a quorum could sit on one process",
            names.join(" and "),
            short_id(id)
        ));
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    for node in nodes.iter_mut().filter(|n| n.answered) {
        let finding = match node.run_ids.first() {
            None => Finding::unknown(
                Check::Duplicate,
                "no run_id (INFO refused or not answered): cannot tell whether this server is \
                 listed twice",
            ),
            Some(id) => {
                let mut others: Vec<String> = node
                    .run_ids
                    .iter()
                    .filter_map(|id| by_run.get(id))
                    .flatten()
                    .filter(|&&i| i != node.index)
                    .map(|&i| addrs[i].clone())
                    .collect();
                others.sort();
                others.dedup();
                if others.is_empty() && node.run_ids.len() > 1 {
                    Finding::new(
                        Check::Duplicate,
                        Level::Ok,
                        "unique",
                        format!(
                            "no shard's run_id ({} shards) is shared with any other node",
                            node.run_ids.len()
                        ),
                    )
                } else if others.is_empty() {
                    Finding::new(
                        Check::Duplicate,
                        Level::Ok,
                        "unique",
                        format!("run_id {}… is not shared with any other node", short_id(id)),
                    )
                } else {
                    Finding::new(
                        Check::Duplicate,
                        Level::Unusable,
                        format!("= {}", others.join(", ")),
                        format!(
                            "the same server (run_id {}…) as {}: a quorum could sit on one \
                             process, and one crash or restart could lose a lock on several nodes \
                             at once; list each server once",
                            short_id(id),
                            others.join(" and ")
                        ),
                    )
                }
            }
        };
        node.findings.push(finding);
    }

    // Usable nodes, a server listed twice counted once.
    let mut seen: Vec<&str> = Vec::new();
    let mut usable = 0;
    for node in nodes.iter().filter(|n| n.usable) {
        if node.run_ids.iter().any(|id| seen.contains(&id.as_str())) {
            continue;
        }
        seen.extend(node.run_ids.iter().map(String::as_str));
        usable += 1;
    }
    if usable < quorum {
        reasons.push(format!(
            "only {usable} of {n} nodes usable: a lock needs a quorum of {quorum}"
        ));
    } else if usable == quorum && !duplicated {
        reasons.push(format!(
            "{usable} of {n} nodes usable, quorum {quorum}: one more failed node stops every lock"
        ));
    }
    let verdict = if duplicated || usable < quorum {
        Verdict::Unusable
    } else if !reasons.is_empty() || nodes.iter().any(|n| n.level() != Level::Ok) {
        Verdict::Warnings
    } else {
        Verdict::Ok
    };
    DeploymentReport {
        nodes,
        quorum,
        usable,
        verdict,
        reasons,
    }
}

fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> NodeAddr {
        NodeAddr::parse(&format!("redis://127.0.0.1:{port}")).unwrap()
    }

    fn down(i: usize) -> NodeReport {
        node_report(
            i,
            addr(7000 + i as u16),
            Reach::Down("cannot connect: refused".into()),
            DEFAULT_CHECK_TIMEOUT,
            Duration::from_millis(50),
            false,
        )
    }

    fn memory(i: usize) -> NodeReport {
        node_report(
            i,
            addr(7000 + i as u16),
            Reach::Memory,
            DEFAULT_CHECK_TIMEOUT,
            Duration::from_millis(50),
            false,
        )
    }

    /// Versions compare by number, with suffixes and missing parts tolerated.
    /// Control: parsing whole parts made "7.2.4-rc1" 7.2.0.
    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(parse_version("7.0.15"), Some((7, 0, 15)));
        assert_eq!(parse_version("2.6.11"), Some((2, 6, 11)));
        assert_eq!(parse_version("7.2.4-rc1"), Some((7, 2, 4)));
        assert_eq!(parse_version("6"), Some((6, 0, 0)));
        assert_eq!(parse_version("x"), None);
        assert!(parse_version("2.6.11").unwrap() < REQUIRED_VERSION);
        assert!(parse_version("2.6.12").unwrap() >= REQUIRED_VERSION);
        assert!(parse_version("5.0.14").unwrap() < RECOMMENDED_VERSION);
    }

    /// INFO's sections and comments are skipped; values keep their colons.
    /// Control: splitting at the last colon lost `master_host:::1`.
    #[test]
    fn info_lines_parse() {
        let m = parse_info(
            "# Server\r\nredis_version:7.0.15\r\n\r\n# Replication\r\nrole:slave\r\nmaster_host:::1\r\n",
        );
        assert_eq!(m.get("redis_version"), Some(&"7.0.15"));
        assert_eq!(m.get("role"), Some(&"slave"));
        assert_eq!(m.get("master_host"), Some(&"::1"));
    }

    /// Offsets and durations read as short amounts, signed where it matters.
    /// Control: always signing showed 20 µs behind as "-0.0 ms".
    #[test]
    fn offsets_show_sign_and_unit() {
        assert_eq!(show_offset(300), "+0.3 ms");
        assert_eq!(show_offset(-12_400), "-12 ms");
        assert_eq!(show_offset(1_520_000), "+1.52 s");
        assert_eq!(show_offset(-20), "+0.0 ms");
        assert_eq!(show_duration(Duration::from_secs(1)), "1 s");
        assert_eq!(show_duration(Duration::from_millis(50)), "50 ms");
    }

    /// One node down of 3 leaves a quorum with nothing to spare (warnings);
    /// two down leave no quorum (unusable). Control: without the no-spare
    /// reason, the first case gave no reason at all.
    #[test]
    fn verdict_follows_the_quorum() {
        let r = judge(vec![down(0), memory(1), memory(2)]);
        assert_eq!((r.verdict, r.usable, r.quorum), (Verdict::Warnings, 2, 2));
        assert_eq!(
            r.reasons,
            ["2 of 3 nodes usable, quorum 2: one more failed node stops every lock"]
        );
        let r = judge(vec![down(0), down(1), memory(2)]);
        assert_eq!((r.verdict, r.usable), (Verdict::Unusable, 1));
        assert_eq!(
            r.reasons,
            ["only 1 of 3 nodes usable: a lock needs a quorum of 2"]
        );
    }

    /// In-memory nodes are usable, but say they are not Redis servers.
    /// Control: probing them as Redis servers found 0 usable.
    #[tokio::test]
    async fn in_memory_nodes_say_what_they_are() {
        let ctx = RedisNodeCtx::builder().in_memory(3).build().unwrap();
        let r = ctx.check(Duration::from_millis(100)).await;
        assert_eq!((r.verdict, r.usable), (Verdict::Warnings, 3));
        for n in &r.nodes {
            assert_eq!(n.findings.len(), 1);
            let f = n.finding(Check::Reachable).unwrap();
            assert_eq!((f.level, f.summary.as_str()), (Level::Warning, "in-memory"));
            assert!(f.detail.contains("not a Redis server"));
        }
    }

    /// The slot map comes from masters with slots only, in slot order; a
    /// replica, a master without slots and a slot in migration do not count.
    /// Control: taking every line made the replica a shard.
    #[test]
    fn cluster_masters_are_the_masters_that_serve_slots() {
        let reply = "\
b1 127.0.0.1:7002@17002 master - 0 1 3 connected 10923-16383
a1 :7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-c1]
r1 127.0.0.1:7003@17003 slave a1 0 1 1 connected
c1 127.0.0.1:7001@17001,redis-1.example master - 0 1 2 connected 5461-10922
e1 127.0.0.1:7004@17004 master - 0 1 4 connected
";
        let m = cluster_masters(reply, "10.0.0.9");
        let got: Vec<(&str, u16, &str)> = m
            .iter()
            .map(|m| (m.host.as_str(), m.port, m.slots.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.9", 7000, "0-5460"),
                ("127.0.0.1", 7001, "5461-10922"),
                ("127.0.0.1", 7002, "10923-16383"),
            ]
        );
    }

    fn shard(port: u16, slots: &str, what: Check, level: Level, summary: &str) -> NodeReport {
        let mut r = memory(0);
        r.addr = addr(port);
        r.slots = Some(slots.into());
        r.findings = vec![Finding::new(
            what,
            level,
            summary,
            format!("{summary} here"),
        )];
        r.usable = level != Level::Unusable;
        r
    }

    /// A member's finding is its worst shard's, naming that shard and its
    /// slots; all shards alike read as one. Control: taking the first
    /// shard's finding hid the evicting one.
    #[test]
    fn a_cluster_member_reports_its_worst_shard() {
        let m = merge_shards(
            1,
            addr(7000),
            vec![
                shard(7000, "0-5460", Check::Eviction, Level::Ok, "noeviction"),
                shard(
                    7001,
                    "5461-10922",
                    Check::Eviction,
                    Level::Warning,
                    "allkeys-lru",
                ),
                shard(
                    7002,
                    "10923-16383",
                    Check::Eviction,
                    Level::Ok,
                    "noeviction",
                ),
            ],
        );
        let f = m.finding(Check::Eviction).unwrap();
        assert_eq!(f.level, Level::Warning);
        assert_eq!(f.summary, "allkeys-lru on 127.0.0.1:7001");
        assert_eq!(
            f.detail,
            "shard 127.0.0.1:7001 (slots 5461-10922): allkeys-lru here"
        );
        assert!(m.usable);
        assert_eq!(m.shards.len(), 3);

        let m = merge_shards(
            1,
            addr(7000),
            vec![
                shard(7000, "0-8191", Check::Eviction, Level::Ok, "noeviction"),
                shard(7001, "8192-16383", Check::Eviction, Level::Ok, "noeviction"),
            ],
        );
        let f = m.finding(Check::Eviction).unwrap();
        assert_eq!((f.level, f.summary.as_str()), (Level::Ok, "noeviction"));
        assert_eq!(f.detail, "noeviction here");

        let m = merge_shards(
            1,
            addr(7000),
            vec![
                shard(7000, "0-8191", Check::Reachable, Level::Ok, "0.2 ms"),
                shard(7001, "8192-16383", Check::Reachable, Level::Unusable, "no"),
            ],
        );
        assert!(!m.usable, "a shard down: the member cannot hold every key");
    }
}
