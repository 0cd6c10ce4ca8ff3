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

/// Waits for redlock's output, at most `limit`; past it, kills redlock and
/// the job's group (so a broken build cannot hang the suite or leave
/// processes behind) and fails.
fn output_within(child: Child, job: &Job, limit: Duration) -> Output {
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    match rx.recv_timeout(limit) {
        Ok(o) => o,
        Err(_) => {
            for (_, p) in job.pids() {
                // SAFETY: kill takes integers only.
                unsafe { libc::kill(-p, libc::SIGKILL) };
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let o = rx.recv().unwrap();
            panic!(
                "redlock still running after {limit:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
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
    let o = output_within(child, &job, Duration::from_secs(20));
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
/// grandchild at once (SIGTERM, SIGKILL after the 300 ms grace), long
/// before the lock's validity ends (10 s TTL). Negative control, run once by
/// hand: a watchdog that ignores the end of its socket still kills both by
/// the schedule, before validity ends, but ~9.5 s after redlock died: the
/// promptness check fails.
#[test]
fn killed_redlock_takes_the_job_with_it() {
    let c = Cluster::start(3);
    let k = key("run-sigkill");
    let job = Job::new();
    let mut cmd = redlock(&c);
    cmd.env("REDLOCK_LOG", "info").env("NO_COLOR", "1");
    cmd.args(["run", "--key", &k, "--ttl", "10s", "--grace", "300ms", "--"])
        .args(job.stubborn());
    let child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deaths = watch_deaths(job.pids());
    std::thread::sleep(Duration::from_millis(300));
    redlock_wasm::signal::send(child.id(), libc::SIGKILL).unwrap();
    let killed_at = unix_ms();
    // stderr closes when the watchdog, which shares it, is gone too.
    let o = output_within(child, &job, Duration::from_secs(20));
    let err = stderr(&o);
    let valid_until = last_valid_until(&err);
    for (what, dead_at) in deaths.join().unwrap() {
        assert!(dead_at <= valid_until, "{what} outlived the lock: {err}");
        // The grace and generous scheduling slack, far from the 10 s TTL.
        assert!(
            dead_at <= killed_at + 2_000,
            "{what} ran on {} ms after redlock died: {err}",
            dead_at.saturating_sub(killed_at)
        );
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

/// Four hosts start the same --once-per line within 1.5 s (at 0, 0.1, 0.8
/// and 1.5 s), with a 0.5 s job, shorter than that spread: the second host
/// waits for the lock, the last two find the marker before trying. The job
/// runs exactly once, the others skip (79); after the period it runs again.
/// Negative control, run once by hand: without the marker check after
/// acquiring, the host that waited for the lock ran the job a second time.
#[test]
fn once_per_runs_once_across_hosts() {
    let c = Cluster::start(3);
    let k = key("run-once");
    let job = Job::new();
    let log = job.path("ran");
    let script = format!("echo ran >> {}; sleep 0.5", log.display());
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
    for at in [0, 100, 800, 1_500] {
        std::thread::sleep(Duration::from_millis(at).saturating_sub(start.elapsed()));
        hosts.push(spawn());
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

/// SIGINT, SIGHUP and SIGQUIT sent to redlock's whole process group (as a
/// terminal sends Ctrl-C, Ctrl-\\ and hang-up to its foreground group) and
/// SIGTERM sent to redlock alone each reach the job exactly once; the
/// job's own exit code is redlock's. The job handles each signal at once
/// (`wait` returns on a trapped signal), so a copy arriving a moment later
/// would be counted, not merged. Negative control, run once by hand: the
/// job in redlock's process group, forwarded to by pid (the round-one
/// design), logged INT, HUP and QUIT twice each.
#[test]
fn signals_reach_the_job_exactly_once() {
    use std::os::unix::process::CommandExt;
    let c = Cluster::start(3);
    let k = key("run-signals");
    let job = Job::new();
    let d = job.dir.path().display();
    // Background `sleep` ignores INT and QUIT (POSIX, for asynchronous
    // lists); HUP and TERM end it, and the loop starts another.
    let script = format!(
        "for s in INT HUP QUIT; do trap \"echo $s >> {d}/got\" $s; done; \
         trap 'echo TERM >> {d}/got; exit 3' TERM; \
         touch {d}/ready; \
         while :; do sleep 1 & wait $!; done"
    );
    let mut cmd = redlock(&c);
    cmd.args(["run", "--key", &k, "--", "sh", "-c", &script]);
    // Its own group, as a shell starts a foreground job.
    cmd.process_group(0);
    let mut child = cmd.stdin(Stdio::null()).spawn().unwrap();
    let group = child.id() as i32;
    let start = Instant::now();
    while !job.path("ready").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "job never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let got = || std::fs::read_to_string(job.path("got")).unwrap_or_default();
    for (sig, name, to) in [
        (libc::SIGINT, "INT", -group),
        (libc::SIGHUP, "HUP", -group),
        (libc::SIGQUIT, "QUIT", -group),
        (libc::SIGTERM, "TERM", group),
    ] {
        // SAFETY: kill takes integers only.
        assert_eq!(unsafe { libc::kill(to, sig) }, 0);
        let start = Instant::now();
        while !got().contains(name) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{name} never arrived"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Room for a duplicate to land before the next signal.
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(child.wait().unwrap().code(), Some(3));
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

/// In a terminal's foreground, the job's group gets the terminal: a job
/// that reads from it is not stopped (SIGTTIN), and Ctrl-C reaches it once,
/// straight from the terminal. redlock runs under a pseudo-terminal made by
/// Python's `pty` module. Negative control, run once by hand: without the
/// hand-over, the job was stopped at its `read` and the test timed out.
#[test]
fn the_job_gets_the_terminal() {
    let c = Cluster::start(3);
    let k = key("run-tty");
    let job = Job::new();
    let d = job.dir.path().display();
    let script = format!(
        "trap 'echo INT >> {d}/got; exit 5' INT; \
         read line; echo \"read:$line\" >> {d}/got; \
         while :; do sleep 1 & wait $!; done"
    );
    // The child gets the pty as its controlling terminal; the parent types
    // a line, then Ctrl-C, and reports redlock's exit status.
    let driver = r#"
import os, pty, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
got = os.environ["GOT"]
def fail(why):
    # redlock's watchdog then ends the job: nothing is left behind.
    os.kill(pid, 9)
    sys.exit(why)
def wait_for(text):
    end = time.time() + 10
    while time.time() < end:
        try:
            if text in open(got).read():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    fail("never saw " + text)
time.sleep(0.5)
os.write(fd, b"hello\n")
wait_for("read:hello")
os.write(fd, b"\x03")
end = time.time() + 10
while time.time() < end:
    try:
        os.read(fd, 4096)
    except OSError:
        pass
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print(os.waitstatus_to_exitcode(status))
        sys.exit(0)
    time.sleep(0.02)
fail("redlock did not exit")
"#;
    let got = job.path("got");
    let mut cmd = std::process::Command::new("python3");
    cmd.env("REDLOCK_NODES", c.urls().join(","));
    cmd.arg("-c")
        .arg(driver)
        .arg(env!("CARGO_BIN_EXE_redlock"))
        .args(["run", "--key", &k, "--", "sh", "-c", &script])
        .env("GOT", &got);
    let o = output(cmd);
    assert!(o.status.success(), "driver: {}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "5");
    assert_eq!(
        std::fs::read_to_string(&got)
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
        ["read:hello", "INT"]
    );
}
