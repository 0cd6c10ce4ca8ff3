//! The `redis-node` capability: N Redis masters for any wasmtime embedder.
//!
//! Laid out like wasmtime's `wasi-keyvalue`: [`RedisNodeCtx`] owns the state
//! and is made by [`RedisNodeCtxBuilder`]; a borrowed [`RedisNode`] view hands
//! it to the generated traits; [`add_to_linker`] wires it into a `Linker`.
//! A plugin host links it for its own components exactly as
//! [`Redlock`](crate::Redlock) does for the lock core.
//!
//! Every call returns at once with a `pending-reply` resource. Its request
//! runs when the guest polls it (wasi:io/poll drives all of a guest's
//! pollables together, so a fan-out goes out on every node at once), and its
//! future is kept in the resource so no progress is lost between polls.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, Script, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use crate::addr::NodeAddr;
use crate::bindings::node::{self, NodeError, Reply};
use crate::error::Error;

/// Per-node command timeout unless configured. Redlock wants it much smaller
/// than the TTL (the spec: 5-50 ms for a 10 s TTL) so one dead node costs
/// every caller at most this much.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(50);

/// Concurrent in-flight Redis requests per context unless configured: 10,
/// as in the original Go library.
pub const DEFAULT_CONCURRENCY: usize = 10;

/// Compare-and-delete: deletes the key only while it holds our token. The
/// same script file serves the wasi:sockets plug (`plug/`).
const DELETE_IF_TOKEN: &str = include_str!("../lua/delete-if-token.lua");

/// Compare-and-extend: a TTL at least the new one, only while the key holds
/// our token.
const EXTEND_IF_TOKEN: &str = include_str!("../lua/extend-if-token.lua");

/// Compare-and-set: set when free, or refresh when it already holds our
/// token (a retry finding its own earlier SET counts as granted).
const SET_IF_ABSENT: &str = include_str!("../lua/set-if-absent.lua");

/// The state of the `redis-node` capability: node connections, the per-node
/// timeout, the concurrency limit and the key prefix. Cheap to clone; clones
/// share connections and the limit.
#[derive(Clone)]
pub struct RedisNodeCtx {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Vec<Node>,
    timeout: Duration,
    limiter: Arc<Semaphore>,
    concurrency: usize,
    prefix: String,
    set: Script,
    delete: Script,
    extend: Script,
    /// Requests the guest stopped waiting for, finishing in the background.
    background: TaskTracker,
}

/// Which configured node first showed each server identity (`run_id`).
type Servers = Arc<Mutex<std::collections::HashMap<String, (usize, String)>>>;

struct Node {
    addr: NodeAddr,
    /// Set for in-memory nodes, which never touch the network.
    memory: Option<Memory>,
    client: redis::Client,
    /// The one multiplexed connection, once made; cleared when it breaks so
    /// the next request reconnects.
    conn: Mutex<Option<MultiplexedConnection>>,
    /// Held while connecting. tokio's mutex is FIFO, so requests that wait
    /// for a connection are sent in the order they were made: a cleanup
    /// delete never overtakes the SET it cleans up after.
    connecting: tokio::sync::Mutex<()>,
    /// This node's place in the configuration.
    index: usize,
    /// Shared by the context's nodes: the first node to show a server's
    /// `run_id` owns it; a later node that shows the same server is refused.
    servers: Servers,
    /// Set when this node turned out to be the same server as an earlier
    /// one: the address of that one, for the error.
    same_as: Mutex<Option<String>>,
    /// Shared by the context's nodes: set once any node is a duplicate, so
    /// that every call and request checks one atomic, not N mutexes.
    any_same: Arc<AtomicBool>,
}

/// An in-memory node's keys: value and expiry.
type Memory = Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>;

/// Where a node comes from.
enum NodeSpec {
    Memory,
    Url(String),
    Client(Box<redis::Client>),
}

