//! Latency and throughput loops, and their statistics.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::contenders::Contender;

/// Latency samples of one run, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples_us: Vec<f64>,
}

impl Latency {
    pub fn pct(&self, p: f64) -> f64 {
        pct(&self.samples_us, p)
    }
}

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

/// The median of a few values.
pub fn median(v: &[f64]) -> f64 {
    pct(v, 50.0)
}

/// `iters` sequential pairs on distinct keys.
pub async fn latency(c: &Contender, tag: &str, iters: usize) -> Result<Latency> {
    let mut samples_us = Vec::with_capacity(iters);
    for i in 0..iters {
        let key = format!("bench:lat:{tag}:{i}");
        let t = Instant::now();
        c.pair(&key).await?;
        samples_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(Latency { samples_us })
}

/// `clients` concurrent loops of pairs for `secs`; on distinct keys unless
/// `one_key`. Returns successful pairs per second.
pub async fn throughput(
    c: Rc<Contender>,
    tag: &str,
    clients: usize,
    secs: f64,
    one_key: bool,
) -> Result<f64> {
    let done = Rc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    let local = tokio::task::LocalSet::new();
    for id in 0..clients {
        let (c, done, tag) = (c.clone(), done.clone(), tag.to_owned());
        tasks.push(local.spawn_local(async move {
            let mut i = 0u64;
            while Instant::now() < stop {
                let key = if one_key {
                    format!("bench:one:{tag}")
                } else {
                    format!("bench:tp:{tag}:{id}:{i}")
                };
                i += 1;
                if c.pair(&key).await? {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    local
        .run_until(async {
            for t in tasks {
                t.await??;
            }
            anyhow::Ok(())
        })
        .await?;
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
