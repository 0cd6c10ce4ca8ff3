//! One node's server: its address, its one multiplexed connection (made on
//! first use, with the scripts loaded), and its identity, so that one server
//! behind two URLs never counts twice. A Redis Cluster member has one
//! cluster connection instead: redis-rs's, which keeps a connection per
//! shard, routes each command by its key's hash slot and follows MOVED and
//! ASK.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::command::{Scripts, breaks_connection};
use crate::addr::NodeAddr;
use crate::bindings::node::{NodeError, Reply};

/// Which configured node first showed each server identity (`run_id`).
pub(super) type Servers = Arc<Mutex<HashMap<String, (usize, String)>>>;

/// A member's connection: one server's, or one cluster's.
#[derive(Clone)]
pub(super) enum Link {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// A connection and whether the server loaded our scripts on it (an ACL
/// user without SCRIPT gets EVAL with the script's text instead).
#[derive(Clone)]
pub(super) struct Conn {
    pub(super) conn: Link,
    pub(super) scripts_loaded: bool,
    /// Tells this connection from a later one to the same node.
    generation: u64,
}

pub(super) struct Server {
    pub(super) addr: NodeAddr,
    pub(super) client: redis::Client,
    /// A cluster member's client (its seeds); `None` for a single process.
    pub(super) cluster: Option<ClusterClient>,
    /// The one multiplexed connection, once made; cleared when it breaks so
    /// the next request reconnects.
    conn: Mutex<Option<Conn>>,
    /// Held while connecting, so that one connection is made at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Connections made so far.
    made: AtomicU64,
    /// This node's place in the configuration.
    index: usize,
    /// Shared by the context's nodes: the first node to show a server's
    /// `run_id` owns it; a later node that shows the same server is refused.
    servers: Servers,
    /// Set when this node turned out to be the same server as an earlier
    /// one: the address of that one, for the error.
    same_as: Mutex<Option<String>>,
    /// Shared by the context's nodes: set once any node is a duplicate, so
    /// that every request checks one atomic, not N mutexes.
    any_same: Arc<AtomicBool>,
}

impl Server {
    pub(super) fn new(
        addr: NodeAddr,
        client: redis::Client,
        cluster: Option<ClusterClient>,
        index: usize,
        servers: Servers,
        any_same: Arc<AtomicBool>,
    ) -> Self {
        Self {
            addr,
            client,
            cluster,
            conn: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            made: AtomicU64::new(0),
            index,
            servers,
            same_as: Mutex::new(None),
            any_same,
        }
    }

    pub(super) fn current(&self) -> Option<Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The node's connection, connecting first if there is none.
    pub(super) async fn connection(&self, timeout: Duration) -> Result<Conn, RedisError> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let _turn = self.connecting.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if let Some(cluster) = &self.cluster {
            // Reads the slot map from a seed and connects to every master.
            // No SCRIPT LOAD: a shard that lacks a script (a new master
            // after a failover) answers NOSCRIPT and the lane sends that
            // command as EVAL, which also caches the script there. Its
            // identity is its nodes' ids (`CLUSTER NODES`, from any node):
            // two members that name different seeds of one cluster share
            // them, and the later one is refused as one server behind two
            // URLs is.
            let mut c = cluster.get_async_connection().await?;
            match redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async::<String>(&mut c)
                .await
            {
                Ok(nodes) => self.register(cluster_node_ids(&nodes)),
                // An ACL user without CLUSTER: the cluster cannot be told apart.
                Err(e) if breaks_connection(&e) => return Err(e),
                Err(e) => tracing::debug!(node = %self.addr, error = %e, "CLUSTER NODES refused"),
            }
            let conn = Conn {
                conn: Link::Cluster(c),
                scripts_loaded: true,
                generation: self.made.fetch_add(1, Ordering::Relaxed) + 1,
            };
            *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
            tracing::debug!(node = %self.addr, "connected to the cluster");
            return Ok(conn);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None);
        let mut c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // Load the scripts now, so that EVALSHA finds them. An ACL user
        // without SCRIPT is refused here; then requests carry the scripts'
        // text (EVAL). In the same round trip: the server's identity, so
        // that one server behind two URLs (`localhost` and `127.0.0.1`)
        // never counts twice.
        let texts = Scripts::texts();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for text in texts {
            pipe.cmd("SCRIPT").arg("LOAD").arg(text);
        }
        let replies = pipe
            .cmd("INFO")
            .arg("server")
            .query_async::<Vec<redis::RedisResult<Value>>>(&mut c)
            .await?;
        let mut scripts_loaded = replies.len() == texts.len() + 1;
        for r in &replies[..texts.len().min(replies.len())] {
            if let Err(e) = r {
                if breaks_connection(e) {
                    return Err(e.clone());
                }
                tracing::debug!(node = %self.addr, error = %e, "SCRIPT LOAD refused");
                scripts_loaded = false;
            }
        }
        match replies.get(texts.len()) {
            Some(Ok(info)) => self.register_server(info),
            // An ACL user without INFO: the server cannot be told apart.
            other => tracing::debug!(node = %self.addr, reply = ?other, "INFO server refused"),
        }
        let conn = Conn {
            conn: Link::Single(c),
            scripts_loaded,
            generation: self.made.fetch_add(1, Ordering::Relaxed) + 1,
        };
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        tracing::debug!(node = %self.addr, "connected");
        Ok(conn)
    }

