//! Deployment checks (`Redlock::check`, `redlock doctor`) against real
//! `redis-server` processes set up to break one assumption each, and two
//! small fake servers for what a real one cannot be made to do (a clock
//! 5 s off, an old version). Each test's negative control was run once by
//! hand against a deliberately broken build; see docs/RELIABILITY.md.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redlock_wasm::local::LocalNode;
use redlock_wasm::local::proxy::{Mode, Proxy};
use redlock_wasm::{Check, DeploymentReport, Finding, Level, Redlock, Verdict};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::cli::{output, redlock, stderr};
use crate::support::servers::{FakeServer, Hostile};
use crate::support::{Cluster, Inspect, start_node};

/// A check of `urls` with a per-node timeout no loaded test machine misses
/// (the latency finding compares against it; `slow_and_silent_nodes` tests
/// that finding on its own).
async fn check(urls: Vec<String>) -> DeploymentReport {
    Redlock::builder()
        .nodes(urls)
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
        .check()
        .await
}

fn finding(r: &DeploymentReport, node: usize, what: Check) -> &Finding {
    r.nodes[node]
        .finding(what)
        .unwrap_or_else(|| panic!("node {node} has no {what} finding: {r:#?}"))
}

/// `(node, check, level)` of every finding that is not ok.
fn problems(r: &DeploymentReport) -> Vec<(usize, Check, Level)> {
    r.problems()
        .map(|(n, f)| (n.index, f.what, f.level))
        .collect()
}

/// A field of a node's `INFO`.
fn info_field(n: &LocalNode, field: &str) -> String {
    let info: String = n.cmd(&["INFO"]).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO"))
        .trim()
        .to_owned()
}

/// Healthy default test nodes (masters, noeviction, no persistence) are ok
/// on every check, with the no-AOF restart rule stated. Control: a clock
/// offset computed in ms instead of µs made every clock finding a warning.
#[tokio::test]
async fn healthy_nodes_are_ok() {
    let c = Cluster::start(3);
    let r = check(c.urls()).await;
    assert_eq!(r.verdict, Verdict::Ok, "{r:#?}");
    assert_eq!((r.quorum, r.usable), (2, 3));
    assert!(r.reasons.is_empty(), "{:?}", r.reasons);
    let version = info_field(&c.nodes[0], "redis_version");
    for (i, node) in r.nodes.iter().enumerate() {
        assert!(node.usable);
        let checks: Vec<Check> = node.findings.iter().map(|f| f.what).collect();
        assert_eq!(checks, Check::ALL, "every check, in order");
        assert!(
            node.findings.iter().all(|f| f.level == Level::Ok),
            "{node:#?}"
        );
        let summary = |c| finding(&r, i, c).summary.as_str();
        assert_eq!(summary(Check::Role), "master");
        assert_eq!(summary(Check::Cluster), "off");
        assert_eq!(summary(Check::Version), version);
        assert_eq!(node.version.as_deref(), Some(version.as_str()));
        assert_eq!(summary(Check::Eviction), "noeviction");
        assert_eq!(summary(Check::Persistence), "none");
        assert!(
            finding(&r, i, Check::Persistence)
                .detail
                .contains("must not rejoin before the longest lock TTL has passed")
        );
        assert_eq!(summary(Check::Duplicate), "unique");
        // Same machine, same clock: off by at most half the round trip
        // (plus TIME's and the local clock's resolution).
        let offset = node.clock_offset_us.unwrap().unsigned_abs();
        let bound = node.latency.unwrap().as_micros() as u64 / 2 + 2_000;
        assert!(offset <= bound, "offset {offset} µs > {bound} µs");
    }
}

