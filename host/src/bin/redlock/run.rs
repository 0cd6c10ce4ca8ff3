//! `redlock run`: acquire, run the job under the watchdog, keep the lock
//! extended, wait for the job's whole process group, release.
//!
//! The job never outlives the lock: the watchdog (see `watchdog`) signals
//! the job's process group on a schedule bounded by the lock's validity
//! (see `schedule`), and this process only moves that schedule when an
//! extension is confirmed. If this process dies, the watchdog terminates
//! the job; if the watchdog dies, this process kills the job.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use redlock_wasm::{AcquireOptions, CancellationToken, Error, Lock, Redlock};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::args::RunArgs;
use crate::exit::{self, Exit, Failure};
use crate::once::{self, Marker, OncePer};
use crate::schedule;
use crate::sys::{self, Ended};
use crate::watchdog::{self, Command, Report};

use redlock_wasm::guard::schedule::{EXTEND_RETRY, extend_after, loss_is_certain};

/// How long to wait for the job's group to die after SIGKILL when the
/// watchdog is gone.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to redlock.
struct Signals([Signal; 4]);

impl Signals {
    fn install() -> Result<Self, Failure> {
        let sig = |k| {
            signal(SignalKind::from_raw(k))
                .map_err(|e| Failure::internal(anyhow!("install signal handler: {e}")))
        };
        let [a, b, c, d] = sys::FORWARDED;
        Ok(Signals([sig(a)?, sig(b)?, sig(c)?, sig(d)?]))
    }

    /// The next of them.
    async fn next(&mut self) -> libc::c_int {
        let [int, term, hup, quit] = &mut self.0;
        tokio::select! {
            _ = int.recv() => libc::SIGINT,
            _ = term.recv() => libc::SIGTERM,
            _ = hup.recv() => libc::SIGHUP,
            _ = quit.recv() => libc::SIGQUIT,
        }
    }
}

pub async fn run(a: RunArgs) -> Result<Exit, Failure> {
    let l = &a.lock;
    // Everything that can be refused is refused before any I/O.
    let (grace, clamped) =
        schedule::plan_grace(l.ttl, a.grace).map_err(|e| Failure::usage(anyhow!(e)))?;
    if clamped {
        eprintln!(
            "redlock: --grace {} does not fit in the lock's validity (TTL {}): using {}",
            humantime::format_duration(a.grace),
            humantime::format_duration(l.ttl),
            humantime::format_duration(grace)
        );
    }
    let once = a
        .once_per
        .map(|p| OncePer::new(p, l.wait))
        .transpose()
        .map_err(|e| Failure::usage(anyhow!(e)))?;
    let r = crate::manager(&l.nodes, l.ttl)?;
    // Handlers first: a signal while waiting for the lock must still clean up.
    let mut signals = Signals::install()?;

    if once.is_some()
        && let Marker::Present { on, of } = once::find(&r, &l.key).await
    {
        return Ok(skipped(&l.key, on, of));
    }

    let cancel = CancellationToken::new();
    let acquire = crate::acquire(&r, l, AcquireOptions::new().cancel_on(cancel.clone()));
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
    let started = Instant::now();
    tracing::info!(
        key = %l.key,
        validity = ?lock.validity(),
        fence = ?lock.fence(),
        valid_until_unix_ms = unix_ms(lock.valid_until()),
        "lock acquired"
    );

    if once.is_some() {
        // Authoritative now that the lock is ours: whoever wrote a marker
        // did so while holding it.
        match once::find(&r, &l.key).await {
            Marker::Absent => {}
            Marker::Present { on, of } => {
                release(&r, &lock).await;
                return Ok(skipped(&l.key, on, of));
            }
            Marker::Unknown { answered, quorum } => {
                release(&r, &lock).await;
                return Err(Failure {
                    code: exit::NOT_ACQUIRED,
                    error: anyhow!(
                        "could not read the once-per marker: {answered} nodes answered, \
                         {quorum} needed; the job did not run"
                    ),
                });
            }
        }
    }

    let mut job = match Supervisor::start(&r, lock, grace, &a).await {
        Ok(job) => job,
        Err((lock, f)) => {
            release(&r, &lock).await;
            return Err(f);
        }
    };
    let outcome = job.supervise(&mut signals).await;
    let lock = job.lock;
    let code = match outcome {
        Ok(Finished::Ran(ended)) => {
            let code = ended.shell_code();
            if code == 0
                && lock.is_valid()
                && let Some(o) = once
            {
                mark_done(&r, &l.key, o, started).await;
            }
            code
        }
        Ok(Finished::Lost(why)) => {
            eprintln!("redlock: {why}");
            exit::LOST
        }
        Ok(Finished::CannotRun(code, why)) => {
            release(&r, &lock).await;
            return Err(Failure {
                code,
                error: anyhow!(why),
            });
        }
        Err(f) => {
            release(&r, &lock).await;
            return Err(f);
        }
    };
    release(&r, &lock).await;
    Ok(Exit(code))
}

/// An extension in flight (it runs while signals and reports are handled).
type Extension = std::pin::Pin<Box<dyn Future<Output = Result<Lock, Error>>>>;