    /// Records the server's `run_id` (from `INFO server`).
    fn register_server(&self, info: &Value) {
        let text = match info {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::VerbatimString { text, .. } => text.clone(),
            _ => return,
        };
        if let Some(run_id) = text.lines().find_map(|l| l.trim().strip_prefix("run_id:")) {
            self.register(vec![format!("run_id {run_id}")]);
        }
    }

    /// Records this node's identities (a server's `run_id`, or the node ids
    /// of a cluster); if an earlier node of this context showed any of them,
    /// marks this one. One lock for all of them, so that of two members of
    /// one cluster connecting at once, one owns every id.
    fn register(&self, ids: Vec<String>) {
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        let earlier = ids.iter().find_map(|id| {
            servers
                .get(id)
                .filter(|(owner, _)| *owner != self.index)
                .map(|(_, addr)| addr.clone())
        });
        for id in ids {
            servers
                .entry(id)
                .or_insert_with(|| (self.index, self.addr.to_string()));
        }
        let mut same_as = self.same_as.lock().unwrap_or_else(|e| e.into_inner());
        *same_as = earlier;
        if same_as.is_some() {
            self.any_same.store(true, Ordering::Release);
        }
    }

    /// What this node and the earlier one it duplicates have in common, for
    /// errors: "the same Redis server (same run_id)" or the cluster's kind.
    pub(super) fn sameness(&self) -> &'static str {
        if self.cluster.is_some() {
            "the same Redis Cluster (node ids in common)"
        } else {
            "the same Redis server (same run_id)"
        }
    }

    /// The reply to every request once this node turned out to be the
    /// same server as an earlier one.
    pub(super) fn refusal(&self) -> Option<Reply> {
        let earlier = self.same_server_as()?;
        Some(Reply::Failed(NodeError::Other(format!(
            "node {} is {} as node {earlier}: Redlock needs independent nodes",
            self.addr,
            self.sameness()
        ))))
    }

    /// The address of the earlier node that is the same server, if any.
    pub(super) fn same_server_as(&self) -> Option<String> {
        if !self.any_same.load(Ordering::Acquire) {
            return None;
        }
        self.same_as
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drops `used` after an error that means it is broken, so the next
    /// request reconnects. A server's error reply leaves it alone.
    /// A cluster connection is never dropped: it reconnects to its shards
    /// itself, and one dead shard must not cost the others their connection.
    pub(super) fn check<T>(&self, used: &Conn, result: &Result<T, RedisError>) {
        if self.cluster.is_none()
            && let Err(e) = result
            && breaks_connection(e)
        {
            self.forget(used);
        }
    }

    /// Drops `used`, unless a newer connection replaced it already: the
    /// next request reconnects.
    pub(super) fn forget(&self, used: &Conn) {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if conn
            .as_ref()
            .is_some_and(|c| c.generation == used.generation)
        {
            *conn = None;
        }
    }
}

/// The ids of a cluster's nodes, from a `CLUSTER NODES` reply (one line per
/// node, its 40-character id first), sorted.
fn cluster_node_ids(reply: &str) -> Vec<String> {
    let mut ids: Vec<String> = reply
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| !id.is_empty())
        .map(|id| format!("cluster node {id}"))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::cluster_node_ids;

    #[test]
    fn cluster_node_ids_are_every_line_s_first_field() {
        let reply = "\
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
";
        assert_eq!(
            cluster_node_ids(reply),
            [
                "cluster node 67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1",
                "cluster node e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca",
            ]
        );
    }
}