/// What one node holds for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// The value (a lock token), if the key exists.
    pub holder: Option<String>,
    /// Remaining TTL, if the key exists and has one.
    pub ttl: Option<Duration>,
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
    /// `rediss://...` for TLS. Checked in [`build`](Self::build).
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

    /// Maximum concurrent in-flight Redis requests, over all nodes and all
    /// operations sharing this context. The default is
    /// [`DEFAULT_CONCURRENCY`] (10); 1 serialises every request. A request
    /// the guest stopped waiting for gives its slot back while it finishes,
    /// so a slow node's leftovers never starve the other nodes.
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
        if concurrency == 0 || concurrency > Semaphore::MAX_PERMITS {
            return Err(Error::Config(format!(
                "concurrency limit must be between 1 and {}, got {concurrency}",
                Semaphore::MAX_PERMITS
            )));
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(self.nodes.len());
        let servers = Servers::default();
        let any_same = Arc::new(AtomicBool::new(false));
        for spec in self.nodes {
            let memory = matches!(spec, NodeSpec::Memory).then(Memory::default);
            let (addr, client) = match spec {
                NodeSpec::Memory => {
                    let addr = NodeAddr::parse(&format!("redis://in-memory-{}", nodes.len()))?;
                    let client = redis::Client::open(addr.info().clone())
                        .map_err(|e| Error::Config(e.to_string()))?;
                    (addr, client)
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
            // Another database of the same server is the same server.
            if let Some(dup) = nodes.iter().find(|n| n.addr.identity() == addr.identity()) {
                return Err(Error::Config(format!(
                    "node {addr} is listed twice (as {}): Redlock needs independent nodes",
                    dup.addr
                )));
            }
            if addr.is_tls() {
                // rustls needs one process-wide crypto provider; another part
                // of the program may have installed one already, which is fine.
                let _ = rustls::crypto::ring::default_provider().install_default();
            }
            nodes.push(Node {
                addr,
                memory,
                client,
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                index: nodes.len(),
                servers: servers.clone(),
                same_as: Mutex::new(None),
                any_same: any_same.clone(),
            });
        }
        if u32::try_from(nodes.len()).is_err() {
            return Err(Error::Config("too many nodes".into()));
        }
        Ok(RedisNodeCtx {
            inner: Arc::new(Inner {
                nodes,
                timeout,
                limiter: Arc::new(Semaphore::new(concurrency)),
                concurrency,
                prefix: self.prefix,
                set: Script::new(SET_IF_ABSENT),
                delete: Script::new(DELETE_IF_TOKEN),
                extend: Script::new(EXTEND_IF_TOKEN),
                background: TaskTracker::new(),
            }),
        })
    }
}

impl RedisNodeCtx {
    /// A builder.
    pub fn builder() -> RedisNodeCtxBuilder {
        RedisNodeCtxBuilder::new()
    }

    /// Node addresses in index order, printable (no passwords).
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &NodeAddr> {
        self.inner.nodes.iter().map(|n| &n.addr)
    }

    /// Number of nodes, N.
    pub fn len(&self) -> usize {
        self.inner.nodes.len()
    }

    /// Always false: a context has at least one node.
    pub fn is_empty(&self) -> bool {
        self.inner.nodes.is_empty()
    }

    /// The per-node command timeout.
    pub fn node_timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The concurrency limit.
    pub fn concurrency(&self) -> usize {
        self.inner.concurrency
    }

    /// The key as stored in Redis: prefix + key.
    pub fn redis_key(&self, key: &str) -> String {
        self.prefixed(key.to_owned())
    }

    /// The key as stored in Redis, reusing `key`'s buffer when there is no prefix.
    fn prefixed(&self, key: String) -> String {
        if self.inner.prefix.is_empty() {
            key
        } else {
            let mut k = String::with_capacity(self.inner.prefix.len() + key.len());
            k.push_str(&self.inner.prefix);
            k.push_str(&key);
            k
        }
    }

    /// Connects to every node now rather than on first use; returns the
    /// per-node result. Optional: operations connect lazily.
    pub async fn connect(&self) -> Vec<Result<(), crate::error::NodeError>> {
        let pings = (0..self.inner.nodes.len()).map(|i| {
            let inner = self.inner.clone();
            async move {
                tokio::time::timeout(inner.timeout, async {
                    let node = &inner.nodes[i];
                    if node.memory.is_some() {
                        return Ok(());
                    }
                    let mut conn = node.connection(inner.timeout).await?;
                    let r = redis::cmd("PING").query_async::<()>(&mut conn).await;
                    node.check(&r);
                    r
                })
                .await
                .map_err(|_| crate::error::NodeError::Timeout)?
                .map_err(|e| classify(&e).into())
            }
        });
        futures::future::join_all(pings).await
    }

    /// Waits, at most `within`, for requests still running in the
    /// background: operations return at quorum, and the commands to slower
    /// nodes finish after. A short-lived process calls this before it exits
    /// so that every node, not just a quorum, sees its release.
    pub async fn settle(&self, within: Duration) {
        let t = &self.inner.background;
        t.close();
        let _ = tokio::time::timeout(within, t.wait()).await;
        t.reopen();
    }

    /// When two configured nodes turned out to be one Redis server (the same
    /// `run_id`, seen when they connected): the error naming both. Every
    /// operation is then refused with [`Error::Config`]; until then the
    /// later node of the two never counts.
    pub fn same_servers(&self) -> Option<String> {
        self.inner.nodes.iter().find_map(|n| {
            n.same_server_as().map(|earlier| {
                format!(
                    "nodes {earlier} and {} are the same Redis server (same run_id): \
                     Redlock needs independent nodes",
                    n.addr
                )
            })
        })
    }

    /// What every node holds for `key` right now (value and remaining TTL),
    /// read-only, for status displays. Not part of the algorithm.
    pub async fn inspect(&self, key: &str) -> Vec<Result<KeyState, crate::error::NodeError>> {
        let key = self.redis_key(key);
        let reads = (0..self.inner.nodes.len()).map(|i| {
            let (inner, key) = (self.inner.clone(), key.clone());
            async move {
                let node = &inner.nodes[i];
                if let Some(memory) = &node.memory {
                    let now = std::time::Instant::now();
                    let keys = memory.lock().unwrap_or_else(|e| e.into_inner());
                    let live = keys.get(&key).filter(|(_, exp)| *exp > now);
                    return Ok(KeyState {
                        holder: live.map(|(t, _)| t.clone()),
                        ttl: live.map(|(_, exp)| *exp - now),
                    });
                }
                let read = async {
                    let mut conn = node.connection(inner.timeout).await?;
                    let r = redis::pipe()
                        .cmd("GET")
                        .arg(&key)
                        .cmd("PTTL")
                        .arg(&key)
                        .query_async::<(Option<String>, i64)>(&mut conn)
                        .await;
                    node.check(&r);
                    r
                };
                let (holder, pttl) = tokio::time::timeout(inner.timeout, read)
                    .await
                    .map_err(|_| crate::error::NodeError::Timeout)?
                    .map_err(|e| crate::error::NodeError::from(classify(&e)))?;
                Ok(KeyState {
                    holder,
                    ttl: u64::try_from(pttl).ok().map(Duration::from_millis),
                })
            }
        });
        futures::future::join_all(reads).await
    }

    /// Node `i`'s client, or `None` for an in-memory node: for the
    /// deployment checks ([`crate::check`]), which open a connection of
    /// their own so that they never disturb the one lock requests share.
    pub(crate) fn check_client(&self, i: usize) -> Option<&redis::Client> {
        let node = self.inner.nodes.get(i)?;
        node.memory.is_none().then_some(&node.client)
    }

    /// Runs one command on one node with the limit and timeout applied.
    /// The permit goes into `slot`, so that a request the guest abandons
    /// gives its permit back at once while it finishes in the background:
    /// a slow node's leftovers must not starve the other nodes.
    pub(crate) fn request(&self, node: u32, cmd: Command, slot: Arc<PermitSlot>) -> BoxReply {
        let inner = self.inner.clone();
        Box::pin(async move {
            let Some(n) = inner.nodes.get(node as usize) else {
                return Reply::Failed(NodeError::Other(format!(
                    "no node {node}: there are {}",
                    inner.nodes.len()
                )));
            };
            // Waiting for a permit is not the node's fault: the timeout
            // starts once the request may go out.
            let Ok(permit) = inner.limiter.clone().acquire_owned().await else {
                return Reply::Failed(NodeError::Other("limiter closed".into()));
            };
            slot.hold(permit);
            let _release = ReleaseOnExit(&slot);
            if let Some(memory) = &n.memory {
                return cmd.apply(memory);
            }
            let run = async {
                let mut conn = n.connection(inner.timeout).await?;
                if let Some(earlier) = n.same_server_as() {
                    return Ok(Reply::Failed(NodeError::Other(format!(
                        "node {} is the same Redis server as node {earlier} (same run_id): \
                         Redlock needs independent nodes",
                        n.addr
                    ))));
                }
                let r = cmd.run(&mut conn, &inner).await;
                n.check(&r);
                match r {
                    // The connection had died (a restarted node): send a
                    // compare-and-delete or compare-and-extend once more on
                    // a new one (running twice is harmless). Never a SET: it
                    // may still land after the cleanup delete that a new
                    // connection would carry, and leave a key behind.
                    Err(e) if e.is_connection_dropped() && cmd.may_resend() => {
                        let mut conn = n.connection(inner.timeout).await?;
                        let r = cmd.run(&mut conn, &inner).await;
                        n.check(&r);
                        r
                    }
                    r => r,
                }
            };
            let reply = match tokio::time::timeout(inner.timeout, run).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    let e = classify(&e);
                    tracing::debug!(node = %n.addr, op = cmd.name(), error = ?e, "node failed");
                    Reply::Failed(e)
                }
                Err(_) => {
                    tracing::debug!(node = %n.addr, op = cmd.name(), "node timed out");
                    Reply::Failed(NodeError::Timeout)
                }
            };
            crate::metrics::node_reply(&n.addr, cmd.name(), &reply);
            reply
        })
    }
}

