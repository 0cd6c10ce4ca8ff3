//! The measured loops and their statistics: sequential pairs (latency), many
//! clients for a while (throughput), each with the client process's CPU time
//! per pair. A loop is generic over "one acquire + release on this key", so
//! every Rust contender, on either runtime, runs the same code.

use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Latency samples of one run, in microseconds, and what the run cost.
#[derive(Debug, Clone)]
pub struct Latency {
    pub samples_us: Vec<f64>,
    /// Client CPU (user + system, every thread of the process) per pair.
    pub cpu_us_per_pair: f64,
    /// Pairs whose acquire (or release) did not reach a quorum.
    pub failed: usize,
    /// A pair got no answer within the hang bound; the run stopped there.
    pub hung: bool,
}

impl Latency {
    pub fn pct(&self, p: f64) -> f64 {
        pct(&self.samples_us, p)
    }
}

/// A throughput run: successful pairs per second and CPU per pair.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub per_sec: f64,
    pub cpu_us_per_pair: f64,
}

/// How long a latency run goes on.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// At most this many pairs.
    pub iters: usize,
    /// Stop after this many seconds (once a few pairs are in).
    pub max_secs: Option<f64>,
    /// A pair without an answer after this long ends the run as hung.
    pub hang: Duration,
}

/// Pairs a time-bounded run still completes before it may stop.
const MIN_PAIRS: usize = 3;

/// The p-th percentile of unsorted samples (nearest rank).
pub fn pct(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() - 1) as f64 * p / 100.0).round() as usize;
    v[i]
}

/// The median: the middle value, or the mean of the two middle values.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// CPU time (user + system) of every thread of this process so far.
pub fn process_cpu() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

/// CPU time (user + system) of this process's children that were waited for.
pub fn children_cpu() -> Duration {
    rusage(libc::RUSAGE_CHILDREN)
}

fn rusage(who: libc::c_int) -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage it is pointed at, and `who` is one
    // of the two constants above.
    let ru = unsafe {
        if libc::getrusage(who, ru.as_mut_ptr()) != 0 {
            return Duration::ZERO;
        }
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Sequential pairs on new keys, `bench:lat:{tag}:{i}`, within `b`.
pub async fn latency<F, Fut>(mut pair: F, tag: &str, b: &Bounds) -> Result<Latency>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let mut samples_us = Vec::with_capacity(b.iters);
    let (mut failed, mut hung) = (0, false);
    let start = Instant::now();
    let cpu = process_cpu();
    for i in 0..b.iters {
        let key = format!("bench:lat:{tag}:{i}");
        let t = Instant::now();
        match tokio::time::timeout(b.hang, pair(key)).await {
            Err(_) => {
                hung = true;
                break;
            }
            Ok(ok) => failed += usize::from(!ok?),
        }
        samples_us.push(t.elapsed().as_secs_f64() * 1e6);
        if b.max_secs
            .is_some_and(|s| start.elapsed().as_secs_f64() > s)
            && samples_us.len() >= MIN_PAIRS
        {
            break;
        }
    }
    let cpu = process_cpu().saturating_sub(cpu);
    Ok(Latency {
        cpu_us_per_pair: cpu.as_secs_f64() * 1e6 / samples_us.len().max(1) as f64,
        samples_us,
        failed,
        hung,
    })
}

/// The clock of one throughput run.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    start: Instant,
    pub stop: Instant,
    cpu: Duration,
}

impl Run {
    pub fn start(secs: f64) -> Run {
        let start = Instant::now();
        Run {
            start,
            stop: start + Duration::from_secs_f64(secs),
            cpu: process_cpu(),
        }
    }

    /// The rate and cost of `done` pairs, counted until the last client
    /// finished its last pair.
    pub fn finish(&self, done: u64) -> Throughput {
        let cpu = process_cpu().saturating_sub(self.cpu);
        Throughput {
            per_sec: done as f64 / self.start.elapsed().as_secs_f64(),
            cpu_us_per_pair: cpu.as_secs_f64() * 1e6 / done.max(1) as f64,
        }
    }
}

/// One client of a throughput run: pairs until `stop`, counting those that
/// acquired, on new keys `bench:tp:{tag}:{id}:{i}` or all on
/// `bench:one:{tag}`.
pub async fn client_loop<F, Fut>(
    mut pair: F,
    tag: &str,
    id: usize,
    stop: Instant,
    one_key: bool,
    done: &AtomicU64,
) -> Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let mut i = 0u64;
    while Instant::now() < stop {
        let key = if one_key {
            format!("bench:one:{tag}")
        } else {
            format!("bench:tp:{tag}:{id}:{i}")
        };
        i += 1;
        if pair(key).await? {
            done.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// `clients` tasks on this thread, each a [`client_loop`] for `secs`.
pub async fn throughput_local<F, Fut>(
    pair: F,
    tag: &str,
    clients: usize,
    secs: f64,
    one_key: bool,
) -> Result<Throughput>
where
    F: Fn(String) -> Fut + Clone + 'static,
    Fut: Future<Output = Result<bool>> + 'static,
{
    let done = Rc::new(AtomicU64::new(0));
    let run = Run::start(secs);
    let local = tokio::task::LocalSet::new();
    let mut tasks = Vec::new();
    for id in 0..clients {
        let (pair, done, tag) = (pair.clone(), done.clone(), tag.to_owned());
        tasks.push(local.spawn_local(async move {
            client_loop(pair, &tag, id, run.stop, one_key, &done).await
        }));
    }
    // A pair that never ends would hold the run forever: bound it.
    let all = local.run_until(async {
        for t in tasks {
            t.await??;
        }
        anyhow::Ok(())
    });
    match tokio::time::timeout(Duration::from_secs_f64(secs + 30.0), all).await {
        Ok(r) => r?,
        Err(_) => bail!("a throughput run of {secs} s was still going after {secs} + 30 s"),
    }
    Ok(run.finish(done.load(Ordering::Relaxed)))
}