/// A node with `maxmemory-policy allkeys-lru` is the one warning, on that
/// node, saying why. Control: a check for `volatile-*` only passed it as ok.
#[tokio::test]
async fn eviction_policy_warns_naming_the_node() {
    let a = start_node();
    let b = LocalNode::start_with(&["--maxmemory-policy", "allkeys-lru"]).unwrap();
    let c = start_node();
    let r = check(vec![a.url(), b.url(), c.url()]).await;
    assert_eq!(r.verdict, Verdict::Warnings, "{r:#?}");
    assert_eq!(problems(&r), [(1, Check::Eviction, Level::Warning)]);
    let (node, f) = r.problems().next().unwrap();
    assert_eq!(node.addr.to_string(), format!("127.0.0.1:{}", b.port()));
    assert_eq!(f.summary, "allkeys-lru");
    assert!(f.detail.contains("evict a held lock key"), "{}", f.detail);
    assert!(f.detail.contains("maxmemory is 0 now"), "{}", f.detail);
    assert_eq!(r.usable, 3);
}

/// One server under two URLs (127.0.0.1 and localhost) is unusable, each
/// naming the other. Control: duplicates keyed by address found none.
#[tokio::test]
async fn one_server_under_two_urls_is_unusable() {
    let a = start_node();
    let b = start_node();
    let (ip, name) = (
        format!("127.0.0.1:{}", a.port()),
        format!("localhost:{}", a.port()),
    );
    let r = check(vec![
        format!("redis://{ip}"),
        format!("redis://{name}"),
        b.url(),
    ])
    .await;
    assert_eq!(r.verdict, Verdict::Unusable, "{r:#?}");
    assert_eq!(
        problems(&r),
        [
            (0, Check::Duplicate, Level::Unusable),
            (1, Check::Duplicate, Level::Unusable)
        ]
    );
    assert!(finding(&r, 0, Check::Duplicate).detail.contains(&name));
    assert!(finding(&r, 1, Check::Duplicate).detail.contains(&ip));
    assert_eq!(r.reasons.len(), 1, "{:?}", r.reasons);
    assert!(
        r.reasons[0].contains(&format!("{ip} and {name} are the same server")),
        "{:?}",
        r.reasons
    );
    assert_eq!(r.usable, 2, "the server counts once");
}

/// A dead node is unreachable with the connection error; one of 3 dead
/// leaves a quorum (warnings), two do not (unusable). Control: counting
/// unreachable nodes as usable reported 3 of 3 usable.
#[tokio::test]
async fn dead_nodes_and_the_quorum() {
    let mut c = Cluster::start(3);
    c.nodes[2].kill();
    let r = check(c.urls()).await;
    assert_eq!(r.verdict, Verdict::Warnings, "{r:#?}");
    assert_eq!(problems(&r), [(2, Check::Reachable, Level::Unusable)]);
    let f = finding(&r, 2, Check::Reachable);
    assert!(f.detail.starts_with("cannot connect:"), "{}", f.detail);
    assert_eq!(r.nodes[2].findings.len(), 1, "nothing else to say");
    assert_eq!(r.usable, 2);
    assert_eq!(
        r.reasons,
        ["2 of 3 nodes usable, quorum 2: one more failed node stops every lock"]
    );

    c.nodes[1].kill();
    let r = check(c.urls()).await;
    assert_eq!(r.verdict, Verdict::Unusable, "{r:#?}");
    assert_eq!(r.usable, 1);
    assert_eq!(
        r.reasons,
        ["only 1 of 3 nodes usable: a lock needs a quorum of 2"]
    );
}

/// A replica is unusable (naming its master) and its master warns of
/// failover; the quorum still holds. Control: matching `role:replica`
/// only (INFO says `slave`) left the replica unknown and usable.
#[tokio::test]
async fn a_replica_is_flagged() {
    let master = start_node();
    let port = master.port().to_string();
    let replica = LocalNode::start_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
    let other = start_node();
    let start = Instant::now();
    while info_field(&master, "connected_slaves") != "1" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "replica never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = check(vec![master.url(), replica.url(), other.url()]).await;
    assert_eq!(r.verdict, Verdict::Warnings, "{r:#?}");
    assert_eq!(
        problems(&r),
        [
            (0, Check::Role, Level::Warning),
            (1, Check::Role, Level::Unusable)
        ]
    );
    let f = finding(&r, 1, Check::Role);
    assert_eq!(f.summary, "replica");
    assert!(
        f.detail.contains(&format!("a replica of 127.0.0.1:{port}")),
        "{}",
        f.detail
    );
    assert!(!r.nodes[1].usable);
    assert_eq!(finding(&r, 0, Check::Role).summary, "master, 1 replica");
    assert_eq!(r.usable, 2);
}

