//! The `redlock` binary, run as a user would, against real nodes.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use redlock_wasm::Redlock;

use crate::support::{Cluster, Inspect, eventually, key};

pub(crate) fn redlock(c: &Cluster) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redlock"));
    cmd.env("REDLOCK_NODES", c.urls().join(","));
    cmd.env_remove("REDLOCK_LOG");
    cmd
}

pub(crate) fn output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run redlock")
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits (up to 5 s) until a quorum of nodes holds `key` (a first
/// connection on a loaded machine may outlast the node timeout, so not
/// necessarily every node); returns when it started.
pub(crate) fn wait_until_held(c: &Cluster, key: &str) -> Instant {
    let start = Instant::now();
    while c.with_key(key) < c.nodes.len() / 2 + 1 {
        assert!(start.elapsed() < Duration::from_secs(5), "never acquired");
        std::thread::sleep(Duration::from_millis(10));
    }
    start
}

/// Two `redlock run` on one key at once: the commands never overlap.
#[test]
fn two_runs_on_one_key_never_overlap() {
    let c = Cluster::start(3);
    let k = key("cli-two-runs");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "echo start >> {0}; sleep 0.4; echo end >> {0}",
        log.display()
    );
    let spawn = || {
        let mut cmd = redlock(&c);
        cmd.args([
            "run", "--key", &k, "--wait", "5s", "--", "sh", "-c", &script,
        ]);
        cmd.spawn().unwrap()
    };
    let (mut a, mut b) = (spawn(), spawn());
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        ["start", "end", "start", "end"],
        "interleaved: {text}"
    );
    assert_eq!(c.total_keys(), 0, "released");
}

/// The command's exit code is redlock's exit code; a missing command is 127.
#[test]
fn exit_code_propagates() {
    let c = Cluster::start(3);
    let mut cmd = redlock(&c);
    cmd.args(["run", "--key", &key("cli-exit"), "--", "sh", "-c", "exit 7"]);
    assert_eq!(output(cmd).status.code(), Some(7));

    let mut cmd = redlock(&c);
    cmd.args(["run", "--key", &key("cli-exit"), "--", "/no/such/program"]);
    let o = output(cmd);
    assert_eq!(o.status.code(), Some(127), "{}", stderr(&o));
    assert_eq!(c.total_keys(), 0, "released after the failed start");
}

/// A lock held elsewhere: exit 75 after --wait, with one line naming the nodes.
#[tokio::test]
async fn busy_lock_exits_75() {
    let c = Cluster::start(3);
    let k = key("cli-busy");
    let r = Redlock::new(c.urls(), Duration::from_secs(10)).unwrap();
    let held = r.acquire(&k, Duration::from_secs(1)).await.unwrap();
    let mut cmd = redlock(&c);
    cmd.args(["run", "--key", &k, "--wait", "300ms", "--", "true"]);
    let o = output(cmd);
    assert_eq!(o.status.code(), Some(75), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("refused") && err.contains(&c.nodes[0].port().to_string()),
        "{err}"
    );
    r.release(&held).await.unwrap();
}

