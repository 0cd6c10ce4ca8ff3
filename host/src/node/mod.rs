//! The `redis-node` capability: N Redis masters for any wasmtime embedder.
//!
//! Laid out like wasmtime's `wasi-keyvalue`: [`RedisNodeCtx`] owns the state
//! and is made by [`RedisNodeCtxBuilder`]; a borrowed [`RedisNode`] view hands
//! it to the generated traits; [`add_to_linker`] wires it into a `Linker`.
//! A plugin host links it for its own components exactly as
//! [`Redlock`](crate::Redlock) does for the lock core.
//!
//! A request follows one path: the guest's call becomes a [`Command`]
//! (`command`: its wire form and what its replies mean), its node's lane
//! (`lane`: order, the per-node limit, batching, the timeout, suspicion)
//! writes it on the node's connection (`conn`: connecting, loading the
//! scripts, the server's identity), and its reply lands in the [`FanOut`]
//! the guest polls (`pending`: one per round, not per node). In-memory
//! nodes (`memory`) answer at once.

mod builder;
mod command;
mod conn;
mod lane;
mod memory;
mod pending;

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::{DynPollable, subscribe};

use crate::addr::NodeAddr;
use crate::bindings::node::{self, Operation, Reply};
use crate::error::NodeError;

pub use builder::{DEFAULT_CONCURRENCY, DEFAULT_NODE_TIMEOUT, RedisNodeCtxBuilder};
pub(crate) use command::Command;
pub use command::key_slot;
pub use lane::SUSPECT_AFTER;
pub use pending::FanOut;

use lane::{Lane, Settings};
use memory::Memory;
use pending::{Cancellation, Slot};

/// The state of the `redis-node` capability: node connections, the per-node
/// timeout, the concurrency limit and the key prefix. Cheap to clone; clones
/// share connections and the limit.
#[derive(Clone)]
pub struct RedisNodeCtx {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Vec<Node>,
    settings: Arc<Settings>,
    prefix: String,
}

enum Node {
    /// Never touches the network.
    Memory(Box<NodeAddr>, Memory),
    Redis(Lane),
}

impl Node {
    fn addr(&self) -> &NodeAddr {
        match self {
            Node::Memory(addr, _) => addr.as_ref(),
            Node::Redis(lane) => &lane.server.addr,
        }
    }
}

/// What one node holds for a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// The value (a lock token), if the key exists.
    pub holder: Option<String>,
    /// Remaining TTL, if the key exists and has one.
    pub ttl: Option<Duration>,
}

/// Where a key lives on a Redis Cluster member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// The key's hash slot ([`key_slot`]).
    pub slot: u16,
    /// The master serving the slot (`host:port`), if the slot map has one.
    pub master: Option<String>,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.master {
            Some(m) => write!(f, "slot {} on {m}", self.slot),
            None => write!(f, "slot {} (no master serves it)", self.slot),
        }
    }
}

/// The master of `slot` in a `CLUSTER SLOTS` reply: ranges of
/// `[start, end, [host, port, id], replicas...]`.
fn master_of(map: &Value, slot: u16) -> Option<String> {
    let Value::Array(ranges) = map else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(i) => Some(*i),
        _ => None,
    };
    ranges.iter().find_map(|range| {
        let Value::Array(r) = range else { return None };
        let (start, end) = (int(r.first()?)?, int(r.get(1)?)?);
        if !(start..=end).contains(&i64::from(slot)) {
            return None;
        }
        let Value::Array(master) = r.get(2)? else {
            return None;
        };
        let host = match master.first()? {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            _ => return None,
        };
        let port = int(master.get(1)?)?;
        Some(format!("{host}:{port}"))
    })
}

impl RedisNodeCtx {
    /// A builder.
    pub fn builder() -> RedisNodeCtxBuilder {
        RedisNodeCtxBuilder::new()
    }

    /// Node addresses in index order, printable (no passwords).
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &NodeAddr> {
        self.inner.nodes.iter().map(Node::addr)
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
        self.inner.settings.timeout
    }

