//! Promises of the host library that round one broke (issue #11): one Redis
//! server never counts twice, a SET is never sent twice, a slow node does
//! not cost a losing attempt its timeout, and the Lua scripts do what the
//! WIT contract says, on a real Redis.

use std::time::{Duration, Instant};

use redlock_wasm::local::proxy::{Mode, Proxy};
use redlock_wasm::{AcquireOptions, Error, NodeError, Outcome, Redlock};

use crate::support::{Cluster, Inspect, key, one_failed_attempt};

const SET_IF_ABSENT: &str = include_str!("../../host/lua/set-if-absent.lua");
const EXTEND_IF_TOKEN: &str = include_str!("../../host/lua/extend-if-token.lua");
const DELETE_IF_TOKEN: &str = include_str!("../../host/lua/delete-if-token.lua");

fn eval(n: &impl Inspect, script: &str, key: &str, args: &[&str]) -> redis::RedisResult<i64> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(1).arg(key);
    for a in args {
        cmd.arg(*a);
    }
    cmd.query(&mut n.conn())
}

/// The scripts on a real Redis: set-if-absent sets a free key, refreshes
/// its own token's TTL and refuses another token or another type; extend
/// never shortens; delete only deletes its own token.
#[test]
fn lua_scripts_keep_the_contract() {
    let c = Cluster::start(1);
    let n = &c.nodes[0];
    let k = key("scripts");
    assert_eq!(eval(n, SET_IF_ABSENT, &k, &["me", "10000"]), Ok(1));
    assert_eq!(n.get(&k).as_deref(), Some("me"));
    n.cmd::<()>(&["PEXPIRE", &k, "500"]).unwrap();
    assert_eq!(
        eval(n, SET_IF_ABSENT, &k, &["me", "10000"]),
        Ok(1),
        "own token"
    );
    assert!(n.pttl(&k) > 9_000, "its TTL starts again");
    assert_eq!(eval(n, SET_IF_ABSENT, &k, &["you", "10000"]), Ok(0));
    assert_eq!(
        n.get(&k).as_deref(),
        Some("me"),
        "another token changed nothing"
    );

    assert_eq!(eval(n, EXTEND_IF_TOKEN, &k, &["me", "1000"]), Ok(1));
    assert!(n.pttl(&k) > 9_000, "a shorter extend does not shorten");
    assert_eq!(eval(n, EXTEND_IF_TOKEN, &k, &["me", "60000"]), Ok(1));
    assert!(n.pttl(&k) > 59_000, "a longer one extends");
    assert_eq!(eval(n, EXTEND_IF_TOKEN, &k, &["you", "90000"]), Ok(0));

    assert_eq!(eval(n, DELETE_IF_TOKEN, &k, &["you"]), Ok(0));
    assert_eq!(eval(n, DELETE_IF_TOKEN, &k, &["me"]), Ok(1));
    assert_eq!(n.get(&k), None);

    let list = key("scripts-list");
    let _: i64 = n.cmd(&["LPUSH", &list, "x"]).unwrap();
    assert_eq!(
        eval(n, SET_IF_ABSENT, &list, &["me", "10000"]),
        Ok(0),
        "another type is held"
    );
}

/// Two databases of one server are one node: refused before any I/O.
#[test]
fn two_databases_of_one_server_are_refused() {
    let err = Redlock::new(
        [
            "redis://127.0.0.1:7001/0",
            "redis://127.0.0.1:7001/1",
            "redis://127.0.0.1:7002",
        ],
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("listed twice")),
        "{err}"
    );
}

