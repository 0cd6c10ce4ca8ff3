//! The contenders: the quorum floor (the redis crate used directly), rslock,
//! redlock-wasm on a current-thread and on a multi-thread tokio runtime, and
//! node-redlock in its Node.js child. Each does acquire + release pairs; the
//! Rust ones on this thread run the loops of `measure`, the other two run the
//! same loops where they live.

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use futures::stream::{FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use redlock_wasm::Redlock;

use crate::measure::{self, Bounds, Latency, Throughput};
use crate::node::NodeChild;

pub const TTL: Duration = Duration::from_secs(10);

/// How long one redlock-wasm acquire may take, retries included.
const ACQUIRE_DEADLINE: Duration = Duration::from_secs(2);

/// The retry policy that every library gets in the "same policy" contended
/// row: 10 attempts, a pause uniform on 0 ..= 50 ms between them. rslock can
/// express only a pause uniform on 0 .. max, so the others are set to match
/// it, not the other way round.
pub const SAME_POLICY: Policy = Policy {
    attempts: 10,
    max_pause: Duration::from_millis(50),
};

/// Attempts and the pause between them.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The pause before each further attempt is uniform on 0 ..= this.
    pub max_pause: Duration,
}

/// Which retry policy a library runs with.
#[derive(Debug, Clone, Copy)]
pub enum Retry {
    /// The library's own defaults.
    Defaults,
    /// [`SAME_POLICY`] or another policy given to every library alike.
    Same(Policy),
}

const DELETE: &str = r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) end return 0"#;

/// The physical limit: SET NX PX to every node at once, compare-and-delete
/// to every node at once, each returning at the quorum-th success (or
/// awaiting every node, for the variant that waits for all).
pub struct Floor {
    conns: Vec<MultiplexedConnection>,
    delete: redis::Script,
    wait_all: bool,
    seq: AtomicU64,
    n_nodes: usize,
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
            n_nodes: urls.len(),
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

    fn quorum(&self) -> usize {
        self.n_nodes / 2 + 1
    }

