//! `redlock demo`: local nodes, contending workers, a shared counter, a summary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use indicatif::{ProgressBar, ProgressStyle};
use redlock_wasm::local::{self, LocalCluster};
use redlock_wasm::{Error, Redlock};

use crate::args::DemoArgs;
use crate::exit::{Exit, Failure};

const TTL: Duration = Duration::from_secs(5);
/// How long a worker waits for the lock before counting a contention failure.
const WAIT: Duration = Duration::from_millis(500);
/// Uncontended acquire + release pairs measured before the workers start.
const WARMUP: usize = 200;

#[derive(Default)]
struct Tally {
    acquired: AtomicU64,
    busy: AtomicU64,
    errors: AtomicU64,
    overlaps: AtomicU64,
    /// The shared counter, updated by read, pause, write: any two holders at
    /// once would lose an update.
    counter: AtomicU64,
    inside: AtomicUsize,
    latencies: std::sync::Mutex<Vec<Duration>>,
    last_error: std::sync::Mutex<Option<String>>,
}

pub async fn demo(a: DemoArgs) -> Result<Exit, Failure> {
    let given = a.nodes.urls();
    let mut cluster = None;
    let urls = if given.is_empty() {
        if !local::available() {
            return Err(Failure::internal(anyhow!(
                "no --node given and `{}` is not installed to start local ones: {}",
                local::binary(),
                local::INSTALL_HINT
            )));
        }
        let n = a.local_nodes as usize;
        eprintln!("starting {n} local redis-server nodes on free loopback ports...");
        let c = tokio::task::spawn_blocking(move || LocalCluster::start(n))
            .await
            .map_err(|e| Failure::internal(e.into()))?
            .map_err(|e| Failure::internal(e.into()))?;
        let urls = c.urls();
        cluster = Some(c);
        urls
    } else {
        given
    };
    println!("nodes: {}", urls.join(" "));

    let make = || -> Result<Redlock, Failure> {
        Redlock::builder()
            .nodes(urls.clone())
            .ttl(TTL)
            .node_timeout(a.nodes.node_timeout)
            .retry_delay(Duration::from_millis(2))
            .retry_jitter(Duration::from_millis(10))
            .build()
            .map_err(|e| Failure::from_config(e.into()))
    };

    // Uncontended first: what one acquire costs when nobody else wants it.
    let r = make()?;
    let mut solo = Vec::with_capacity(WARMUP);
    for i in 0..WARMUP {
        let key = format!("{}:solo:{i}", a.key);
        let t = Instant::now();
        let lock = r
            .acquire(&key, WAIT)
            .await
            .map_err(Failure::from_lock_error)?;
        solo.push(t.elapsed());
        r.release(&lock).await.map_err(Failure::from_lock_error)?;
    }

    let tally = Arc::new(Tally::default());
    let stop_at = Instant::now() + a.duration;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..a.workers {
        // One manager per worker: its own connections, like separate hosts.
        let (r, key, tally, stop) = (make()?, a.key.clone(), tally.clone(), stop.clone());
        workers.push(tokio::spawn(worker(r, key, tally, stop)));
    }

    let bar = ProgressBar::new(a.duration.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {elapsed:>3} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut killed = false;
    loop {
        let t = tally.as_ref();
        bar.set_position(start.elapsed().as_millis() as u64);
        bar.set_message(format!(
            "acquired {}  busy {}  overlaps {}",
            t.acquired.load(Ordering::Relaxed),
            t.busy.load(Ordering::Relaxed),
            t.overlaps.load(Ordering::Relaxed)
        ));
        if a.kill_node && !killed && start.elapsed() >= a.duration / 2 {
            killed = true;
            match cluster.as_mut().and_then(|c| c.nodes.first_mut()) {
                Some(node) => {
                    node.kill();
                    say(
                        &bar,
                        &format!("killed node {} (SIGKILL); the lock carries on", node.url()),
                    );
                }
                None => say(&bar, "--kill-node only kills nodes the demo started itself"),
            }
        }
        if Instant::now() >= stop_at {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tokio::signal::ctrl_c() => {
                say(&bar, "interrupted: stopping the workers");
                break;
            }
        }
    }
    // Workers finish the round they are in (at most one wait plus a
    // release), so no lock is left behind.
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        let _ = w.await;
    }
    bar.finish_and_clear();

    let t = tally.as_ref();
    let acquired = t.acquired.load(Ordering::SeqCst);
    let counter = t.counter.load(Ordering::SeqCst);
    let overlaps = t.overlaps.load(Ordering::SeqCst);
    let elapsed = start.elapsed().as_secs_f64();
    let mut lat = t
        .latencies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    println!();
    println!(
        "summary ({} workers, {:.1} s, one key, {} nodes{})",
        a.workers,
        elapsed,
        urls.len(),
        if killed { ", 1 killed half-way" } else { "" }
    );
    println!(
        "  acquisitions           {acquired} ({:.0}/s)",
        acquired as f64 / elapsed
    );
    println!(
        "  contention failures    {} (gave up after {} ms while others held the lock)",
        t.busy.load(Ordering::SeqCst),
        WAIT.as_millis()
    );
    println!(
        "  other errors           {}",
        t.errors.load(Ordering::SeqCst)
    );
    if let Some(e) = t
        .last_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        println!("    last: {e}");
    }
    println!("  overlaps detected      {overlaps} (must be 0)");
    println!(
        "  shared counter         {counter} ({})",
        if counter == acquired {
            "= acquisitions: no lost update"
        } else {
            "LOST UPDATES"
        }
    );
    println!(
        "  acquire latency, alone     p50 {}  p99 {}",
        pct(&mut solo, 50),
        pct(&mut solo, 99)
    );
    println!(
        "  acquire latency, contended p50 {}  p99 {}  (includes waiting for the holder)",
        pct(&mut lat, 50),
        pct(&mut lat, 99)
    );
    if cluster.is_some() {
        drop(cluster);
        println!("stopped the local nodes");
    }
    let ok = overlaps == 0 && counter == acquired;
    Ok(Exit(if ok { 0 } else { crate::exit::FAILED }))
}

async fn worker(r: Redlock, key: String, t: Arc<Tally>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        match r.acquire(&key, WAIT).await {
            Ok(lock) => {
                let waited = started.elapsed();
                if t.inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    t.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                let seen = t.counter.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
                t.counter.store(seen + 1, Ordering::SeqCst);
                t.inside.fetch_sub(1, Ordering::SeqCst);
                t.acquired.fetch_add(1, Ordering::SeqCst);
                t.latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(waited);
                if let Err(e) = r.release(&lock).await {
                    note(&t, &e);
                }
            }
            Err(Error::UnableToAcquire(_)) => {
                t.busy.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => note(&t, &e),
        }
    }
}

/// A line above the progress bar, or on stderr when there is no bar (not a
/// terminal).
fn say(bar: &ProgressBar, line: &str) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn note(t: &Tally, e: &Error) {
    t.errors.fetch_add(1, Ordering::Relaxed);
    *t.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
}

/// The p-th percentile, formatted in ms.
fn pct(v: &mut [Duration], p: usize) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_unstable();
    let i = ((v.len() - 1) * p).div_ceil(100);
    format!("{:.2} ms", v[i].as_secs_f64() * 1e3)
}