impl std::fmt::Debug for RedisNodeCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisNodeCtx")
            .field("nodes", &self.nodes().collect::<Vec<_>>())
            .field("node_timeout", &self.inner.timeout)
            .field("concurrency", &self.inner.concurrency)
            .field("key_prefix", &self.inner.prefix)
            .finish()
    }
}

impl Node {
    fn current(&self) -> Option<MultiplexedConnection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The node's connection, connecting first if there is none.
    async fn connection(&self, timeout: Duration) -> Result<MultiplexedConnection, RedisError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _turn = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None);
        let mut c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // Load the scripts now, so EVALSHA finds them: the NOSCRIPT
        // fallback needs a second round trip, which a request that timed
        // out (a paused node) would never make. An ACL user without SCRIPT
        // is refused here; then the fallback does the work.
        // In the same round trip: the server's identity, so that one server
        // behind two URLs (`localhost` and `127.0.0.1`) never counts twice.
        let replies = redis::pipe()
            .ignore_errors()
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(SET_IF_ABSENT)
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(DELETE_IF_TOKEN)
            .cmd("SCRIPT")
            .arg("LOAD")
            .arg(EXTEND_IF_TOKEN)
            .cmd("INFO")
            .arg("server")
            .query_async::<Vec<redis::RedisResult<Value>>>(&mut c)
            .await?;
        for r in &replies[..3.min(replies.len())] {
            if let Err(e) = r {
                if e.is_io_error() || e.is_connection_dropped() {
                    return Err(e.clone());
                }
                tracing::debug!(node = %self.addr, error = %e, "SCRIPT LOAD refused");
            }
        }
        match replies.get(3) {
            Some(Ok(info)) => self.register_server(info),
            // An ACL user without INFO: the server cannot be told apart.
            other => tracing::debug!(node = %self.addr, reply = ?other, "INFO server refused"),
        }
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        tracing::debug!(node = %self.addr, "connected");
        Ok(c)
    }

    /// Records the server's `run_id` (from `INFO server`); if an earlier
    /// node of this context showed the same server, marks this one.
    fn register_server(&self, info: &Value) {
        let text = match info {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::VerbatimString { text, .. } => text.clone(),
            _ => return,
        };
        let Some(run_id) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("run_id:"))
            .map(str::to_owned)
        else {
            return;
        };
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let (owner, owner_addr) = servers
            .entry(run_id)
            .or_insert_with(|| (self.index, self.addr.to_string()))
            .clone();
        let mut same_as = self.same_as.lock().unwrap_or_else(|e| e.into_inner());
        *same_as = (owner != self.index).then_some(owner_addr);
        if same_as.is_some() {
            self.any_same.store(true, Ordering::Release);
        }
    }

    /// The address of the earlier node that is the same server, if any.
    fn same_server_as(&self) -> Option<String> {
        if !self.any_same.load(Ordering::Acquire) {
            return None;
        }
        self.same_as
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drops the connection after an error that means it is broken, so the
    /// next request reconnects. A server error reply leaves it alone.
    fn check<T>(&self, result: &Result<T, RedisError>) {
        if let Err(e) = result
            && (e.is_unrecoverable_error() || e.is_io_error() || e.is_connection_dropped())
        {
            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

/// Maps a redis-rs error to what the guest sees.
fn classify(e: &RedisError) -> NodeError {
    if let Some(code) = e.code() {
        let text = match e.detail() {
            Some(d) => format!("{code} {d}"),
            None => code.to_owned(),
        };
        NodeError::Redis(text)
    } else if e.is_timeout() {
        NodeError::Timeout
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        NodeError::Connection(e.to_string())
    } else {
        NodeError::Other(e.to_string())
    }
}

impl From<NodeError> for crate::error::NodeError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Timeout => Self::Timeout,
            NodeError::Connection(s) => Self::Connection(s),
            NodeError::Redis(s) => Self::Redis(s),
            NodeError::Other(s) => Self::Other(s),
        }
    }
}

