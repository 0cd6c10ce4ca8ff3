//! Real `redis-server` processes for the tests, on free loopback ports in
//! temp dirs, killed on drop (the library's [`redlock_wasm::local`]), plus
//! helpers that read their state.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use redlock_wasm::local::{LocalCluster, LocalNode};

pub mod history;
pub mod servers;
pub use redlock_wasm::local::proxy;

pub use redlock_wasm::local::free_port as try_free_port;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    try_free_port().expect("bind 127.0.0.1:0")
}

/// `n` distinct ports nobody listens on right now (calling [`free_port`]
/// `n` times may give one port twice: each is released before the next).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Starts one node, or fails the test saying how to install redis-server.
pub fn start_node() -> LocalNode {
    LocalNode::start().unwrap_or_else(|e| panic!("{e}"))
}

/// Reads a node's state with a synchronous connection.
pub trait Inspect {
    fn conn(&self) -> redis::Connection;

    /// The value of `key`, if any.
    fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET").arg(key).query(&mut self.conn()).unwrap()
    }

    /// Remaining TTL of `key` in ms (-2 missing, -1 no TTL).
    fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL").arg(key).query(&mut self.conn()).unwrap()
    }

    /// Number of keys.
    fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE").query(&mut self.conn()).unwrap()
    }

    /// Runs any command.
    fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query(&mut self.conn())
    }

    /// Sets `key` to `value` with a TTL, as another client would.
    fn set(&self, key: &str, value: &str, ttl_ms: u64) {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .query(&mut self.conn())
            .unwrap();
    }
}

impl Inspect for LocalNode {
    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to test redis")
    }
}

/// N independent test nodes.
pub struct Cluster {
    pub nodes: Vec<LocalNode>,
}

impl Cluster {
    pub fn start(n: usize) -> Self {
        let c = LocalCluster::start(n).unwrap_or_else(|e| panic!("{e}"));
        Cluster { nodes: c.nodes }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(LocalNode::url).collect()
    }

    /// How many running nodes hold `key` with exactly `token`.
    pub fn holding(&self, key: &str, token: &str) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.get(key).as_deref() == Some(token))
            .count()
    }

    /// How many running nodes have `key` at all.
    pub fn with_key(&self, key: &str) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.get(key).is_some())
            .count()
    }

    /// Total keys over running nodes.
    pub fn total_keys(&self) -> i64 {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.dbsize())
            .sum()
    }
}

/// A unique key per test.
/// One acquire attempt (no retry, `within` to decide) that must fail to
/// reach a quorum: the failure, node by node.
pub async fn one_failed_attempt(
    r: &redlock_wasm::Redlock,
    key: &str,
    within: Duration,
) -> redlock_wasm::QuorumFailure {
    let opts = redlock_wasm::AcquireOptions::new().retry_count(0);
    match r.acquire_with(key, within, opts).await {
        Err(redlock_wasm::Error::UnableToAcquire(f)) => f,
        other => panic!("expected a failed quorum: {other:?}"),
    }
}

pub fn key(name: &str) -> String {
    format!("test:{name}:{}", std::process::id())
}

/// Waits up to 2 s for `cond`: operations return at quorum, so the last
/// nodes' commands may still be on the wire for a moment. Async, so the
/// runtime keeps driving them while the test waits.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "not within 2 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