/// A cluster-mode server listed as a single node (`redis://`) is unusable,
/// and the finding says to list the cluster as one `redis+cluster://`
/// member. Control: testing `cluster_enabled:yes` passed it as off.
#[tokio::test]
async fn a_cluster_member_is_flagged() {
    let bus = crate::support::free_port().to_string();
    let member =
        LocalNode::start_with(&["--cluster-enabled", "yes", "--cluster-port", &bus]).unwrap();
    let (a, b) = (start_node(), start_node());
    let r = check(vec![a.url(), member.url(), b.url()]).await;
    assert_eq!(
        problems(&r),
        [(1, Check::Cluster, Level::Unusable)],
        "{r:#?}"
    );
    assert!(
        finding(&r, 1, Check::Cluster)
            .detail
            .contains("cluster_enabled:1")
    );
    assert!(
        finding(&r, 1, Check::Cluster)
            .detail
            .contains("redis+cluster://")
    );
    assert_eq!((r.verdict, r.usable), (Verdict::Warnings, 2));
}

/// Commands refused by an ACL or renamed away make their findings unknown,
/// never failures; facts INFO also carries are read from there when only
/// CONFIG is refused. Control: a refusal reported as an unusable node made
/// the first two nodes unusable and the verdict unusable.
#[tokio::test]
async fn refused_or_disabled_commands_are_unknown() {
    let blind = start_node();
    let _: () = blind
        .cmd(&[
            "ACL", "SETUSER", "blind", "on", ">pw", "~*", "+@all", "-config", "-info",
        ])
        .unwrap();
    let renamed = LocalNode::start_with(&[
        "--rename-command",
        "CONFIG",
        "CONFIG-hidden-8f3a",
        "--rename-command",
        "INFO",
        "INFO-hidden-8f3a",
    ])
    .unwrap();
    let no_config = start_node();
    let _: () = no_config
        .cmd(&[
            "ACL", "SETUSER", "noconfig", "on", ">pw", "~*", "+@all", "-config",
        ])
        .unwrap();
    let r = check(vec![
        blind.url().replace("redis://", "redis://blind:pw@"),
        renamed.url(),
        no_config.url().replace("redis://", "redis://noconfig:pw@"),
    ])
    .await;
    assert_eq!((r.verdict, r.usable), (Verdict::Warnings, 3), "{r:#?}");
    let unknown = [
        Check::Cluster,
        Check::Version,
        Check::Eviction,
        Check::Persistence,
        Check::Duplicate,
    ];
    for node in 0..2 {
        for c in Check::ALL {
            let f = finding(&r, node, c);
            let want = if unknown.contains(&c) {
                Level::Unknown
            } else {
                Level::Ok
            };
            assert_eq!(f.level, want, "node {node} {c}: {f:?}");
        }
        assert!(r.nodes[node].usable);
    }
    assert_eq!(finding(&r, 0, Check::Role).summary, "master", "from ROLE");
    let why = &finding(&r, 0, Check::Eviction).detail;
    assert!(
        why.contains("CONFIG GET maxmemory-policy refused by the server's ACL"),
        "{why}"
    );
    assert!(why.contains("INFO refused by the server's ACL"), "{why}");
    let why = &finding(&r, 1, Check::Version).detail;
    assert!(why.contains("INFO is renamed or disabled"), "{why}");
    // CONFIG refused, INFO allowed: the same answers as for the admin.
    assert!(
        r.nodes[2].findings.iter().all(|f| f.level == Level::Ok),
        "{:#?}",
        r.nodes[2]
    );
    assert_eq!(finding(&r, 2, Check::Eviction).summary, "noeviction");
    assert_eq!(finding(&r, 2, Check::Persistence).summary, "none");
    assert!(!format!("{r:?}").contains("pw@"), "no password shown");
}

