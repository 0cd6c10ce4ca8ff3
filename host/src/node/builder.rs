//! [`RedisNodeCtxBuilder`]: the nodes, the per-node timeout, the limit and
//! the key prefix, checked without any I/O.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::command::Scripts;
use super::conn::{Server, Servers};
use super::lane::{Lane, Settings, Work};
use super::memory::Memory;
use super::{Inner, Node, RedisNodeCtx};
use crate::addr::NodeAddr;
use crate::error::Error;

/// Per-node command timeout unless configured. Redlock wants it much smaller
/// than the TTL (the spec: 5-50 ms for a 10 s TTL) so one dead node costs
/// every caller at most this much.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(50);

/// Unanswered requests per node and context unless configured: 10, the
/// Go library's semaphore, counted per node.
pub const DEFAULT_CONCURRENCY: usize = 10;

/// Where a node comes from.
enum NodeSpec {
    Memory,
    Url(String),
    Client(Box<redis::Client>),
}

/// Builder-style structure used to create a [`RedisNodeCtx`].
#[derive(Default)]
pub struct RedisNodeCtxBuilder {
    nodes: Vec<NodeSpec>,
    timeout: Option<Duration>,
    concurrency: Option<usize>,
    prefix: String,
}

impl RedisNodeCtxBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a node by URL: `redis://[user[:password]@]host[:port][/db]`, or
    /// `rediss://...` for TLS; a Redis Cluster as one member:
    /// `redis+cluster://[user[:password]@]host1:port1[,host2:port2...]` (or
    /// `rediss+cluster://`), its seed addresses. Checked in
    /// [`build`](Self::build).
    pub fn node(mut self, url: impl Into<String>) -> Self {
        self.nodes.push(NodeSpec::Url(url.into()));
        self
    }

    /// Adds a node from an existing `redis::Client`.
    pub fn client(mut self, client: redis::Client) -> Self {
        self.nodes.push(NodeSpec::Client(Box::new(client)));
        self
    }

    /// Adds `n` in-process nodes that keep keys in memory with their TTLs.
    /// They exclude only within this process: for measuring the lock core
    /// and the host without Redis, and for tests of code that takes locks.
    pub fn in_memory(mut self, n: usize) -> Self {
        self.nodes.extend((0..n).map(|_| NodeSpec::Memory));
        self
    }

    /// Per-node command timeout. The default is [`DEFAULT_NODE_TIMEOUT`] (50 ms).
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Maximum unanswered round trips per node, over all operations sharing
    /// this context (on a cluster member, a round trip carries one
    /// command); requests made meanwhile wait in the node's queue, in order,
    /// and leave together in the next write. The default is
    /// [`DEFAULT_CONCURRENCY`] (10), the Go library's semaphore of 10; 1
    /// serialises each node's round trips. A request's node timeout counts
    /// its wait, so a slow node's queue never holds a caller longer than
    /// the timeout.
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = Some(limit);
        self
    }

    /// A prefix put in front of every key in Redis. None by default, so lock
    /// keys interoperate with other Redlock clients that use the same names.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Checks every node (URL syntax, no duplicates, at least one) and the
    /// limits, without any I/O. Connections are made on first use.
    pub fn build(self) -> Result<RedisNodeCtx, Error> {
        if self.nodes.is_empty() {
            return Err(Error::Config("no Redis nodes given".into()));
        }
        let timeout = self.timeout.unwrap_or(DEFAULT_NODE_TIMEOUT);
        if timeout.is_zero() {
            return Err(Error::Config("node timeout must be above zero".into()));
        }
        let concurrency = self.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if concurrency == 0 {
            return Err(Error::Config(
                "concurrency limit must be at least 1 request per node, got 0".into(),
            ));
        }
        let settings = Arc::new(Settings {
            timeout,
            limit: concurrency,
            scripts: Scripts::new(),
            work: Work::default(),
        });
        let mut nodes: Vec<Node> = Vec::with_capacity(self.nodes.len());
        let servers = Servers::default();
        let any_same = Arc::new(AtomicBool::new(false));
        for spec in self.nodes {
            let (addr, client) = match spec {
                NodeSpec::Memory => {
                    let addr = NodeAddr::parse(&format!("redis://in-memory-{}", nodes.len()))?;
                    nodes.push(Node::Memory(Box::new(addr), Memory::default()));
                    continue;
                }
                NodeSpec::Url(url) => {
                    let addr = NodeAddr::parse(&url)?;
                    // Skip CLIENT SETINFO: one round trip less per connect, and
                    // an ACL user limited to the lock's commands may not run it.
                    let info = addr.info().clone();
                    let settings = info.redis_settings().clone().set_skip_set_lib_name();
                    let info = info.set_redis_settings(settings);
                    let client = redis::Client::open(info).map_err(|e| {
                        Error::Config(format!("node {addr}: {}", e.detail().unwrap_or("invalid")))
                    })?;
                    (addr, client)
                }
                NodeSpec::Client(client) => (
                    NodeAddr::from_info(client.get_connection_info().clone())?,
                    *client,
                ),
            };
            // Another database of the same server is the same server; two
            // clusters that share a seed are one cluster.
            let mine = addr.identities();
            if let Some(dup) = nodes
                .iter()
                .find(|n| n.addr().identities().iter().any(|i| mine.contains(i)))
            {
                return Err(Error::Config(format!(
                    "node {addr} is listed twice (as {}): Redlock needs independent nodes",
                    dup.addr()
                )));
            }
            if addr.is_tls() {
                // rustls needs one process-wide crypto provider; another part
                // of the program may have installed one already, which is fine.
                let _ = rustls::crypto::ring::default_provider().install_default();
            }
            let cluster = if addr.is_cluster() {
                Some(cluster_client(&addr, timeout)?)
            } else {
                None
            };
            let server = Server::new(
                addr,
                client,
                cluster,
                nodes.len(),
                servers.clone(),
                any_same.clone(),
            );
            nodes.push(Node::Redis(Lane::new(server, settings.clone())));
        }
        if u32::try_from(nodes.len()).is_err() {
            return Err(Error::Config("too many nodes".into()));
        }
        Ok(RedisNodeCtx {
            inner: Arc::new(Inner {
                nodes,
                settings,
                prefix: self.prefix,
            }),
        })
    }
}

