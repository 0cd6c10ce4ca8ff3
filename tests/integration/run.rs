//! `redlock run` never lets a job outlive its lock: the termination schedule,
//! the job's process group, the watchdog, `--wait 0s`, `--once-per`,
//! signal forwarding and exit codes; real nodes, real processes, times
//! observed from outside.

use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redlock_wasm::Redlock;

use crate::cli::{output, redlock, stderr, wait_until_held};
use crate::support::{Cluster, key};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The last `valid_until_unix_ms` redlock logged (acquire or a confirmed
/// extension): when the lock it last confirmed stops being valid.
fn last_valid_until(log: &str) -> u64 {
    let plain: String = {
        // Drop ANSI colour sequences, whatever the logger chose.
        let mut out = String::new();
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    plain
        .match_indices("valid_until_unix_ms=")
        .filter_map(|(i, m)| {
            let digits: String = plain[i + m.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .last()
        .unwrap_or_else(|| panic!("no validity logged: {log}"))
}

/// A job's files: pid files and logs in a temp dir.
struct Job {
    dir: tempfile::TempDir,
}

impl Job {
    fn new() -> Self {
        Job {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A shell that ignores SIGTERM and starts a child (redlock's
    /// grandchild, through the watchdog) that ignores it too; each writes
    /// its pid. Only SIGKILL to the whole group ends both.
    fn stubborn(&self) -> [String; 3] {
        let d = self.dir.path().display();
        [
            "sh".into(),
            "-c".into(),
            format!(
                "trap '' TERM; \
                 sh -c 'echo $$ > {d}/grandchild.tmp; mv {d}/grandchild.tmp {d}/grandchild.pid; \
                        while :; do sleep 0.05; done' & \
                 echo $$ > {d}/job.tmp; mv {d}/job.tmp {d}/job.pid; \
                 while :; do sleep 0.05; done"
            ),
        ]
    }

    /// The job's and its child's pids, once both wrote them (up to 10 s).
    fn pids(&self) -> Vec<(&'static str, i32)> {
        let start = Instant::now();
        ["job", "grandchild"]
            .into_iter()
            .map(|what| {
                loop {
                    if let Ok(s) = std::fs::read_to_string(self.path(&format!("{what}.pid"))) {
                        break (what, s.trim().parse().unwrap());
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "{what} never started"
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
            .collect()
    }
}

/// Watches processes from outside and returns, per process, the first
/// moment (Unix ms) it was seen gone: an upper bound on when it died.
fn watch_deaths(
    pids: Vec<(&'static str, i32)>,
) -> std::thread::JoinHandle<Vec<(&'static str, u64)>> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut seen: Vec<(&'static str, Option<u64>)> =
            pids.iter().map(|(w, _)| (*w, None)).collect();
        while seen.iter().any(|(_, t)| t.is_none()) && start.elapsed() < Duration::from_secs(30) {
            for ((_, pid), (_, t)) in pids.iter().zip(seen.iter_mut()) {
                // SAFETY: kill with signal 0 only checks for existence.
                if t.is_none() && unsafe { libc::kill(*pid, 0) } != 0 {
                    *t = Some(unix_ms());
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        seen.into_iter()
            .map(|(w, t)| (w, t.unwrap_or(u64::MAX)))
            .collect()
    })
}

/// Starts `redlock run` with a stubborn job, lets an extension be
/// confirmed, pauses a majority of nodes (SIGSTOP: connections stay open,
/// nothing answers), and returns redlock's output and when each process of
/// the job was seen dead.
fn paused_majority(extra: &[&str]) -> (Output, Vec<(&'static str, u64)>) {
    let c = Cluster::start(3);
    let k = key(&format!("run-paused-{}", extra.join("")));
    let job = Job::new();
    let mut cmd = redlock(&c);
    cmd.env("REDLOCK_LOG", "info").env("NO_COLOR", "1");
    cmd.args(["run", "--key", &k, "--ttl", "3s"])
        .args(extra)
        .arg("--")
        .args(job.stubborn());
    let child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deaths = watch_deaths(job.pids());
    // One extension is due after a third of the validity (~1 s).
    std::thread::sleep(Duration::from_millis(1_300));
    c.nodes[0].pause().unwrap();
    c.nodes[1].pause().unwrap();
    let o = child.wait_with_output().unwrap();
    c.nodes[0].resume().unwrap();
    c.nodes[1].resume().unwrap();
    (o, deaths.join().unwrap())
}

/// The job and its grandchild both ignore SIGTERM; a majority of nodes is
/// paused mid-run. Both are dead before the last confirmed validity ends,
/// and redlock exits 76. Negative controls, run once by hand: with the old
/// schedule (SIGKILL `--grace` after validity ended) the job was seen alive
/// ~600 ms past validity; with signals sent to the direct child only, the
/// grandchild was never killed.
#[test]
fn paused_majority_kills_job_and_grandchild_before_validity_ends() {
    let (o, deaths) = paused_majority(&["--grace", "500ms"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(76), "{err}");
    let valid_until = last_valid_until(&err);
    for (what, dead_at) in deaths {
        assert!(
            dead_at <= valid_until,
            "{what} seen alive {} ms past the validity: {err}",
            dead_at.saturating_sub(valid_until)
        );
    }
    assert!(
        err.contains("sent SIGTERM") && err.contains("sent SIGKILL"),
        "{err}"
    );
}

/// A --grace longer than the validity allows is clamped with a warning, and
/// the kill still comes before validity ends.
#[test]
fn grace_longer_than_validity_is_clamped() {
    let (o, deaths) = paused_majority(&["--grace", "1m"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(76), "{err}");
    // TTL 3 s: validity 2968 ms at best, half of it less the 100 ms margin.
    assert!(
        err.contains("--grace 1m does not fit") && err.contains("using 1s 384ms"),
        "{err}"
    );
    let valid_until = last_valid_until(&err);
    for (what, dead_at) in deaths {
        assert!(dead_at <= valid_until, "{what} outlived the lock: {err}");
    }
}

/// redlock SIGKILLed mid-run: its watchdog terminates the job and its
/// grandchild before the lock's validity ends. Negative control, run once
/// by hand: a watchdog that ignores the end of its socket leaves both
/// running until the test's 30 s watch gives up.
#[test]
fn killed_redlock_takes_the_job_with_it() {
    let c = Cluster::start(3);
    let k = key("run-sigkill");
    let job = Job::new();
    let mut cmd = redlock(&c);
    cmd.env("REDLOCK_LOG", "info").env("NO_COLOR", "1");
    cmd.args(["run", "--key", &k, "--ttl", "5s", "--grace", "300ms", "--"])
        .args(job.stubborn());
    let child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deaths = watch_deaths(job.pids());
    std::thread::sleep(Duration::from_millis(300));
    redlock_wasm::signal::send(child.id(), libc::SIGKILL).unwrap();
    // stderr closes when the watchdog, which shares it, is gone too.
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    let valid_until = last_valid_until(&err);
    for (what, dead_at) in deaths.join().unwrap() {
        assert!(dead_at <= valid_until, "{what} outlived the lock: {err}");
    }
    assert!(err.contains("redlock is gone"), "{err}");
}

/// --wait 0s: one attempt. On a held key, exit 75 with no retry; on a free
/// key, the job runs.
#[tokio::test]
async fn wait_zero_makes_one_attempt() {
    let c = Cluster::start(3);
    let k = key("run-wait0");
    let r = Redlock::new(c.urls(), Duration::from_secs(10)).unwrap();
    let held = r.acquire(&k, Duration::from_secs(1)).await.unwrap();
    let mut cmd = redlock(&c);
    cmd.args(["run", "--key", &k, "--wait", "0s", "--", "true"]);
    let o = output(cmd);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(75), "{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(!err.contains("attempts"), "one attempt only: {err}");
    r.release(&held).await.unwrap();

    let mut cmd = redlock(&c);
    cmd.args([
        "run", "--key", &k, "--wait", "0s", "--", "sh", "-c", "exit 0",
    ]);
    let o = output(cmd);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// Four hosts start the same --once-per line within a second, each running
/// a job shorter than that spread: the job runs exactly once, the others
/// skip (79); after the period it runs again. Negative control, run once by
/// hand: without the marker check after acquiring, the hosts that waited
/// for the lock ran the job again.
#[test]
fn once_per_runs_once_across_hosts() {
    let c = Cluster::start(3);
    let k = key("run-once");
    let job = Job::new();
    let log = job.path("ran");
    let script = format!("echo ran >> {}; sleep 0.2", log.display());
    let start = Instant::now();
    let spawn = || -> Child {
        let mut cmd = redlock(&c);
        cmd.args([
            "run",
            "--key",
            &k,
            "--once-per",
            "6s",
            "--wait",
            "3s",
            "--",
            "sh",
            "-c",
            &script,
        ]);
        cmd.stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut hosts = Vec::new();
    for _ in 0..4 {
        hosts.push(spawn());
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut codes: Vec<i32> = hosts
        .into_iter()
        .map(|h| {
            let o = h.wait_with_output().unwrap();
            let code = o.status.code().unwrap();
            if code == 79 {
                assert!(stderr(&o).contains("skipped"), "{}", stderr(&o));
            }
            code
        })
        .collect();
    codes.sort();
    assert_eq!(codes, [0, 79, 79, 79]);
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 1);

    // The marker lives 6 s - 0.6 s from when the first host took the lock.
    std::thread::sleep(Duration::from_millis(6_000).saturating_sub(start.elapsed()));
    let o = spawn().wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
}

/// SIGINT, SIGHUP, SIGQUIT and SIGTERM sent to redlock each reach the job
/// exactly once; the job's own exit code is redlock's. Negative control, run
/// once by hand: a job in redlock's own process group got a signal sent to
/// that group twice (directly and forwarded).
#[test]
fn signals_reach_the_job_exactly_once() {
    let c = Cluster::start(3);
    let k = key("run-signals");
    let job = Job::new();
    let d = job.dir.path().display();
    let script = format!(
        "for s in INT HUP QUIT; do trap \"echo $s >> {d}/got\" $s; done; \
         trap 'echo TERM >> {d}/got; exit 3' TERM; \
         touch {d}/ready; \
         while :; do ( trap '' INT HUP QUIT TERM; sleep 0.05 ); done"
    );
    let mut cmd = redlock(&c);
    cmd.args(["run", "--key", &k, "--", "sh", "-c", &script]);
    let mut child = cmd.stdin(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while !job.path("ready").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "job never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let got = || std::fs::read_to_string(job.path("got")).unwrap_or_default();
    for (sig, name) in [
        (libc::SIGINT, "INT"),
        (libc::SIGHUP, "HUP"),
        (libc::SIGQUIT, "QUIT"),
        (libc::SIGTERM, "TERM"),
    ] {
        redlock_wasm::signal::send(child.id(), sig).unwrap();
        let start = Instant::now();
        while !got().contains(name) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{name} never arrived"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert_eq!(child.wait().unwrap().code(), Some(3));
    // Let any duplicate land before counting.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        got().lines().collect::<Vec<_>>(),
        ["INT", "HUP", "QUIT", "TERM"]
    );
    assert_eq!(c.with_key(&k), 0, "released");
}

/// Exit codes not covered elsewhere: 0 (the job's success), 126 (not
/// executable), and a job that leaves a background process: redlock
/// waits for the whole group before it releases.
#[test]
fn exit_codes_and_waiting_for_the_group() {
    let c = Cluster::start(3);
    let k = key("run-codes");
    let mut cmd = redlock(&c);
    cmd.args(["run", "--key", &k, "--", "true"]);
    assert_eq!(output(cmd).status.code(), Some(0));

    let job = Job::new();
    let not_exec = job.path("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let mut cmd = redlock(&c);
    cmd.args(["run", "--key", &k, "--"]).arg(&not_exec);
    let o = output(cmd);
    assert_eq!(o.status.code(), Some(126), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot run"), "{}", stderr(&o));

    // The job exits at once, leaving a child that works for 600 ms more.
    let done = job.path("done");
    let script = format!("(sleep 0.6; touch {}) & exit 0", done.display());
    let mut cmd = redlock(&c);
    cmd.args(["run", "--key", &k, "--", "sh", "-c", &script]);
    let child = cmd.stdin(Stdio::null()).spawn().unwrap();
    wait_until_held(&c, &k);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(done.exists(), "redlock returned before the group was gone");
    assert_eq!(c.with_key(&k), 0, "released");
}