/// A node slower than the per-node timeout is a warning; one that never
/// answers is unreachable, and the check still returns within its timeout.
/// Control: comparing the latency against the check timeout instead of the
/// per-node timeout passed the slow node as ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_nodes_are_bounded() {
    let c = Cluster::start(3);
    let slow = Proxy::start(c.nodes[0].port()).await.unwrap();
    let silent = Proxy::start(c.nodes[1].port()).await.unwrap();
    slow.set(Mode::Delay(Duration::from_millis(120)));
    silent.set(Mode::Hold);
    let r = Redlock::builder()
        .nodes([slow.url(), silent.url(), c.nodes[2].url()])
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap(); // the default per-node timeout: 50 ms
    let start = Instant::now();
    let r = r.check_within(Duration::from_secs(1)).await;
    let took = start.elapsed();
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert_eq!(
        problems(&r),
        [
            (0, Check::Reachable, Level::Warning),
            (1, Check::Reachable, Level::Unusable)
        ],
        "{r:#?}"
    );
    let f = finding(&r, 0, Check::Reachable);
    assert!(f.summary.starts_with("slow "), "{f:?}");
    assert!(
        f.detail.contains("more than the per-node timeout (50 ms)"),
        "{f:?}"
    );
    let f = finding(&r, 1, Check::Reachable);
    assert_eq!(f.summary, "no answer", "{f:?}");
    assert_eq!((r.verdict, r.usable), (Verdict::Warnings, 2));
}

/// A server that answers bytes that are not RESP is not reachable as
/// Redis, and nothing else is asked of it. Control: counting any answer as
/// reachable reported it reachable (ok) with every other check unknown.
#[tokio::test]
async fn a_server_that_is_not_redis_is_unreachable() {
    let garbage = FakeServer::start(Hostile::Garbage).await;
    let (a, b) = (start_node(), start_node());
    let r = check(vec![a.url(), garbage.url(), b.url()]).await;
    assert_eq!(
        problems(&r),
        [(1, Check::Reachable, Level::Unusable)],
        "{r:#?}"
    );
    assert_eq!(r.nodes[1].findings.len(), 1);
    let f = finding(&r, 1, Check::Reachable);
    assert!(f.detail.starts_with("connected, but TIME: "), "{f:?}");
    assert_eq!((r.verdict, r.usable), (Verdict::Warnings, 2));
}

/// A minimal RESP server that answers `TIME` with its clock `skew` off,
/// `INFO` with `version` and `run_id`, and refuses everything else as an
/// unknown command: what a real server cannot be made to be.
async fn fake_redis(version: &'static str, skew_s: i64, run_id: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some((cmd, used)) = parse_command(&buf) {
                        buf.drain(..used);
                        let reply = match cmd.to_ascii_uppercase().as_str() {
                            "TIME" => {
                                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                                let secs = (now.as_secs() as i64 + skew_s).to_string();
                                let us = now.subsec_micros().to_string();
                                format!(
                                    "*2\r\n${}\r\n{secs}\r\n${}\r\n{us}\r\n",
                                    secs.len(),
                                    us.len()
                                )
                            }
                            "INFO" => {
                                let body = format!(
                                    "# Server\r\nredis_version:{version}\r\nredis_mode:standalone\r\n\
                                     run_id:{run_id}\r\n# Replication\r\nrole:master\r\n\
                                     connected_slaves:0\r\n# Memory\r\nmaxmemory:0\r\n\
                                     maxmemory_policy:noeviction\r\n# Persistence\r\n\
                                     aof_enabled:0\r\n# Cluster\r\ncluster_enabled:0\r\n"
                                );
                                format!("${}\r\n{body}\r\n", body.len())
                            }
                            other => format!("-ERR unknown command '{other}'\r\n"),
                        };
                        if s.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    format!("redis://127.0.0.1:{port}")
}