/// How long a cluster member's command may take, redirections and retries
/// included, before the cluster connection gives up on it: ten node
/// timeouts, at least 500 ms. The lane answers the guest at the node
/// timeout anyway; this bounds how long a command on one key holds back the
/// next one on the same key (a lane sends them one after the other).
pub(super) fn cluster_response_timeout(node_timeout: Duration) -> Duration {
    (node_timeout * 10).max(Duration::from_millis(500))
}

/// A cluster member's client: its seeds, their credentials and TLS, the
/// connection timeout and a bounded retry budget (a dead shard's commands
/// fail fast instead of retrying for seconds).
fn cluster_client(
    addr: &NodeAddr,
    timeout: Duration,
) -> Result<redis::cluster::ClusterClient, Error> {
    let seeds = addr.seeds().to_vec();
    let settings = seeds[0].redis_settings().clone();
    let mut b = redis::cluster::ClusterClientBuilder::new(seeds)
        .connection_timeout(timeout)
        .response_timeout(cluster_response_timeout(timeout))
        .retries(3)
        .min_retry_wait(5)
        .max_retry_wait(50);
    if let Some(user) = settings.username() {
        b = b.username(user);
    }
    if let Some(password) = settings.password() {
        b = b.password(password);
    }
    if addr.is_tls() {
        b = b.tls(redis::TlsMode::Secure);
    }
    b.build()
        .map_err(|e| Error::Config(format!("node {addr}: {}", e.detail().unwrap_or("invalid"))))
}