/// A boxed request future.
pub(crate) type BoxReply = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// One of the three Redlock operations, with the key as stored in Redis.
pub(crate) enum Command {
    SetIfAbsent {
        key: String,
        token: String,
        ttl_ms: u64,
    },
    DeleteIfToken {
        key: String,
        token: String,
    },
    ExtendIfToken {
        key: String,
        token: String,
        ttl_ms: u64,
    },
}

impl Command {
    /// Whether sending it again on a new connection is harmless: a
    /// compare-and-delete or compare-and-extend, never a SET.
    fn may_resend(&self) -> bool {
        !matches!(self, Command::SetIfAbsent { .. })
    }

    fn name(&self) -> &'static str {
        match self {
            Command::SetIfAbsent { .. } => "set-if-absent",
            Command::DeleteIfToken { .. } => "delete-if-token",
            Command::ExtendIfToken { .. } => "extend-if-token",
        }
    }

    /// The command against an in-memory node, with Redis's semantics.
    fn apply(&self, memory: &Memory) -> Reply {
        let now = std::time::Instant::now();
        let mut keys = memory.lock().unwrap_or_else(|e| e.into_inner());
        let key = match self {
            Command::SetIfAbsent { key, .. }
            | Command::DeleteIfToken { key, .. }
            | Command::ExtendIfToken { key, .. } => key,
        };
        if keys.get(key).is_some_and(|(_, expires)| *expires <= now) {
            keys.remove(key);
        }
        match self {
            Command::SetIfAbsent { key, token, ttl_ms } => {
                if keys.get(key).is_some_and(|(t, _)| t != token) {
                    return Reply::Refused;
                }
                let expires = now + Duration::from_millis(*ttl_ms);
                keys.insert(key.clone(), (token.clone(), expires));
                Reply::Done
            }
            Command::DeleteIfToken { key, token } => {
                if keys.get(key).is_some_and(|(t, _)| t == token) {
                    keys.remove(key);
                    Reply::Done
                } else {
                    Reply::Refused
                }
            }
            Command::ExtendIfToken { key, token, ttl_ms } => match keys.get_mut(key) {
                Some((t, expires)) if t == token => {
                    *expires = (*expires).max(now + Duration::from_millis(*ttl_ms));
                    Reply::Done
                }
                _ => Reply::Refused,
            },
        }
    }

    async fn run(
        &self,
        conn: &mut MultiplexedConnection,
        inner: &Inner,
    ) -> Result<Reply, RedisError> {
        let value: Value = match self {
            Command::SetIfAbsent { key, token, ttl_ms } => {
                inner
                    .set
                    .key(key)
                    .arg(token)
                    .arg(*ttl_ms)
                    .invoke_async(conn)
                    .await?
            }
            Command::DeleteIfToken { key, token } => {
                inner.delete.key(key).arg(token).invoke_async(conn).await?
            }
            Command::ExtendIfToken { key, token, ttl_ms } => {
                inner
                    .extend
                    .key(key)
                    .arg(token)
                    .arg(*ttl_ms)
                    .invoke_async(conn)
                    .await?
            }
        };
        Ok(match value {
            Value::Okay | Value::Int(1) => Reply::Done,
            Value::SimpleString(s) if s == "OK" => Reply::Done,
            Value::Nil | Value::Int(0) => Reply::Refused,
            other => Reply::Failed(NodeError::Other(format!(
                "unexpected reply to {}: {other:?}",
                self.name()
            ))),
        })
    }
}

