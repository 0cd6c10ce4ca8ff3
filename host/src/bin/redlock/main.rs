//! `redlock`: hold a Redis Redlock around any command, for a fleet what
//! `flock(1)` does for one machine; plus script-friendly acquire / release /
//! extend, a per-node status view, deployment checks, and a self-contained
//! demo.
//!
//! Modules: `args` (the command line), `run` (with its `watchdog` process,
//! its termination `schedule`, the `once` marker and the `sys` calls they
//! need), `demo`, `status`, `doctor`; exit codes live in `exit`.

mod args;
mod demo;
mod doctor;
mod exit;
mod once;
mod run;
mod schedule;
mod status;
mod sys;
mod watchdog;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use redlock_wasm::{AcquireOptions, Error, Lock, Redlock};

use crate::args::{Cli, Command, LockArgs, NodeArgs};
use crate::exit::{Exit, Failure};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints usage errors itself, with exit code 2; --help and
            // --version exit 0.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::USAGE } else { 0 });
        }
    };
    if let Command::Watchdog(a) = cli.command {
        // A plain blocking process: no runtime, no logging set-up.
        return ExitCode::from(watchdog::main(a));
    }
    init_tracing(cli.verbose);
    // One thread is enough for a lock client, and measurably faster on
    // small machines than a multi-thread runtime.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return report(
                Failure::internal(anyhow::anyhow!("start the runtime: {e}")),
                0,
            );
        }
    };
    let verbose = cli.verbose;
    let result = rt.block_on(async {
        let result = dispatch(cli).await;
        // Operations return at quorum; let the slower nodes' commands finish
        // before the process (and its runtime) goes away.
        let managers = std::mem::take(&mut *SETTLE.lock().unwrap_or_else(|e| e.into_inner()));
        for r in managers {
            r.settle(Duration::from_secs(1)).await;
        }
        result
    });
    match result {
        Ok(Exit(code)) => ExitCode::from(code),
        Err(f) => report(f, verbose),
    }
}

/// Prints a failure as one line (the whole chain with -v) and returns its code.
fn report(f: Failure, verbose: u8) -> ExitCode {
    if verbose > 0 {
        eprintln!("redlock: {:#}", f.error);
    } else {
        eprintln!("redlock: {}", f.error);
    }
    ExitCode::from(f.code)
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,redlock_wasm=debug",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("REDLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

async fn dispatch(cli: Cli) -> Result<Exit, Failure> {
    match cli.command {
        Command::Run(a) => run::run(a).await,
        Command::Acquire(a) => {
            let l = &a.lock;
            let r = manager(&l.nodes, l.ttl)?;
            let lock = acquire(&r, l, AcquireOptions::new())
                .await
                .map_err(Failure::from_lock_error)?;
            if a.json {
                let mut out = serde_json::json!({
                    "key": lock.key(),
                    "token": lock.token(),
                    "validity_ms": lock.validity().as_millis() as u64,
                });
                if let Some(fence) = lock.fence() {
                    out["fence"] = fence.into();
                }
                println!("{out}");
            } else {
                println!("{}", lock.token());
            }
            Ok(Exit(0))
        }
        Command::Release(a) => {
            let r = manager(&a.nodes, Duration::from_secs(1))?;
            let lock = Lock::from_parts(&a.key, &a.token, Instant::now() + Duration::from_secs(1));
            r.release_by(&lock, a.wait)
                .await
                .map_err(Failure::from_lock_error)?;
            Ok(Exit(0))
        }
        Command::Extend(a) => {
            let (t, ttl) = (&a.lock, a.ttl);
            let r = manager(&t.nodes, ttl)?;
            // Another process acquired this lock: assume it is valid for the
            // next --wait; the nodes' compare-and-extend is the real check.
            let lock = Lock::from_parts(&t.key, &t.token, Instant::now() + t.wait);
            let lock = r
                .extend_by(&lock, ttl, t.wait)
                .await
                .map_err(Failure::from_lock_error)?;
            if a.json {
                let out = serde_json::json!({
                    "key": lock.key(),
                    "validity_ms": lock.validity().as_millis() as u64,
                });
                println!("{out}");
            }
            Ok(Exit(0))
        }
        Command::Status(a) => status::status(a).await,
        Command::Doctor(a) => doctor::doctor(a).await,
        Command::Demo(a) => demo::demo(a).await,
        Command::Watchdog(_) => Err(Failure::internal(anyhow::anyhow!(
            "__watchdog runs only as the helper of `redlock run`"
        ))),
    }
}

/// Acquires for `run` and `acquire`: wait up to --wait, or make exactly one
/// attempt for --wait 0s (bounded by a few node timeouts).
pub(crate) async fn acquire(
    r: &Redlock,
    l: &LockArgs,
    options: AcquireOptions,
) -> Result<Lock, Error> {
    let options = options.fencing(l.fence);
    if l.wait.is_zero() {
        let budget = (l.nodes.node_timeout * 4).max(Duration::from_secs(1));
        r.acquire_with(&l.key, budget, options.retry_count(0)).await
    } else {
        r.acquire_with(&l.key, l.wait, options).await
    }
}

/// Managers to settle before exit.
static SETTLE: std::sync::Mutex<Vec<Redlock>> = std::sync::Mutex::new(Vec::new());

/// A manager from the node flags; none given is a usage error.
pub(crate) fn manager(nodes: &NodeArgs, ttl: Duration) -> Result<Redlock, Failure> {
    let urls = nodes.urls();
    if urls.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!(
            "no Redis nodes: pass --node redis://HOST:PORT (repeatable) or set REDLOCK_NODES=url,url,..."
        )));
    }
    let r = Redlock::builder()
        .nodes(urls)
        .ttl(ttl)
        .node_timeout(nodes.node_timeout)
        .build()
        .map_err(Failure::from_lock_error)?;
    SETTLE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(r.clone());
    Ok(r)
}