/// How a supervised job ended.
enum Finished {
    /// It ran; its own process's end.
    Ran(Ended),
    /// The lock was lost or could not be confirmed; the group was terminated.
    Lost(String),
    /// It could not be started.
    CannotRun(u8, String),
}

/// The running job, seen from redlock: the watchdog's socket, the lock and
/// its extensions.
struct Supervisor<'a> {
    r: &'a Redlock,
    lock: Lock,
    ttl: Duration,
    grace: Duration,
    watchdog: std::process::Child,
    reports: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    commands: OwnedWriteHalf,
}

impl<'a> Supervisor<'a> {
    /// Starts the watchdog, which starts the job with the first schedule.
    async fn start(
        r: &'a Redlock,
        lock: Lock,
        grace: Duration,
        a: &RunArgs,
    ) -> Result<Self, (Lock, Failure)> {
        let fail = |lock: &Lock, what: &str, e: std::io::Error| {
            (lock.clone(), Failure::internal(anyhow!("{what}: {e}")))
        };
        // Orphans of the job become ours if the watchdog dies, so that we can
        // reap them and see the group end.
        sys::set_child_subreaper().map_err(|e| fail(&lock, "become a subreaper", e))?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| fail(&lock, "create the watchdog's socket", e))?;
        let (term_at, kill_at) = schedule::deadlines(lock.valid_until(), lock.validity(), grace);
        // The job may take the terminal only when redlock has it.
        let foreground = sys::stdin_foreground_group() == Some(sys::own_group());
        // /proc/self/exe: the running binary, even if the file was replaced.
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg0("redlock-watchdog")
            .arg("__watchdog")
            .arg("--grace-ms")
            .arg(grace.as_millis().to_string())
            .arg("--term-at")
            .arg(boottime(term_at).to_string())
            .arg("--kill-at")
            .arg(boottime(kill_at).to_string());
        if foreground {
            cmd.arg("--foreground");
        }
        cmd.arg("--").args(&a.command);
        // The fence for the job's writes; never one of an outer run.
        match lock.fence() {
            Some(fence) => cmd.env("REDLOCK_FENCE", fence.to_string()),
            None => cmd.env_remove("REDLOCK_FENCE"),
        };
        // Its own group: a terminal's signals reach redlock (or the job),
        // never the watchdog.
        cmd.process_group(0);
        let watchdog = sys::spawn_with_fd(&mut cmd, theirs.as_raw_fd(), watchdog::SOCKET_FD)
            .map_err(|e| fail(&lock, "start the watchdog", e))?;
        drop(theirs);
        ours.set_nonblocking(true)
            .map_err(|e| fail(&lock, "watchdog socket", e))?;
        let stream = UnixStream::from_std(ours).map_err(|e| fail(&lock, "watchdog socket", e))?;
        let (read, write) = stream.into_split();
        Ok(Supervisor {
            r,
            ttl: a.lock.ttl,
            lock,
            grace,
            watchdog,
            reports: BufReader::new(read).lines(),
            commands: write,
        })
    }

    async fn send(&mut self, c: Command) {
        // A dead watchdog shows as the end of its reports.
        let _ = self.commands.write_all(c.line().as_bytes()).await;
    }

    /// Extends the lock, forwards signals and follows the watchdog's
    /// reports until the job's group is gone.
    async fn supervise(&mut self, signals: &mut Signals) -> Result<Finished, Failure> {
        let mut pid = None;
        let mut ended = None;
        // Why the job was terminated, once it was.
        let mut lost: Option<String> = None;
        let mut last_error: Option<Error> = None;
        let mut next_extend = Some(extend_time(&self.lock));
        let mut extending: Option<Extension> = None;
        loop {
            let wake = next_extend.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                line = self.reports.next_line() => {
                    let report = match line {
                        Ok(Some(line)) => Report::parse(&line),
                        _ => None,
                    };
                    match report {
                        Some(Report::Started(p)) => pid = Some(p),
                        Some(Report::CannotRun(code, why)) => {
                            self.reap_watchdog().await;
                            return Ok(Finished::CannotRun(code, why));
                        }
                        Some(Report::Exited(e)) => ended = Some(e),
                        Some(Report::SentTerm) => {
                            let why = lost.get_or_insert_with(|| unconfirmed(last_error.as_ref()));
                            eprintln!("redlock: {why}; sent SIGTERM to the job's process group");
                        }
                        Some(Report::SentKill) => {
                            eprintln!("redlock: sent SIGKILL to the job's process group");
                        }
                        Some(Report::Gone) => break,
                        None => {
                            // The watchdog died (or spoke nonsense): the job is
                            // unguarded, so it ends now.
                            return Ok(self.watchdog_died(pid, ended).await);
                        }
                    }
                }
                res = async { extending.as_mut().expect("guarded").await }, if extending.is_some() => {
                    extending = None;
                    match res {
                        Ok(longer) => {
                            tracing::info!(
                                validity = ?longer.validity(),
                                valid_until_unix_ms = unix_ms(longer.valid_until()),
                                "lock extended"
                            );
                            self.lock = longer;
                            let (t, k) =
                                schedule::deadlines(self.lock.valid_until(), self.lock.validity(), self.grace);
                            self.send(Command::At { term_at: boottime(t), kill_at: boottime(k) }).await;
                            next_extend = Some(extend_time(&self.lock));
                            last_error = None;
                        }
                        Err(e) if loss_is_certain(&e) || !self.lock.is_valid() => {
                            lost.get_or_insert_with(|| format!("the lock was lost: {e}"));
                            self.send(Command::Terminate).await;
                            next_extend = None;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "extension failed; retrying while the lock is valid");
                            last_error = Some(e);
                            next_extend = Some(Instant::now() + EXTEND_RETRY);
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake.into()), if extending.is_none() && next_extend.is_some() => {
                    let (r, lock, ttl) = (self.r.clone(), self.lock.clone(), self.ttl);
                    extending = Some(Box::pin(async move { r.extend(&lock, ttl).await }));
                }
                sig = signals.next() => {
                    tracing::info!(signal = sig, "forwarding signal to the job's process group");
                    self.send(Command::Signal(sig)).await;
                }
            }
        }
        self.reap_watchdog().await;
        Ok(match (lost, ended) {
            (Some(why), _) => Finished::Lost(why),
            (None, Some(e)) => Finished::Ran(e),
            (None, None) => Finished::Lost("the watchdog lost track of the job".into()),
        })
    }

    /// The watchdog is gone before the job's group: kill the group now and
    /// wait for it (its orphans are ours: we are a subreaper).
    async fn watchdog_died(&mut self, pid: Option<i32>, ended: Option<Ended>) -> Finished {
        let Some(pid) = pid else {
            self.reap_watchdog().await;
            return Finished::Lost("the watchdog died before the job started".into());
        };
        if let Some(e) = ended
            && !sys::group_alive(pid)
        {
            return Finished::Ran(e);
        }
        let _ = sys::kill_group(pid, libc::SIGKILL);
        let start = Instant::now();
        while sys::group_alive(pid) && start.elapsed() < KILL_WAIT {
            while sys::reap_any().is_some() {}
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Finished::Lost(format!(
            "the watchdog died; killed the job's process group {pid}"
        ))
    }

    /// Collects the watchdog's exit status (it exits right after `gone`).
    async fn reap_watchdog(&mut self) {
        for _ in 0..100 {
            match self.watchdog.try_wait() {
                Ok(None) => tokio::time::sleep(Duration::from_millis(10)).await,
                _ => return,
            }
        }
    }
}

