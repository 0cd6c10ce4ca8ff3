//! The Rust contenders: the quorum floor (the redis crate used directly),
//! rslock, and redlock-wasm. Each does one acquire + release pair.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures::stream::{FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use redlock_wasm::Redlock;

pub const TTL: Duration = Duration::from_secs(10);

const DELETE: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0"#;

/// The physical limit: SET NX PX to every node at once, compare-and-delete
/// to every node at once, each returning at the quorum-th success (or
/// awaiting every node, for the variant that waits for all).
pub struct Floor {
    conns: Vec<MultiplexedConnection>,
    delete: redis::Script,
    wait_all: bool,
    seq: AtomicU64,
}

impl Floor {
    pub async fn connect(urls: &[String], wait_all: bool) -> Result<Self> {
        let mut conns = Vec::new();
        for u in urls {
            let c = redis::Client::open(u.as_str())?;
            // A dead node stays out of the floor; it has no retry logic to model.
            if let Ok(Ok(conn)) = tokio::time::timeout(
                Duration::from_millis(200),
                c.get_multiplexed_async_connection(),
            )
            .await
            {
                conns.push(conn);
            }
        }
        let f = Floor {
            conns,
            delete: redis::Script::new(DELETE),
            wait_all,
            seq: AtomicU64::new(0),
        };
        // Load the script so EVALSHA hits, as for the other clients.
        for c in &f.conns {
            let mut c = c.clone();
            let _: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(DELETE)
                .query_async(&mut c)
                .await?;
        }
        Ok(f)
    }

    pub fn quorum(&self, n: usize) -> usize {
        n / 2 + 1
    }

    async fn fan_out<F, Fut>(&self, n_nodes: usize, op: F) -> usize
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut pending: FuturesUnordered<Fut> = self.conns.iter().cloned().map(op).collect();
        let need = if self.wait_all {
            usize::MAX
        } else {
            self.quorum(n_nodes)
        };
        let mut ok = 0;
        while let Some(yes) = pending.next().await {
            ok += usize::from(yes);
            if ok >= need {
                break;
            }
        }
        ok
    }

    pub async fn pair(&self, key: &str, n_nodes: usize) -> Result<bool> {
        let token = format!("floor-{}", self.seq.fetch_add(1, Ordering::Relaxed));
        let ttl = TTL.as_millis() as u64;
        let set = self
            .fan_out(n_nodes, |mut c| {
                let (key, token) = (key.to_owned(), token.clone());
                async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl)
                        .query_async::<Option<String>>(&mut c)
                        .await
                        .is_ok_and(|r| r.is_some())
                }
            })
            .await;
        let delete = &self.delete;
        self.fan_out(n_nodes, |mut c| {
            let mut inv = delete.key(key);
            inv.arg(&token);
            async move { inv.invoke_async::<i64>(&mut c).await.is_ok_and(|n| n == 1) }
        })
        .await;
        Ok(set >= self.quorum(n_nodes))
    }
}

/// One contender.
pub enum Contender {
    Floor(Floor, usize),
    Rslock(rslock::LockManager),
    Ours(Redlock),
}

impl Contender {
    pub async fn floor(urls: &[String], wait_all: bool) -> Result<Self> {
        Ok(Contender::Floor(
            Floor::connect(urls, wait_all).await?,
            urls.len(),
        ))
    }

    pub fn rslock(urls: &[String]) -> Self {
        Contender::Rslock(rslock::LockManager::new(urls.to_vec()))
    }

    pub fn ours(urls: &[String], concurrency: usize) -> Result<Self> {
        let r = Redlock::builder()
            .nodes(urls.iter().cloned())
            .ttl(TTL)
            .concurrency(concurrency)
            .build()
            .context("build redlock-wasm")?;
        Ok(Contender::Ours(r))
    }

    /// One acquire + release on `key`; false when the lock was not acquired.
    pub async fn pair(&self, key: &str) -> Result<bool> {
        match self {
            Contender::Floor(f, n) => f.pair(key, *n).await,
            Contender::Rslock(lm) => match lm.lock(key.as_bytes(), TTL).await {
                Ok(lock) => {
                    lm.unlock(&lock).await;
                    Ok(true)
                }
                Err(rslock::LockError::Unavailable) => Ok(false),
                Err(e) => Err(anyhow!("rslock: {e:?}")),
            },
            Contender::Ours(r) => match r.acquire(key, Duration::from_secs(2)).await {
                Ok(lock) => {
                    r.release(&lock).await?;
                    Ok(true)
                }
                Err(redlock_wasm::Error::UnableToAcquire(_)) => Ok(false),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Warms connections (and the ours' instance pool) before measuring.
    pub async fn warm(&self, tag: &str) -> Result<()> {
        for i in 0..20 {
            self.pair(&format!("bench:warm:{tag}:{i}")).await?;
        }
        Ok(())
    }
}