/// Where a request keeps its concurrency permit. Set once it holds one (it
/// is then ahead of any later request to the same node); emptied when the
/// request ends or is abandoned.
#[derive(Default)]
pub(crate) struct PermitSlot {
    committed: AtomicBool,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl PermitSlot {
    fn hold(&self, permit: OwnedSemaphorePermit) {
        *self.permit.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
        self.committed.store(true, Ordering::Release);
    }

    fn give_back(&self) {
        self.permit.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn committed(&self) -> bool {
        self.committed.load(Ordering::Acquire)
    }
}

/// Gives the permit back when the request's future ends or is dropped.
struct ReleaseOnExit<'a>(&'a PermitSlot);

impl Drop for ReleaseOnExit<'_> {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

/// The host side of a `pending-reply`: the request's future until it
/// finishes, then its reply.
pub struct PendingReply {
    state: ReplyState,
    /// Deletes and extends run to the end when the guest drops them
    /// unfinished (it returns at quorum): a script may need a second round
    /// trip after NOSCRIPT, and an abandoned delete must not leave a key
    /// behind.
    finish_on_drop: bool,
    /// Set once the request holds a permit. A SET dropped after that also
    /// runs to the end (it is first in its node's queue, so a later cleanup
    /// delete still follows it); one dropped before is never sent.
    slot: Arc<PermitSlot>,
    /// Where requests finishing in the background are tracked.
    background: TaskTracker,
}

enum ReplyState {
    Waiting(BoxReply),
    Ready(Reply),
    Gone,
}

#[wasmtime_wasi::async_trait]
impl Pollable for PendingReply {
    async fn ready(&mut self) {
        if let ReplyState::Waiting(fut) = &mut self.state {
            let reply = fut.await;
            self.state = ReplyState::Ready(reply);
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        // Abandoned: it no longer counts against the concurrency limit.
        self.slot.give_back();
        let state = std::mem::replace(&mut self.state, ReplyState::Gone);
        if let ReplyState::Waiting(fut) = state
            && (self.finish_on_drop || self.slot.committed())
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            self.background.spawn_on(fut, &rt);
        }
    }
}

/// Becomes ready when the operation's cancellation token fires.
struct Cancellation(CancellationToken);

#[wasmtime_wasi::async_trait]
impl Pollable for Cancellation {
    async fn ready(&mut self) {
        self.0.cancelled().await
    }
}

/// A borrowed view of a [`RedisNodeCtx`] and the store's resource table (the
/// same table the WASI view returns, so `wasi:io/poll` finds our pollables),
/// plus the running operation's cancellation token, if any.
pub struct RedisNode<'a> {
    ctx: &'a RedisNodeCtx,
    table: &'a mut ResourceTable,
    cancel: Option<&'a CancellationToken>,
}