/// The reason given when the schedule fired without a confirmed extension.
fn unconfirmed(last: Option<&Error>) -> String {
    match last {
        Some(e) => format!("no extension was confirmed in time (last: {e})"),
        None => "no extension was confirmed in time".into(),
    }
}

/// When to extend next: after a third of the validity is used, so two more
/// tries fit before SIGTERM.
fn extend_time(lock: &Lock) -> Instant {
    Instant::now() + extend_after(lock.validity())
}

/// `Instant` on the monotonic clock to nanoseconds of `CLOCK_BOOTTIME`,
/// the watchdog's clock.
fn boottime(at: Instant) -> u64 {
    let (boot, now) = (sys::boottime_ns(), Instant::now());
    match at.checked_duration_since(now) {
        Some(ahead) => boot.saturating_add(u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX)),
        None => boot.saturating_sub(u64::try_from((now - at).as_nanos()).unwrap_or(u64::MAX)),
    }
}

/// `Instant` to Unix milliseconds (for logs that tests and people compare
/// with wall-clock timestamps).
fn unix_ms(at: Instant) -> u64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let now = Instant::now();
    let wall = match at.checked_duration_since(now) {
        Some(ahead) => wall + ahead,
        None => wall.saturating_sub(now - at),
    };
    u64::try_from(wall.as_millis()).unwrap_or(u64::MAX)
}

fn skipped(key: &str, on: usize, of: usize) -> Exit {
    eprintln!(
        "redlock: skipped: {key:?} already ran within its --once-per period \
         (marker on {on} of {of} nodes)"
    );
    Exit(exit::SKIPPED)
}

/// Leaves the once-per marker; a failure is reported, not fatal (the job
/// ran and succeeded).
async fn mark_done(r: &Redlock, key: &str, once: OncePer, started: Instant) {
    let Some(ttl) = once.marker_ttl(started) else {
        eprintln!(
            "redlock: the job outlasted its --once-per marker's life ({}); no marker left",
            humantime::format_duration(once.marker_life())
        );
        return;
    };
    if let Err(e) = once::write(r, key, ttl).await {
        eprintln!(
            "redlock: the job succeeded but its once-per marker was not confirmed ({e}); \
             another host may run it again this period"
        );
    }
}

async fn release(r: &Redlock, lock: &Lock) {
    if let Err(e) = r.release(lock).await {
        // Not fatal: the keys expire with the TTL.
        eprintln!("redlock: {e} (the keys expire with their TTL)");
    }
}