/// One server under two names (`127.0.0.1` and `localhost`) with a third
/// node dead: the second name never counts, so no quorum of 2 sits on one
/// process; the next call is refused as a configuration error naming both.
/// Negative control, run once by hand: without the run_id check, acquire
/// succeeded on the one live server.
#[tokio::test]
async fn one_server_under_two_names_never_counts_twice() {
    let c = Cluster::start(1);
    let port = c.nodes[0].port();
    let dead = crate::support::free_port();
    let r = Redlock::new(
        [
            format!("redis://127.0.0.1:{port}"),
            format!("redis://localhost:{port}"),
            format!("redis://127.0.0.1:{dead}"),
        ],
        Duration::from_secs(10),
    )
    .unwrap();
    let k = key("same-server");
    let f = one_failed_attempt(&r, &k, Duration::from_secs(2)).await;
    assert!(
        f.nodes.iter().any(|n| matches!(&n.outcome, Outcome::Failed(NodeError::Other(m)) if m.contains("same Redis server"))),
        "{f}"
    );
    let err = r.acquire(&k, Duration::from_secs(1)).await.unwrap_err();
    let Error::Config(m) = &err else {
        panic!("{err:?}")
    };
    assert!(
        m.contains(&format!("127.0.0.1:{port}")) && m.contains(&format!("localhost:{port}")),
        "{m}"
    );
    r.settle(Duration::from_secs(1)).await;
    assert_eq!(c.nodes[0].get(&k), None, "nothing left");
}

/// A SET that meets a dead connection (its node restarted) is not sent
/// again on a new one: that node fails the attempt, and nothing is left once
/// the cleanup settled. Negative control, run once by hand: with the resend
/// of round one, node 0 counted as granted and the acquire succeeded.
#[tokio::test]
async fn a_set_is_never_sent_twice() {
    let mut c = Cluster::start(3);
    let k = key("no-resend");
    let r = Redlock::builder()
        .nodes(c.urls())
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(r.connect().await.iter().all(Result::is_ok));
    // Node 1 is held by someone else, node 2 is free: node 0 decides.
    c.nodes[1].set(&k, "someone-else", 10_000);
    c.nodes[0].restart().unwrap();
    let opts = AcquireOptions::new().retry_count(0);
    let err = r
        .acquire_with(&k, Duration::from_secs(2), opts)
        .await
        .unwrap_err();
    let Error::UnableToAcquire(f) = &err else {
        panic!("{err:?}")
    };
    assert!(
        matches!(
            f.nodes[0].outcome,
            Outcome::Failed(NodeError::Connection(_))
        ),
        "{err}"
    );
    r.settle(Duration::from_secs(1)).await;
    assert_eq!(c.nodes[0].get(&k), None);
    assert_eq!(c.nodes[2].get(&k), None);
}

/// One node slowed by 300 ms (node timeout 1 s) and the key held elsewhere:
/// a losing attempt does not wait for the slow node's delete, so an acquire
/// with a 600 ms budget and 10 ms pauses makes many attempts. Negative
/// control, run once by hand: with the cleanup waiting for every node
/// (round one), it made 1 in the whole budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_node_does_not_slow_losing_attempts() {
    let c = Cluster::start(5);
    let k = key("slow-cleanup");
    let slow = Proxy::start(c.nodes[4].port()).await.unwrap();
    let mut urls: Vec<String> = c.urls()[..4].to_vec();
    urls.push(slow.url());
    let r = Redlock::builder()
        .nodes(urls)
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    assert!(r.connect().await.iter().all(Result::is_ok));
    slow.set(Mode::Delay(Duration::from_millis(300)));
    for n in &c.nodes[..3] {
        n.set(&k, "someone-else", 10_000);
    }
    let opts = AcquireOptions::new()
        .retry_count(1_000)
        .retry_delay(Duration::from_millis(10))
        .retry_jitter(Duration::ZERO);
    let start = Instant::now();
    let err = r
        .acquire_with(&k, Duration::from_millis(600), opts)
        .await
        .unwrap_err();
    let took = start.elapsed();
    let Error::UnableToAcquire(f) = &err else {
        panic!("{err:?}")
    };
    assert!(
        f.attempts >= 10,
        "{} attempts in {took:?}: {err}",
        f.attempts
    );
    slow.set(Mode::Pass);
    r.settle(Duration::from_secs(2)).await;
    assert_eq!(c.nodes[3].get(&k), None, "cleaned up");
    assert_eq!(
        c.nodes[4].get(&k),
        None,
        "cleaned up behind the slow node too"
    );
}

