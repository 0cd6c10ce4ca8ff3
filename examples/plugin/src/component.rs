//! The plugin's component glue.

use crate::should_extend;

wit_bindgen::generate!({
    world: "redlock:plugin-example/plugin",
    path: ["../../wit", "wit"],
    generate_all,
});

use exports::redlock::plugin_example::job::{Guest, Report};
use redlock::core::redlock::{self as rl, Error, Lock, Options, Outcome};
use wasi::clocks::monotonic_clock;

const NS_PER_MS: u64 = 1_000_000;
/// How long `run` may wait for the lock: other instances finish their run.
const ACQUIRE_BUDGET_MS: u64 = 10_000;
/// How long release may take before the lock is left to expire.
const RELEASE_BUDGET_MS: u64 = 1_000;

struct Plugin;

impl Guest for Plugin {
    fn run(name: String, steps: u32, step_ms: u32) -> Result<Report, String> {
        if name.is_empty() || name.len() > 200 {
            return Err("the job name must be 1 to 200 bytes".into());
        }
        let step_ms = u64::from(step_ms);
        let key = format!("jobs/{name}");
        // Long enough for a few steps between extensions.
        let ttl_ms = (4 * step_ms).clamp(1_000, 60_000);
        let options = Options {
            ttl_ms,
            retry_count: None,
            retry_delay_ms: None,
            retry_jitter_ms: None,
            fence: None,
        };
        let mut lock =
            rl::acquire(&key, options, Some(ACQUIRE_BUDGET_MS)).map_err(|e| describe(&key, e))?;
        let started_at = monotonic_clock::now();
        let mut extensions = 0;
        for _ in 0..steps {
            let left_ms = lock.expires_at.saturating_sub(monotonic_clock::now()) / NS_PER_MS;
            if should_extend(left_ms, step_ms) {
                // Budget: what is left of the validity; past it the lock is gone.
                lock = match rl::extend(&lock, ttl_ms, Some(left_ms.max(1))) {
                    Ok(l) => l,
                    Err(e) => return Err(describe(&key, e)),
                };
                extensions += 1;
            }
            sleep_ms(step_ms);
        }
        let finished_at = monotonic_clock::now();
        release(&lock)?;
        Ok(Report {
            key,
            steps,
            extensions,
            started_at,
            finished_at,
        })
    }
}

fn release(lock: &Lock) -> Result<(), String> {
    rl::release(lock, Some(RELEASE_BUDGET_MS)).map_err(|e| describe(&lock.key, e))
}

/// Waits on a clock pollable: the host runs other work meanwhile.
fn sleep_ms(ms: u64) {
    monotonic_clock::subscribe_duration(ms * NS_PER_MS).block();
}

/// One line for an error, naming what each node said.
fn describe(key: &str, e: Error) -> String {
    let nodes = |f: &rl::QuorumFailure| {
        f.nodes
            .iter()
            .map(|n| {
                let what = match &n.outcome {
                    Outcome::Done => "done".to_owned(),
                    Outcome::Refused => "refused".to_owned(),
                    Outcome::NoReply => "no reply".to_owned(),
                    Outcome::Failed(e) => format!("failed ({e:?})"),
                };
                format!("node {}: {what}", n.node)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match e {
        Error::UnableToAcquire(f) => format!(
            "{key} is busy: not acquired after {} attempts ({})",
            f.attempts,
            nodes(&f)
        ),
        Error::UnableToRelease(f) => format!("{key}: release not confirmed ({})", nodes(&f)),
        Error::LockLost(f) => format!("{key}: lock lost while running ({})", nodes(&f)),
        Error::InvalidArgument(why) => format!("{key}: invalid argument: {why}"),
        Error::DeadlineNeeded => format!("{key}: no time budget given"),
        Error::Cancelled => format!("{key}: cancelled"),
    }
}

export!(Plugin);