    /// The concurrency limit: unanswered round trips per node.
    pub fn concurrency(&self) -> usize {
        self.inner.settings.limit
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
    pub async fn connect(&self) -> Vec<Result<(), NodeError>> {
        let timeout = self.node_timeout();
        let pings = self.inner.nodes.iter().map(|node| async move {
            let Node::Redis(lane) = node else {
                return Ok(());
            };
            let server = &lane.server;
            tokio::time::timeout(timeout, async {
                let c = server.connection(timeout).await?;
                let r = redis::cmd("PING")
                    .query_async::<()>(&mut c.conn.clone())
                    .await;
                server.check(&c, &r);
                r
            })
            .await
            .map_err(|_| NodeError::Timeout)?
            .map_err(|e| NodeError::from(&e))
        });
        futures::future::join_all(pings).await
    }

    /// Waits, at most `within`, for requests still on their way: operations
    /// return at quorum, and the commands to slower nodes finish after (or
    /// time out). A short-lived process calls this before it exits so that
    /// every node, not just a quorum, sees its release.
    pub async fn settle(&self, within: Duration) {
        let _ = tokio::time::timeout(within, self.inner.settings.work.idle()).await;
    }

    /// When two configured nodes turned out to be one Redis server (the same
    /// `run_id`, seen when they connected) or one Redis Cluster (node ids in
    /// common): the error naming both. Every
    /// operation is then refused with [`Error::Config`](crate::Error::Config);
    /// until then the later node of the two never counts.
    pub fn same_servers(&self) -> Option<String> {
        self.inner.nodes.iter().find_map(|n| {
            let Node::Redis(lane) = n else { return None };
            lane.server.same_server_as().map(|earlier| {
                format!(
                    "nodes {earlier} and {} are {}: Redlock needs independent nodes",
                    lane.server.addr,
                    lane.server.sameness()
                )
            })
        })
    }

    /// What every node holds for `key` right now (value and remaining TTL),
    /// read-only, for status displays. Not part of the algorithm. The read
    /// goes out on the connection lock requests use, so it is answered after
    /// every command already written there.
    pub async fn inspect(&self, key: &str) -> Vec<Result<KeyState, NodeError>> {
        let key = self.redis_key(key);
        let timeout = self.node_timeout();
        let reads = self.inner.nodes.iter().map(|node| {
            let key = key.clone();
            async move {
                let server = match node {
                    Node::Memory(_, memory) => return Ok(memory.inspect(&key)),
                    Node::Redis(lane) => &lane.server,
                };
                let read = async {
                    let c = server.connection(timeout).await?;
                    let r = redis::pipe()
                        .cmd("GET")
                        .arg(&key)
                        .cmd("PTTL")
                        .arg(&key)
                        .query_async::<(Option<String>, i64)>(&mut c.conn.clone())
                        .await;
                    server.check(&c, &r);
                    r
                };
                let (holder, pttl) = tokio::time::timeout(timeout, read)
                    .await
                    .map_err(|_| NodeError::Timeout)?
                    .map_err(|e| NodeError::from(&e))?;
                Ok(KeyState {
                    holder,
                    ttl: u64::try_from(pttl).ok().map(Duration::from_millis),
                })
            }
        });
        futures::future::join_all(reads).await
    }

    /// For each Redis Cluster member, where `key` lives: its hash slot and
    /// the master that serves the slot now (read with `CLUSTER SLOTS` on
    /// the member's own connection); `None` for a single-process or
    /// in-memory member. For status displays and the deployment check.
    pub async fn shards(&self, key: &str) -> Vec<Option<Result<Shard, NodeError>>> {
        let key = self.redis_key(key);
        let slot = key_slot(&key);
        let timeout = self.node_timeout();
        let reads = self.inner.nodes.iter().map(|node| async move {
            let Node::Redis(lane) = node else { return None };
            let server = &lane.server;
            server.cluster.as_ref()?;
            let read = async {
                let c = server.connection(timeout).await?;
                redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async::<Value>(&mut c.conn.clone())
                    .await
            };
            Some(
                match tokio::time::timeout(timeout.max(Duration::from_millis(500)), read).await {
                    Err(_) => Err(NodeError::Timeout),
                    Ok(Err(e)) => Err(NodeError::from(&e)),
                    Ok(Ok(map)) => Ok(Shard {
                        slot,
                        master: master_of(&map, slot),
                    }),
                },
            )
        });
        futures::future::join_all(reads).await
    }

    /// Node `i`'s client, or `None` for an in-memory node: for the
    /// deployment checks ([`crate::check`]), which open a connection of
    /// their own so that they never disturb the one lock requests share.
    pub(crate) fn check_client(&self, i: usize) -> Option<&redis::Client> {
        match self.inner.nodes.get(i)? {
            Node::Memory(..) => None,
            Node::Redis(lane) => Some(&lane.server.client),
        }
    }

    /// Sends `cmd` to node `node`, its reply to land in `slot`: answered
    /// at once by an in-memory node, otherwise queued on the node's lane
    /// behind every earlier request.
    fn send(&self, node: u32, cmd: Command, slot: Slot) {
        match self.inner.nodes.get(node as usize) {
            Some(Node::Redis(lane)) => lane.send(cmd, slot),
            Some(Node::Memory(addr, memory)) => {
                let reply = memory.apply(&cmd);
                crate::metrics::node_reply(addr, cmd.name(), &reply);
                slot.resolve(reply);
            }
            None => {
                slot.resolve(Reply::Failed(node::NodeError::Other(format!(
                    "no node {node}: there are {}",
                    self.inner.nodes.len()
                ))));
            }
        }
    }

    /// Sends `op` on `key` (as the guest names it) to each of `nodes`.
    pub(crate) fn fan_out(&self, nodes: &[u32], key: String, op: Operation) -> FanOut {
        let key: Arc<str> = self.prefixed(key).into();
        let fan_out = FanOut::new(nodes);
        let (token, ttl_ms): (Arc<str>, u64) = match &op {
            Operation::SetIfAbsent(l)
            | Operation::SetIfAbsentFresh(l)
            | Operation::ExtendIfToken(l)
            | Operation::SetIfAbsentFenced(l) => (Arc::from(l.token.as_str()), l.ttl_ms),
            Operation::DeleteIfToken(t) => (Arc::from(t.as_str()), 0),
            Operation::RaiseFence(_) => (Arc::from(""), 0),
        };
        for (at, &i) in nodes.iter().enumerate() {
            let (key, token) = (key.clone(), token.clone());
            let cmd = match op {
                Operation::SetIfAbsent(_) | Operation::SetIfAbsentFresh(_) => {
                    crate::metrics::set_sent();
                    Command::SetIfAbsent {
                        key,
                        token,
                        ttl_ms,
                        fresh: matches!(op, Operation::SetIfAbsentFresh(_)),
                    }
                }
                Operation::DeleteIfToken(_) => Command::DeleteIfToken { key, token },
                Operation::ExtendIfToken(_) => Command::ExtendIfToken { key, token, ttl_ms },
                Operation::SetIfAbsentFenced(_) => {
                    crate::metrics::set_sent();
                    Command::SetIfAbsentFenced { key, token, ttl_ms }
                }
                Operation::RaiseFence(fence) => Command::RaiseFence { key, fence },
            };
            self.send(i, cmd, fan_out.slot(at));
        }
        fan_out
    }
}

impl std::fmt::Debug for RedisNodeCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisNodeCtx")
            .field("nodes", &self.nodes().collect::<Vec<_>>())
            .field("node_timeout", &self.inner.settings.timeout)
            .field("concurrency", &self.inner.settings.limit)
            .field("key_prefix", &self.inner.prefix)
            .finish()
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
}

