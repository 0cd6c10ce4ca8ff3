//! A local Redis Cluster: `masters` processes started with
//! `--cluster-enabled yes` on free loopback ports, joined by
//! `redis-cli --cluster create` (slots split evenly, no replicas), stopped
//! on drop. One quorum member of the cluster tests and the benchmark.
//!
//! `REDIS_CLI_BIN` picks the redis-cli binary (default: `redis-cli` on
//! `PATH`; Debian's redis-server package brings it, through redis-tools).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{LocalError, LocalNode};

/// The redis-cli binary to run.
fn cli_binary() -> String {
    std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into())
}

/// A running local Redis Cluster, killed when dropped.
pub struct LocalRedisCluster {
    masters: Vec<LocalNode>,
}

impl LocalRedisCluster {
    /// Starts `masters` (at least 1) cluster-enabled servers and makes them
    /// one cluster; returns once every node sees all 16384 slots served.
    pub fn start(masters: usize) -> Result<Self, LocalError> {
        let masters = (0..masters.max(1))
            .map(|_| {
                // The bus port defaults to port + 10000, which may be taken
                // or above 65535: a free one of its own.
                let bus = super::free_port()?.to_string();
                LocalNode::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus,
                    // A short node timeout: a killed master is marked failed
                    // quickly (the tests' clusters have no replicas).
                    "--cluster-node-timeout",
                    "2000",
                    // Slots of a failed master stay refused, not the whole
                    // cluster: the other shards keep serving their slots.
                    "--cluster-require-full-coverage",
                    "no",
                ])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = Self { masters };
        let mut cmd = Command::new(cli_binary());
        cmd.arg("--cluster").arg("create");
        for m in &cluster.masters {
            cmd.arg(format!("127.0.0.1:{}", m.port()));
        }
        let out = cmd
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => LocalError::NotInstalled(cli_binary()),
                _ => LocalError::Io(e),
            })?;
        if !out.status.success() {
            return Err(LocalError::Start(format!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .chain(String::from_utf8_lossy(&out.stderr).lines())
                    .filter(|l| l.contains("ERR") || l.contains("rror"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            )));
        }
        cluster.wait_ready(Duration::from_secs(20))?;
        Ok(cluster)
    }

    /// Waits until every running master reports `cluster_state:ok` and
    /// knows every other master.
    fn wait_ready(&self, within: Duration) -> Result<(), LocalError> {
        let start = Instant::now();
        loop {
            let ready = self.masters.iter().filter(|m| m.is_running()).all(|m| {
                let info: Option<String> = redis::Client::open(m.url())
                    .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
                    .ok();
                info.is_some_and(|i| {
                    i.contains("cluster_state:ok")
                        && i.contains(&format!("cluster_known_nodes:{}", self.masters.len()))
                        && i.contains("cluster_slots_assigned:16384")
                })
            });
            if ready {
                return Ok(());
            }
            if start.elapsed() > within {
                return Err(LocalError::Start(format!(
                    "the cluster was not ready within {within:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The member URL: `redis+cluster://` with every master as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .masters
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.port()))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// The masters, in the order their slot ranges were assigned (master
    /// `i` of `n` holds about the `i`-th `n`-th of the slots).
    pub fn masters(&self) -> &[LocalNode] {
        &self.masters
    }

    /// Master `i`, to kill, pause or inspect.
    pub fn master_mut(&mut self, i: usize) -> &mut LocalNode {
        &mut self.masters[i]
    }

    /// Kills every master: the whole member is down.
    pub fn kill_all(&mut self) {
        for m in &mut self.masters {
            m.kill();
        }
    }

    /// The master that serves `slot` now, by index, read from a running
    /// master's `CLUSTER SLOTS`.
    pub fn master_of_slot(&self, slot: u16) -> Option<usize> {
        let m = self.masters.iter().find(|m| m.is_running())?;
        let mut c = redis::Client::open(m.url()).ok()?.get_connection().ok()?;
        let ranges: Vec<(i64, i64, (String, i64))> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query::<Vec<redis::Value>>(&mut c)
            .ok()?
            .into_iter()
            .filter_map(|r| {
                let redis::Value::Array(r) = r else {
                    return None;
                };
                let start = redis::from_redis_value(r.first()?.clone()).ok()?;
                let end = redis::from_redis_value(r.get(1)?.clone()).ok()?;
                let redis::Value::Array(m) = r.get(2)? else {
                    return None;
                };
                let host = redis::from_redis_value(m.first()?.clone()).ok()?;
                let port = redis::from_redis_value(m.get(1)?.clone()).ok()?;
                Some((start, end, (host, port)))
            })
            .collect();
        let (_, _, (_, port)) = ranges
            .iter()
            .find(|(s, e, _)| (*s..=*e).contains(&i64::from(slot)))?;
        self.masters
            .iter()
            .position(|m| i64::from(m.port()) == *port)
    }

    /// Moves `slot` from master `from` to master `to` while keys stay in
    /// use, as `redis-cli --cluster reshard` does: IMPORTING/MIGRATING, the
    /// keys moved in batches with MIGRATE (clients meanwhile get ASK for
    /// moved keys), then the slot assigned to `to` everywhere (MOVED from
    /// then on). `between` runs after the first batch, to observe ASK.
    pub fn migrate_slot(
        &self,
        slot: u16,
        from: usize,
        to: usize,
        between: impl FnOnce(),
    ) -> redis::RedisResult<usize> {
        let conn = |i: usize| {
            redis::Client::open(self.masters[i].url())?
                .get_connection_with_timeout(Duration::from_secs(2))
        };
        let (mut src, mut dst) = (conn(from)?, conn(to)?);
        let id = |c: &mut redis::Connection| -> redis::RedisResult<String> {
            redis::cmd("CLUSTER").arg("MYID").query(c)
        };
        let (src_id, dst_id) = (id(&mut src)?, id(&mut dst)?);
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&src_id)
            .query::<()>(&mut dst)?;
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&dst_id)
            .query::<()>(&mut src)?;
        let mut moved = 0;
        let mut between = Some(between);
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(10)
                .query(&mut src)?;
            if keys.is_empty() {
                break;
            }
            moved += keys.len();
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.masters[to].port())
                .arg("")
                .arg(0)
                .arg(2000)
                .arg("KEYS")
                .arg(&keys)
                .query::<()>(&mut src)?;
            if let Some(f) = between.take() {
                f();
            }
        }
        if let Some(f) = between.take() {
            f();
        }
        for i in 0..self.masters.len() {
            if self.masters[i].is_running() {
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg("NODE")
                    .arg(&dst_id)
                    .query::<()>(&mut conn(i)?)?;
            }
        }
        Ok(moved)
    }
}

/// A check that `redis-cli` can be run.
pub fn cli_available() -> bool {
    Command::new(cli_binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