    async fn fan_out<F, Fut>(&self, op: F) -> usize
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut pending: FuturesUnordered<Fut> = self.conns.iter().cloned().map(op).collect();
        let need = if self.wait_all {
            usize::MAX
        } else {
            self.quorum()
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

    pub async fn pair(&self, key: &str) -> Result<bool> {
        let token = format!("floor-{}", self.seq.fetch_add(1, Ordering::Relaxed));
        let ttl = TTL.as_millis() as u64;
        let set = self
            .fan_out(|mut c| {
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
        self.fan_out(|mut c| {
            let mut inv = delete.key(key);
            inv.arg(&token);
            async move { inv.invoke_async::<i64>(&mut c).await.is_ok_and(|n| n == 1) }
        })
        .await;
        Ok(set >= self.quorum())
    }
}

/// redlock-wasm's builder with the bench's settings; `limit` None keeps the
/// library's default concurrency limit.
fn ours_builder(
    urls: &[String],
    limit: Option<usize>,
    retry: Retry,
) -> redlock_wasm::RedlockBuilder {
    let mut b = Redlock::builder().nodes(urls.iter().cloned()).ttl(TTL);
    if let Some(l) = limit {
        b = b.concurrency(l);
    }
    if let Retry::Same(p) = retry {
        // redlock-wasm pauses delay + uniform 0 ..= jitter.
        b = b
            .retry_count(p.attempts - 1)
            .retry_delay(Duration::ZERO)
            .retry_jitter(p.max_pause);
    }
    b
}

async fn ours_pair(r: &Redlock, key: &str) -> Result<bool> {
    match r.acquire(key, ACQUIRE_DEADLINE).await {
        Ok(lock) => {
            r.release(&lock).await?;
            Ok(true)
        }
        Err(redlock_wasm::Error::UnableToAcquire(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// redlock-wasm on its own multi-thread tokio runtime, as in a service: the
/// loops run as tasks there and this thread only waits for them.
pub struct MultiThread {
    rt: Option<tokio::runtime::Runtime>,
    lock: Option<Arc<Redlock>>,
}

impl MultiThread {
    pub fn new(urls: &[String], workers: usize, limit: Option<usize>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?;
        let lock = {
            let _in = rt.enter();
            ours_builder(urls, limit, Retry::Defaults)
                .build()
                .context("build redlock-wasm")?
        };
        Ok(MultiThread {
            rt: Some(rt),
            lock: Some(Arc::new(lock)),
        })
    }

    fn parts(&self) -> (&tokio::runtime::Runtime, Arc<Redlock>) {
        match (&self.rt, &self.lock) {
            (Some(rt), Some(l)) => (rt, l.clone()),
            _ => unreachable!("taken only by drop"),
        }
    }

    async fn latency(&self, tag: &str, b: &Bounds) -> Result<Latency> {
        let (rt, r) = self.parts();
        let (tag, b) = (tag.to_owned(), b.clone());
        rt.spawn(async move {
            measure::latency(
                move |k| {
                    let r = r.clone();
                    async move { ours_pair(&r, &k).await }
                },
                &tag,
                &b,
            )
            .await
        })
        .await?
    }

    async fn throughput(
        &self,
        tag: &str,
        clients: usize,
        secs: f64,
        one_key: bool,
    ) -> Result<Throughput> {
        let (rt, r) = self.parts();
        let done = Arc::new(AtomicU64::new(0));
        let run = measure::Run::start(secs);
        let mut tasks = Vec::new();
        for id in 0..clients {
            let (r, done, tag) = (r.clone(), done.clone(), tag.to_owned());
            tasks.push(rt.spawn(async move {
                measure::client_loop(
                    |k| {
                        let r = r.clone();
                        async move { ours_pair(&r, &k).await }
                    },
                    &tag,
                    id,
                    run.stop,
                    one_key,
                    &done,
                )
                .await
            }));
        }
        let all = async {
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(())
        };
        // As on this thread: a pair that never ends must not hold the run.
        tokio::time::timeout(Duration::from_secs_f64(secs + 30.0), all)
            .await
            .map_err(|_| {
                anyhow!("a throughput run of {secs} s was still going after {secs} + 30 s")
            })??;
        Ok(run.finish(done.load(Ordering::Relaxed)))
    }
}

impl Drop for MultiThread {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            {
                // Its connections belong to that runtime: drop them there.
                let _in = rt.enter();
                self.lock.take();
            }
            // Dropping a runtime may block, which an async context forbids.
            rt.shutdown_background();
        }
    }
}

/// One contender.
pub enum Contender {
    Floor(Floor),
    Rslock(rslock::LockManager),
    Ours(Redlock),
    OursMt(MultiThread),
    Node(Rc<NodeChild>, u64),
}

impl Contender {
    pub async fn floor(urls: &[String], wait_all: bool) -> Result<Self> {
        Ok(Contender::Floor(Floor::connect(urls, wait_all).await?))
    }

    pub fn rslock(urls: &[String], retry: Retry) -> Self {
        let mut lm = rslock::LockManager::new(urls.to_vec());
        if let Retry::Same(p) = retry {
            // rslock makes `count` attempts in all and pauses uniform 0 .. delay.
            lm.set_retry(p.attempts, p.max_pause);
        }
        Contender::Rslock(lm)
    }

    pub fn ours(urls: &[String], limit: Option<usize>, retry: Retry) -> Result<Self> {
        Ok(Contender::Ours(
            ours_builder(urls, limit, retry)
                .build()
                .context("build redlock-wasm")?,
        ))
    }

    /// redlock-wasm with fencing on: every lock carries a fence that is
    /// monotonic across the quorum (docs/FENCING.md).
    pub fn ours_fenced(urls: &[String]) -> Result<Self> {
        Ok(Contender::Ours(
            ours_builder(urls, None, Retry::Defaults)
                .fencing(true)
                .build()
                .context("build redlock-wasm with fencing")?,
        ))
    }

    pub fn ours_mt(urls: &[String], workers: usize, limit: Option<usize>) -> Result<Self> {
        Ok(Contender::OursMt(MultiThread::new(urls, workers, limit)?))
    }

    pub async fn node(child: &Rc<NodeChild>, urls: &[String], retry: Retry) -> Result<Self> {
        let id = child.open(urls, retry).await?;
        Ok(Contender::Node(child.clone(), id))
    }

    /// One acquire + release on `key` from this thread; false when the lock
    /// was not acquired.
    async fn pair(&self, key: &str) -> Result<bool> {
        match self {
            Contender::Floor(f) => f.pair(key).await,
            Contender::Rslock(lm) => match lm.lock(key.as_bytes(), TTL).await {
                Ok(lock) => {
                    lm.unlock(&lock).await;
                    Ok(true)
                }
                Err(rslock::LockError::Unavailable) => Ok(false),
                Err(e) => Err(anyhow!("rslock: {e:?}")),
            },
            Contender::Ours(r) => ours_pair(r, key).await,
            Contender::OursMt(_) | Contender::Node(..) => {
                unreachable!("measured where it runs")
            }
        }
    }

    /// Sequential pairs on new keys within `b`.
    pub async fn latency(&self, tag: &str, b: &Bounds) -> Result<Latency> {
        match self {
            Contender::OursMt(mt) => mt.latency(tag, b).await,
            Contender::Node(child, id) => {
                let n = child.latency(*id, tag, b.iters, b.max_secs, b.hang).await?;
                let pairs = n.samples_us.len().max(1) as f64;
                Ok(Latency {
                    samples_us: n.samples_us,
                    cpu_us_per_pair: n.cpu_us / pairs,
                    failed: n.failed,
                    hung: n.hung,
                })
            }
            _ => measure::latency(|k| async move { self.pair(&k).await }, tag, b).await,
        }
    }

    /// `clients` concurrent loops of pairs for `secs`, on new keys unless
    /// `one_key`.
    pub async fn throughput(
        self: &Rc<Self>,
        tag: &str,
        clients: usize,
        secs: f64,
        one_key: bool,
    ) -> Result<Throughput> {
        match &**self {
            Contender::OursMt(mt) => mt.throughput(tag, clients, secs, one_key).await,
            Contender::Node(child, id) => {
                let n = child.throughput(*id, tag, clients, secs, one_key).await?;
                Ok(Throughput {
                    per_sec: n.pairs as f64 / n.secs,
                    cpu_us_per_pair: n.cpu_us / (n.pairs.max(1) as f64),
                })
            }
            _ => {
                let this = self.clone();
                measure::throughput_local(
                    move |k| {
                        let c = this.clone();
                        async move { c.pair(&k).await }
                    },
                    tag,
                    clients,
                    secs,
                    one_key,
                )
                .await
            }
        }
    }

    /// Warms connections (and redlock-wasm's instance pool) before measuring.
    pub async fn warm(&self, tag: &str) -> Result<()> {
        let b = Bounds {
            iters: 50,
            max_secs: None,
            hang: Duration::from_secs(10),
        };
        match self {
            Contender::Node(child, id) => child.warm(*id, 0.2).await,
            _ => self.latency(&format!("warm:{tag}"), &b).await.map(drop),
        }
    }

    /// Lets go of what the contender holds outside this process.
    pub async fn close(self) -> Result<()> {
        match self {
            Contender::Node(child, id) => child.close(id).await,
            _ => Ok(()),
        }
    }
}