impl node::Host for RedisNode<'_> {
    fn node_count(&mut self) -> wasmtime::Result<u32> {
        Ok(self.ctx.len() as u32)
    }

    fn send(
        &mut self,
        nodes: Vec<u32>,
        key: String,
        op: Operation,
    ) -> wasmtime::Result<Resource<FanOut>> {
        // Each node at most once: a longer list is a guest breaking the
        // contract, and would cost the host memory and requests per entry.
        if nodes.len() > self.ctx.len() {
            wasmtime::bail!(
                "redis-node.send: {} nodes listed, {} configured (each at most once)",
                nodes.len(),
                self.ctx.len()
            );
        }
        Ok(self.table.push(self.ctx.fan_out(&nodes, key, op))?)
    }

    fn cancellation(&mut self) -> wasmtime::Result<Option<Resource<DynPollable>>> {
        let Some(token) = self.cancel else {
            return Ok(None);
        };
        let c = self.table.push(Cancellation(token.clone()))?;
        Ok(Some(subscribe(self.table, c)?))
    }
}

impl node::HostFanOut for RedisNode<'_> {
    fn subscribe(
        &mut self,
        this: Resource<FanOut>,
        replies: u32,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        self.table.get_mut(&this)?.want(replies);
        subscribe(self.table, this)
    }

    fn take(&mut self, this: Resource<FanOut>) -> wasmtime::Result<Vec<node::NodeReply>> {
        Ok(self.table.get_mut(&this)?.take())
    }

    fn drop(&mut self, this: Resource<FanOut>) -> wasmtime::Result<()> {
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