/// A holder that believes it still holds a lock its successor now holds
/// (a lock rebuilt with a far validity, as a paused client would have):
/// the nodes refuse its extend and release, and the successor's keys are
/// untouched. Decided by the nodes, not by the client's clock. Negative
/// control, run once by hand: with an extend script that does not compare
/// the token (a plain PEXPIRE), the late extend succeeded.
#[tokio::test]
async fn late_extend_and_release_are_refused_by_the_nodes() {
    let c = Cluster::start(3);
    let k = key("late-holder");
    let r = Redlock::builder()
        .nodes(c.urls())
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let short = AcquireOptions::new().ttl(Duration::from_millis(100));
    let old = r
        .acquire_with(&k, Duration::from_secs(1), short)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let successor = r.acquire(&k, Duration::from_secs(1)).await.unwrap();
    r.settle(Duration::from_secs(1)).await;
    assert_eq!(c.holding(&k, successor.token()), 3);

    let paused =
        redlock_wasm::Lock::from_parts(&k, old.token(), Instant::now() + Duration::from_secs(10));
    let err = r
        .extend(&paused, Duration::from_secs(60))
        .await
        .unwrap_err();
    let Error::LockLost(f) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(f.attempts, 1, "asked the nodes: {err}");
    assert!(f.refused() >= 2, "the nodes refused: {err}");
    let err = r.release(&paused).await.unwrap_err();
    assert!(matches!(err, Error::UnableToRelease(_)), "{err:?}");

    r.settle(Duration::from_secs(1)).await;
    assert_eq!(
        c.holding(&k, successor.token()),
        3,
        "the successor's keys stay"
    );
    for n in &c.nodes {
        assert!(
            n.pttl(&k) <= 10_000,
            "not extended to 60 s by the old holder"
        );
    }
    r.release(&successor).await.unwrap();
}

/// A cleanup delete never overtakes the SET it cleans up after, even when
/// both wait for their node's first connection on a multi-thread runtime:
/// every request joins its node's queue when made. Nodes 3 and 4 hold their
/// first connect (the proxy forwards nothing) while the acquire fails on the
/// refusals of nodes 0-2 and issues its deletes; once they connect, each
/// runs the SET and then the delete, and no key is left.
/// Negative control, run once by hand: with each pipeline's requests
/// written in reverse order, nodes 3 and 4 kept the failed acquire's key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_delete_follows_its_set_through_a_first_connect() {
    let c = Cluster::start(5);
    let mut urls = c.urls();
    let mut proxies = Vec::new();
    for i in [3, 4] {
        let p = Proxy::start(c.nodes[i].port()).await.unwrap();
        p.set(Mode::Hold);
        urls[i] = p.url();
        proxies.push(p);
    }
    let r = Redlock::builder()
        .nodes(urls)
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let k = key("delete-follows-set");
    for n in &c.nodes[..3] {
        let _: () = n.cmd(&["SET", &k, "someone-else", "PX", "10000"]).unwrap();
    }
    let opts = AcquireOptions::new().retry_count(0);
    let err = r
        .acquire_with(&k, Duration::from_secs(5), opts)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnableToAcquire(_)), "{err}");
    for p in &proxies {
        p.set(Mode::Pass);
    }
    r.settle(Duration::from_secs(3)).await;
    for n in &c.nodes[3..] {
        let stats: String = n.cmd(&["INFO", "commandstats"]).unwrap();
        // The SET is a plain `SET NX PX` (a first attempt), its delete a script.
        let calls: u32 = ["cmdstat_set:calls=", "cmdstat_evalsha:calls="]
            .iter()
            .map(|prefix| {
                stats
                    .lines()
                    .find_map(|l| l.strip_prefix(prefix))
                    .and_then(|rest| rest.split(',').next())
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .sum();
        assert!(calls >= 2, "the SET and its delete both ran: {stats}");
        assert_eq!(
            n.get(&k),
            None,
            "the failed acquire's SET outlived its delete"
        );
    }
}