impl<'a> RedisNode<'a> {
    /// A view with no cancellation.
    pub fn new(ctx: &'a RedisNodeCtx, table: &'a mut ResourceTable) -> Self {
        Self {
            ctx,
            table,
            cancel: None,
        }
    }

    /// Sets the token whose cancellation the guest sees through
    /// `redis-node.cancellation`.
    pub fn with_cancellation(mut self, token: Option<&'a CancellationToken>) -> Self {
        self.cancel = token;
        self
    }

    fn pending(&mut self, node: u32, cmd: Command) -> wasmtime::Result<Resource<PendingReply>> {
        let finish_on_drop = !matches!(cmd, Command::SetIfAbsent { .. });
        let slot = Arc::new(PermitSlot::default());
        let fut = self.ctx.request(node, cmd, slot.clone());
        Ok(self.table.push(PendingReply {
            state: ReplyState::Waiting(fut),
            finish_on_drop,
            slot,
            background: self.ctx.inner.background.clone(),
        })?)
    }
}

impl node::Host for RedisNode<'_> {
    fn node_count(&mut self) -> wasmtime::Result<u32> {
        Ok(self.ctx.len() as u32)
    }

    fn set_if_absent(
        &mut self,
        node: u32,
        key: String,
        token: String,
        ttl_ms: u64,
    ) -> wasmtime::Result<Resource<PendingReply>> {
        let key = self.ctx.prefixed(key);
        crate::metrics::set_sent();
        self.pending(node, Command::SetIfAbsent { key, token, ttl_ms })
    }

    fn delete_if_token(
        &mut self,
        node: u32,
        key: String,
        token: String,
    ) -> wasmtime::Result<Resource<PendingReply>> {
        let key = self.ctx.prefixed(key);
        self.pending(node, Command::DeleteIfToken { key, token })
    }

    fn extend_if_token(
        &mut self,
        node: u32,
        key: String,
        token: String,
        ttl_ms: u64,
    ) -> wasmtime::Result<Resource<PendingReply>> {
        let key = self.ctx.prefixed(key);
        self.pending(node, Command::ExtendIfToken { key, token, ttl_ms })
    }

    fn cancellation(&mut self) -> wasmtime::Result<Option<Resource<DynPollable>>> {
        let Some(token) = self.cancel else {
            return Ok(None);
        };
        let c = self.table.push(Cancellation(token.clone()))?;
        Ok(Some(subscribe(self.table, c)?))
    }
}

impl node::HostPendingReply for RedisNode<'_> {
    fn subscribe(
        &mut self,
        this: Resource<PendingReply>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        subscribe(self.table, this)
    }

    fn get(&mut self, this: Resource<PendingReply>) -> wasmtime::Result<Option<Reply>> {
        Ok(match &self.table.get(&this)?.state {
            ReplyState::Ready(reply) => Some(reply.clone()),
            _ => None,
        })
    }

    fn drop(&mut self, this: Resource<PendingReply>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

struct HasRedisNode;

impl HasData for HasRedisNode {
    type Data<'a> = RedisNode<'a>;
}

/// Adds `redlock:core/redis-node` to `linker`. `get` returns the view for a
/// store's data; its table must be the one the store's WASI view uses.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> RedisNode<'_>,
) -> wasmtime::Result<()> {
    node::add_to_linker::<T, HasRedisNode>(linker, get)
}