/// Deleting the key on a majority while the command runs: the command is
/// terminated and redlock exits 76.
#[test]
fn lost_lock_terminates_the_command() {
    let c = Cluster::start(3);
    let k = key("cli-lost");
    let mut cmd = redlock(&c);
    cmd.args([
        "run", "--key", &k, "--ttl", "900ms", "--grace", "1s", "--", "sleep", "30",
    ]);
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let start = wait_until_held(&c, &k);
    // Another token on 2 of 3 nodes (not a DEL: a SET of ours still on its
    // way under load would take a deleted key back, and with it the quorum).
    for n in &c.nodes[..2] {
        n.set(&k, "someone-else", 60_000);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(76));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

/// Killing a majority of nodes while the command runs also loses the lock.
#[test]
fn killed_majority_terminates_the_command() {
    let mut c = Cluster::start(3);
    let k = key("cli-killed");
    let mut cmd = redlock(&c);
    cmd.args(["run", "--key", &k, "--ttl", "900ms", "--", "sleep", "30"]);
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let start = wait_until_held(&c, &k);
    c.nodes[0].kill();
    c.nodes[1].kill();
    assert_eq!(child.wait().unwrap().code(), Some(76));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

/// SIGTERM to redlock reaches the command, and the lock is released.
#[test]
fn sigterm_is_forwarded_and_the_lock_released() {
    let c = Cluster::start(3);
    let k = key("cli-sigterm");
    let mut cmd = redlock(&c);
    cmd.args(["run", "--key", &k, "--", "sleep", "30"]);
    let mut child = cmd.spawn().unwrap();
    let start = wait_until_held(&c, &k);
    redlock_wasm::signal::send(child.id(), libc::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGTERM),
        "sleep died of SIGTERM"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(c.with_key(&k), 0, "released on the way out");
}

/// `acquire` prints a token that `release` takes; a wrong token is refused.
#[tokio::test]
async fn acquire_then_release_by_token() {
    let c = Cluster::start(3);
    let k = key("cli-token");
    let mut cmd = redlock(&c);
    cmd.args(["acquire", "--key", &k, "--json"]);
    let o = output(cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    assert_eq!(v["key"], k.as_str());
    assert!(v["validity_ms"].as_u64().unwrap() > 29_000);
    eventually("held on a quorum", || c.holding(&k, &token) >= 2).await;
    let held = c.holding(&k, &token);

    let mut cmd = redlock(&c);
    cmd.args([
        "release",
        "--key",
        &k,
        "--token",
        "00000000000000000000000000000000",
    ]);
    let o = output(cmd);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(c.holding(&k, &token), held, "wrong token changed nothing");

    // A refused extend means the lock is lost: 76, as documented.
    let mut cmd = redlock(&c);
    cmd.args([
        "extend",
        "--key",
        &k,
        "--token",
        "00000000000000000000000000000000",
    ]);
    let o = output(cmd);
    assert_eq!(o.status.code(), Some(76), "{}", stderr(&o));
    assert!(stderr(&o).contains("lock lost"), "{}", stderr(&o));
    assert_eq!(c.holding(&k, &token), held, "wrong token changed nothing");

    let mut cmd = redlock(&c);
    cmd.args(["extend", "--key", &k, "--token", &token, "--ttl", "60s"]);
    assert!(output(cmd).status.success());
    eventually("extended where held", || {
        c.nodes.iter().filter(|n| n.pttl(&k) > 30_000).count() >= held
    })
    .await;

    let mut cmd = redlock(&c);
    cmd.args(["release", "--key", &k, "--token", &token]);
    assert!(output(cmd).status.success());
    eventually("released", || c.with_key(&k) == 0).await;
}

/// `status` shows the holder and whether a quorum holds the key.
#[tokio::test]
async fn status_shows_the_holder() {
    let c = Cluster::start(3);
    let k = key("cli-status");
    let r = Redlock::builder()
        .nodes(c.urls())
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let lock = r.acquire(&k, Duration::from_secs(1)).await.unwrap();
    eventually("held on every node", || c.holding(&k, lock.token()) == 3).await;
    let mut cmd = redlock(&c);
    cmd.args(["status", "--key", &k]);
    let o = output(cmd);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains(&lock.token()[..8]), "{out}");
    assert!(
        !out.contains(lock.token()),
        "the full token is never printed: {out}"
    );
    assert!(out.contains("held by a quorum: yes"), "{out}");
    r.release(&lock).await.unwrap();
}

/// The demo runs its own nodes and finishes with 0 overlaps.
#[test]
fn demo_finishes_with_no_overlap() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redlock"));
    cmd.env_remove("REDLOCK_NODES");
    cmd.args([
        "demo",
        "--nodes",
        "3",
        "--workers",
        "4",
        "--duration",
        "1s",
        "--kill-node",
    ]);
    let o = output(cmd);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    assert!(out.contains("overlaps detected      0"), "{out}");
    assert!(out.contains("no lost update"), "{out}");
    assert!(stderr(&o).contains("killed node"), "{}", stderr(&o));
}

/// Bad input: a clear one-line error and a usage exit code, never a panic.
#[test]
fn bad_input_is_a_clear_error() {
    let unused = format!("redis://127.0.0.1:{}", crate::support::free_port());
    let cases: &[(&[&str], i32, &str)] = &[
        (&["--bogus"], 2, "unexpected argument"),
        (
            &["run", "--key", "k", "--ttl", "5q", "--", "true"],
            2,
            "invalid value",
        ),
        (
            &["run", "--key", "k", "--node", "http://x", "--", "true"],
            2,
            "redis://",
        ),
        (
            &[
                "run",
                "--key",
                "k",
                "--node",
                "redis://u:hunter2@h:bad",
                "--",
                "true",
            ],
            2,
            "bad node URL",
        ),
        (&["run", "--key", "k", "--", "true"], 2, "no Redis nodes"),
        (
            &[
                "run",
                "--key",
                "",
                "--node",
                "redis://127.0.0.1:1",
                "--",
                "true",
            ],
            2,
            "key is empty",
        ),
        (
            &[
                "run", "--key", "k", "--node", &unused, "--wait", "200ms", "--", "true",
            ],
            75,
            "unable to acquire",
        ),
        (
            &[
                "run",
                "--key",
                "k",
                "--node",
                "redis://127.0.0.1:1",
                "--node",
                "redis://127.0.0.1:1/0",
                "--",
                "true",
            ],
            2,
            "listed twice",
        ),
    ];
    for (args, code, text) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_redlock"));
        cmd.env_remove("REDLOCK_NODES").args(*args);
        let o = output(cmd);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(*code), "{args:?}: {err}");
        assert!(err.contains(text), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("hunter2"),
            "{args:?}: {err}"
        );
    }
}