/// The first command name of a RESP array in `buf`, and the bytes it used.
fn parse_command(buf: &[u8]) -> Option<(String, usize)> {
    let line = |at: usize| {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((std::str::from_utf8(&buf[at..end]).ok()?, end + 2))
    };
    let (head, mut at) = line(0)?;
    let n: usize = head.strip_prefix('*')?.parse().ok()?;
    let mut name = String::new();
    for i in 0..n {
        let (len, start) = line(at)?;
        let len: usize = len.strip_prefix('$')?.parse().ok()?;
        let arg = buf.get(start..start + len)?;
        if i == 0 {
            name = String::from_utf8_lossy(arg).into_owned();
        }
        at = start + len + 2;
        if buf.len() < at {
            return None;
        }
    }
    Some((name, at))
}

/// A clock 5 s ahead is a warning with its offset; Redis 2.6.0 (no SET
/// with PX) is unusable and 5.0 a warning; CONFIG refused as unknown falls back
/// to INFO. Control: a version compare on the major number only passed
/// 2.6.0 as a warning.
#[tokio::test]
async fn clock_offset_and_old_versions() {
    let ahead = fake_redis("7.2.4", 5, "aaaaaaaa00000000000000000000000000000001").await;
    let ancient = fake_redis("2.6.0", 0, "bbbbbbbb00000000000000000000000000000002").await;
    let old = fake_redis("5.0.14", 0, "cccccccc00000000000000000000000000000003").await;
    let r = check(vec![ahead, ancient, old]).await;
    assert_eq!(
        problems(&r),
        [
            (0, Check::Clock, Level::Warning),
            (1, Check::Version, Level::Unusable),
            (2, Check::Version, Level::Warning)
        ],
        "{r:#?}"
    );
    let f = finding(&r, 0, Check::Clock);
    assert!(
        f.summary.starts_with("+4.9") || f.summary.starts_with("+5.0"),
        "{f:?}"
    );
    assert!(f.detail.contains("ahead of this machine's"), "{f:?}");
    let offset = r.nodes[0].clock_offset_us.unwrap();
    assert!((4_000_000..6_000_000).contains(&offset), "{offset}");
    assert!(
        finding(&r, 1, Check::Version)
            .detail
            .contains("SET with PX (Redis 2.6.12)")
    );
    assert!(
        finding(&r, 2, Check::Version)
            .detail
            .contains("older than 6.0")
    );
    assert_eq!(
        finding(&r, 0, Check::Eviction).summary,
        "noeviction",
        "from INFO"
    );
    assert_eq!((r.verdict, r.usable), (Verdict::Warnings, 2));
}

/// `redlock doctor` exits 0 when all is well, 3 on a warning (naming the
/// node), 2 when unusable; `--json` says the same. Control: warnings mapped
/// to exit 0 failed the second step.
#[test]
fn doctor_exit_codes() {
    let mut c = Cluster::start(3);
    let doctor = |c: &Cluster, json: bool| {
        let mut cmd = redlock(c);
        cmd.args(["doctor", "--node-timeout", "1s"]);
        if json {
            cmd.arg("--json");
        }
        output(cmd)
    };
    let o = doctor(&c, false);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(0), "{text}{}", stderr(&o));
    assert!(
        text.ends_with("verdict: ok (3 of 3 nodes usable, quorum 2)\n"),
        "{text}"
    );
    assert!(
        text.contains("restarts ("),
        "the no-AOF rule is printed: {text}"
    );

    let _: () = c.nodes[0]
        .cmd(&["CONFIG", "SET", "maxmemory-policy", "volatile-ttl"])
        .unwrap();
    let o = doctor(&c, false);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(3), "{text}{}", stderr(&o));
    let line = format!(
        "127.0.0.1:{} eviction (warning): maxmemory-policy volatile-ttl",
        c.nodes[0].port()
    );
    assert!(text.contains(&line), "{text}");
    let o = doctor(&c, true);
    assert_eq!(o.status.code(), Some(3));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["verdict"], "warnings");
    assert_eq!(j["nodes"][0]["findings"][4]["check"], "eviction");
    assert_eq!(j["nodes"][0]["findings"][4]["level"], "warning");

    c.nodes[1].kill();
    c.nodes[2].kill();
    let o = doctor(&c, false);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(o.status.code(), Some(2), "{text}{}", stderr(&o));
    assert!(
        text.ends_with("verdict: unusable (1 of 3 nodes usable, quorum 2)\n"),
        "{text}"
    );
}
