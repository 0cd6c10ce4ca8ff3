//! `redlock run`: acquire, run the command, keep the lock extended, release.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::anyhow;
use redlock_wasm::{AcquireOptions, CancellationToken, Error, Lock, Redlock};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::Instant;

use crate::args::RunArgs;
use crate::exit::{self, Exit, Failure};

/// Retry a failed extension this soon while validity lasts.
const EXTEND_RETRY: Duration = Duration::from_millis(100);

struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> Result<Self, Failure> {
        let sig =
            |k| signal(k).map_err(|e| Failure::internal(anyhow!("install signal handler: {e}")));
        Ok(Signals {
            term: sig(SignalKind::terminate())?,
            int: sig(SignalKind::interrupt())?,
        })
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) -> libc::c_int {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.int.recv() => libc::SIGINT,
        }
    }
}

pub async fn run(a: RunArgs) -> Result<Exit, Failure> {
    let (l, grace) = (&a.lock, a.grace);
    let r = crate::manager(&l.nodes, l.ttl)?;
    // Handlers first: a signal while waiting for the lock must still clean up.
    let mut signals = Signals::install()?;

    let cancel = CancellationToken::new();
    let acquire = r.acquire_with(
        &l.key,
        l.wait,
        AcquireOptions::new().cancel_on(cancel.clone()),
    );
    tokio::pin!(acquire);
    let lock = tokio::select! {
        res = &mut acquire => res.map_err(Failure::from_lock_error)?,
        sig = signals.next() => {
            cancel.cancel();
            // The acquire deletes what it set, then returns.
            if let Ok(lock) = acquire.await {
                release(&r, &lock).await;
            }
            return Ok(Exit(128 + sig as u8));
        }
    };
    tracing::info!(key = %l.key, validity = ?lock.validity(), "lock acquired");

    let program = &a.command[0];
    let mut child = match tokio::process::Command::new(program)
        .args(&a.command[1..])
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            release(&r, &lock).await;
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::NOT_EXECUTABLE,
            };
            return Err(Failure {
                code,
                error: anyhow!("cannot run {}: {e}", program.to_string_lossy()),
            });
        }
    };
    let pid = child.id();

    let mut lock = lock;
    let mut next_extend = extend_time(&lock);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = tokio::time::sleep_until(next_extend) => {
                match r.extend(&lock, l.ttl).await {
                    Ok(longer) => {
                        tracing::debug!(validity = ?longer.validity(), "lock extended");
                        lock = longer;
                        next_extend = extend_time(&lock);
                    }
                    Err(e) if is_lost(&e) || !lock.is_valid() => {
                        eprintln!("redlock: {e}; terminating the command");
                        terminate(&mut child, pid, grace).await;
                        release(&r, &lock).await;
                        return Ok(Exit(exit::LOST));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "extension failed; retrying while the lock is valid");
                        let retry = Instant::now() + EXTEND_RETRY;
                        next_extend = retry.min(Instant::from_std(lock.valid_until()));
                    }
                }
            }
            sig = signals.next() => {
                tracing::info!(signal = sig, "forwarding signal to the command");
                if let Some(pid) = pid {
                    let _ = redlock_wasm::signal::send(pid, sig);
                }
            }
        }
    };
    release(&r, &lock).await;
    match status {
        Ok(status) => Ok(Exit(code_of(status))),
        Err(e) => Err(Failure::internal(anyhow!("waiting for the command: {e}"))),
    }
}

/// When to extend next: after a third of the validity is used, so two more
/// tries fit before it runs out.
fn extend_time(lock: &Lock) -> Instant {
    Instant::now() + lock.validity() / 3
}

/// True when the lock is certainly gone: validity over, or a quorum of
/// nodes said the key is not ours. Timeouts may be transient.
fn is_lost(e: &Error) -> bool {
    match e {
        Error::LockLost(f) => f.attempts == 0 || f.refused() >= f.quorum,
        _ => false,
    }
}

async fn release(r: &Redlock, lock: &Lock) {
    if let Err(e) = r.release(lock).await {
        // Not fatal: the keys expire with the TTL.
        eprintln!("redlock: {e} (the keys expire with their TTL)");
    }
}

/// SIGTERM, then SIGKILL after `grace`.
async fn terminate(child: &mut tokio::process::Child, pid: Option<u32>, grace: Duration) {
    if let Some(pid) = pid {
        let _ = redlock_wasm::signal::send(pid, libc::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// The exit code a shell would report: the code, or 128 + the signal.
fn code_of(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        (None, None) => exit::FAILED,
    }
}
