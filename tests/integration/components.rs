//! One lock core, many hosts: the composed component (core + wasi:sockets
//! plug) under the `wasmtime` CLI, Node.js (jco) and Python (wasmtime-py),
//! and the example
//! plugin in a sandboxed embedder; each against real nodes, each excluding
//! the Rust host's locks on the same key.
//!
//! Tools these tests run, and how they are found:
//! - the `wasmtime` CLI: `$REDLOCK_WASMTIME`, else `target/tools/bin/wasmtime`
//!   (where `./scripts/setup --for-tests` installs the pinned version), else `PATH`;
//! - Node.js and `hosts/js/node_modules` (`./scripts/setup --for-tests` runs `npm ci`);
//! - `target/py`, a venv with the pinned `wasmtime` package (`./scripts/setup --for-tests`).
//!
//! A missing tool fails the test with that instruction; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use redlock_wasm::{Error, Redlock};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

use crate::support::servers::{FakeServer, Hostile};
use crate::support::{Cluster, Inspect, eventually, key, start_node};

#[allow(dead_code)] // its `main` is the example's, not the test's
#[path = "../../host/examples/plugin_host.rs"]
mod plugin_host;

const PORTABLE_WASM: &str = env!("REDLOCK_PORTABLE_WASM");

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn rust_host(c: &Cluster) -> Redlock {
    Redlock::builder()
        .nodes(c.urls())
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_millis(500))
        .build()
        .expect("manager")
}

/// Another host holds `k` with `token` (on a quorum at least: a process may
/// exit before its last node's SET), and the Rust host cannot take it.
async fn rust_host_is_refused(c: &Cluster, rust: &Redlock, k: &str, token: &str) {
    eventually("the other host's lock on a quorum", || {
        c.holding(k, token) >= 2
    })
    .await;
    let err = rust
        .acquire(k, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnableToAcquire(_)), "{err:?}");
}

/// Import and export names of a component, as a host sees them.
fn interface_names(wasm: &[u8]) -> (Vec<String>, Vec<String>) {
    let engine = Engine::new(&Config::new()).unwrap();
    let component = Component::new(&engine, wasm).unwrap();
    let ty = component.component_type();
    let imports = ty.imports(&engine).map(|(n, _)| n.to_owned()).collect();
    let exports = ty.exports(&engine).map(|(n, _)| n.to_owned()).collect();
    (imports, exports)
}

#[test]
fn portable_component_imports_only_standard_wasi() {
    let wasm = std::fs::read(PORTABLE_WASM).unwrap();
    let (imports, exports) = interface_names(&wasm);
    assert_eq!(exports, ["redlock:core/redlock@0.1.0"]);
    for name in &imports {
        assert!(
            name.starts_with("wasi:") && name.contains("@0.2."),
            "not standard WASI 0.2: {name} (all: {imports:?})"
        );
    }
    for needed in [
        "wasi:sockets/tcp@",
        "wasi:io/poll@",
        "wasi:clocks/monotonic-clock@",
        "wasi:random/random@",
    ] {
        assert!(
            imports.iter().any(|n| n.starts_with(needed)),
            "{needed}: {imports:?}"
        );
    }
    // The README's copy is the same component.
    let readme_copy = root().join("target/components/redlock-portable.wasm");
    assert_eq!(std::fs::read(readme_copy).unwrap(), wasm);
}

#[test]
fn plugin_component_gets_locks_and_nothing_else() {
    let (imports, exports) = interface_names(plugin_host::PLUGIN_WASM);
    assert_eq!(exports, ["redlock:plugin-example/job@0.1.0"]);
    assert!(imports.iter().any(|n| n == "redlock:core/redis-node@0.1.0"));
    for name in &imports {
        let allowed = name == "redlock:core/redis-node@0.1.0"
            || ["wasi:cli/", "wasi:io/", "wasi:clocks/", "wasi:random/"]
                .iter()
                .any(|p| name.starts_with(p));
        assert!(allowed, "the plugin imports {name} (all: {imports:?})");
    }
}

// ---- the wasmtime CLI -------------------------------------------------------

fn wasmtime_cli() -> PathBuf {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("REDLOCK_WASMTIME") {
                return p.into();
            }
            let local = root().join("target/tools/bin/wasmtime");
            if local.exists() {
                return local;
            }
            let on_path = Command::new("wasmtime").arg("--version").output();
            if on_path.is_ok_and(|o| o.status.success()) {
                return "wasmtime".into();
            }
            panic!(
                "the wasmtime CLI is needed: ./scripts/setup --for-tests installs the pinned version \
                 into target/tools/bin (or set REDLOCK_WASMTIME=/path/to/wasmtime)"
            )
        })
        .clone()
}

/// Appends `run --invoke CALL` on the portable component with `nodes` to a
/// command that runs the wasmtime CLI.
fn wasmtime_invoke(mut cmd: Command, nodes: &[String], call: &str) -> Command {
    // wasi:sockets needs the host's network; the nodes are loopback.
    cmd.args(["run", "-S", "inherit-network", "--env"])
        .arg(format!("REDLOCK_NODES={}", nodes.join(",")))
        .arg("--invoke")
        .arg(call)
        .arg(PORTABLE_WASM);
    cmd
}

/// `wasmtime run --invoke CALL` with `nodes`; the printed WAVE value.
async fn invoke(nodes: &[String], call: &str) -> String {
    let cmd = wasmtime_invoke(Command::new(wasmtime_cli()), nodes, call);
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .expect("run wasmtime");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "wasmtime {call}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The token from a printed `ok({key: ..., token: "...", ...})`.
fn token_of(printed: &str) -> String {
    let start = printed
        .find("token: \"")
        .unwrap_or_else(|| panic!("no token in {printed}"))
        + 8;
    printed[start..start + 32].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasmtime_cli_locks_exclude_the_rust_host() {
    let c = Cluster::start(3);
    let nodes = c.urls();
    let rust = rust_host(&c);
    let k = key("cli-portable");

    // The CLI takes the lock; the process exits, the lock stays (its TTL).
    let printed = invoke(
        &nodes,
        &format!(r#"acquire("{k}", {{ttl-ms: 10000}}, some(2000))"#),
    )
    .await;
    assert!(printed.starts_with("ok({"), "{printed}");
    let token = token_of(&printed);
    rust_host_is_refused(&c, &rust, &k, &token).await;

    // Released by the CLI (same token), the Rust host gets it ...
    let release = format!(
        r#"release({{key: "{k}", token: "{token}", validity-ms: 0, expires-at: 0}}, some(2000))"#
    );
    assert_eq!(invoke(&nodes, &release).await, "ok");
    let lock = rust.acquire(&k, Duration::from_secs(2)).await.unwrap();

    // ... and now the CLI is refused, with the WIT error, node by node.
    let printed = invoke(
        &nodes,
        &format!(r#"acquire("{k}", {{ttl-ms: 10000, retry-count: some(1)}}, some(500))"#),
    )
    .await;
    assert!(printed.starts_with("err(unable-to-acquire("), "{printed}");
    // Decided as soon as a quorum refused: the third node may not have answered.
    assert!(
        printed.matches("outcome: refused").count() >= 2,
        "{printed}"
    );
    // Its release of the Rust host's lock, with the wrong token, is refused.
    let wrong = release.replace(&token, &"0".repeat(32));
    assert!(
        invoke(&nodes, &wrong)
            .await
            .starts_with("err(unable-to-release(")
    );
    assert_eq!(c.holding(&k, lock.token()), 3);
    rust.release(&lock).await.unwrap();
    eventually("no key left", || c.with_key(&k) == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasmtime_cli_bad_input_and_bad_nodes_are_typed_errors() {
    let c = Cluster::start(3);
    let k = key("cli-portable-bad");
    let acquire = |opts: &str, budget: &str| format!(r#"acquire("{k}", {opts}, {budget})"#);

    // Checked before any I/O.
    let cases = [
        (acquire("{ttl-ms: 1000}", "none"), "err(deadline-needed)"),
        (acquire("{ttl-ms: 0}", "some(100)"), "err(invalid-argument("),
        (
            r#"acquire("", {ttl-ms: 1000}, some(100))"#.to_owned(),
            "err(invalid-argument(",
        ),
    ];
    for (call, want) in &cases {
        let got = invoke(&c.urls(), call).await;
        assert!(got.starts_with(want), "{call}: {got}");
    }
    assert!(
        invoke(&[], &acquire("{ttl-ms: 1000}", "some(100)"))
            .await
            .starts_with("err(invalid-argument(")
    );

    // Bad nodes fail alone; the good majority still decides.
    let garbage = FakeServer::start(Hostile::Garbage).await;
    let huge = FakeServer::start(Hostile::Oversized).await;
    let reset = FakeServer::start(Hostile::ResetMidReply).await;
    let mut nodes = c.urls();
    nodes.extend([
        garbage.url(),
        huge.url(),
        reset.url(),
        "rediss://127.0.0.1:1".into(),
    ]);
    // 7 nodes: 3 good cannot make a quorum of 4; the reasons are typed.
    let printed = invoke(
        &nodes,
        &acquire("{ttl-ms: 5000, retry-count: some(0)}", "some(1000)"),
    )
    .await;
    assert!(printed.starts_with("err(unable-to-acquire("), "{printed}");
    for want in [
        "node: 3, outcome: failed(other(\"malformed reply",
        "node: 4, outcome: failed(other(\"malformed reply",
        "node: 5, outcome: failed(connection(",
        "node: 6, outcome: failed(other(\"REDLOCK_NODES entry 6: rediss:// (TLS)",
    ] {
        assert!(printed.contains(want), "{want} in {printed}");
    }
    // The good nodes were cleaned up after the failed attempt.
    eventually("cleanup on the good nodes", || c.with_key(&k) == 0).await;

    // With 3 good of 5, the lock is taken despite a garbage node.
    let mut nodes = c.urls();
    nodes.extend([garbage.url(), huge.url()]);
    let printed = invoke(&nodes, &acquire("{ttl-ms: 5000}", "some(2000)")).await;
    assert!(printed.starts_with("ok({"), "{printed}");
    assert_eq!(c.holding(&k, &token_of(&printed)), 3);
}

/// The plug's connection set-up: `AUTH user password` and `SELECT db` from
/// the URL, pipelined before the first command; a refused AUTH fails the
/// node's requests with the server's own error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasmtime_cli_authenticates_and_selects_the_database() {
    let n = start_node();
    let _: () = n
        .cmd(&["ACL", "SETUSER", "locker", "on", ">right", "~*", "+@all"])
        .unwrap();
    let good = n.url().replace("redis://", "redis://locker:right@") + "/2";
    let k = key("cli-auth-db");
    let printed = invoke(
        std::slice::from_ref(&good),
        &format!(r#"acquire("{k}", {{ttl-ms: 10000}}, some(2000))"#),
    )
    .await;
    assert!(printed.starts_with("ok({"), "{printed}");
    let token = token_of(&printed);
    let mut db2 = redis::Client::open(good.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let stored: Option<String> = redis::cmd("GET").arg(&k).query(&mut db2).unwrap();
    assert_eq!(stored.as_deref(), Some(token.as_str()), "in database 2");
    let mut db0 = redis::Client::open(good.trim_end_matches("/2"))
        .unwrap()
        .get_connection()
        .unwrap();
    let in_db0: bool = redis::cmd("EXISTS").arg(&k).query(&mut db0).unwrap();
    assert!(!in_db0, "not in database 0");

    let bad = good.replace(":right@", ":wrong@");
    let printed = invoke(
        &[bad],
        &format!(r#"acquire("{k}-2", {{ttl-ms: 1000, retry-count: some(0)}}, some(500))"#),
    )
    .await;
    assert!(
        printed.contains("failed(redis(\"WRONGPASS"),
        "the server's error: {printed}"
    );
    assert!(!printed.contains(":wrong@"), "no password: {printed}");
}

// ---- Node.js (jco) and Python (wasmtime-py) --------------------------------

/// A second-language host: its `cli.mjs` / `cli.py` print the same JSON.
#[derive(Debug, Clone, Copy)]
enum ScriptHost {
    Node,
    Python,
}

impl ScriptHost {
    fn dir(self) -> PathBuf {
        root().join(match self {
            ScriptHost::Node => "hosts/js",
            ScriptHost::Python => "hosts/python",
        })
    }

    /// Prepares the host once per test run (Node: jco transpile).
    fn ready(self) {
        static NODE: OnceLock<()> = OnceLock::new();
        static PYTHON: OnceLock<()> = OnceLock::new();
        match self {
            ScriptHost::Node => NODE.get_or_init(|| {
                let dir = self.dir();
                assert!(
                    dir.join("node_modules/@bytecodealliance/jco").exists(),
                    "hosts/js/node_modules is missing: run ./scripts/setup --for-tests (it runs `npm ci` there)"
                );
                let out = Command::new("npm")
                    .args(["run", "--silent", "build"])
                    .current_dir(&dir)
                    .output()
                    .expect("run npm (Node.js 18+ is needed)");
                assert!(
                    out.status.success(),
                    "jco transpile: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }),
            ScriptHost::Python => PYTHON.get_or_init(|| {
                assert!(
                    self.program().exists(),
                    "target/py is missing: run ./scripts/setup --for-tests (it makes the venv with the \
                     pinned wasmtime package)"
                );
            }),
        };
    }

    fn program(self) -> PathBuf {
        match self {
            ScriptHost::Node => "node".into(),
            ScriptHost::Python => root().join("target/py/bin/python"),
        }
    }

    /// `cli ARGS` with `nodes`: (exit code, printed JSON).
    async fn cli(self, nodes: &[String], args: &[&str]) -> (i32, serde_json::Value) {
        self.ready();
        let script = match self {
            ScriptHost::Node => "cli.mjs",
            ScriptHost::Python => "cli.py",
        };
        let out = tokio::process::Command::new(self.program())
            .arg(self.dir().join(script))
            .args(args)
            .env("REDLOCK_NODES", nodes.join(","))
            .output()
            .await
            .unwrap_or_else(|e| panic!("run {:?}: {e}", self.program()));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let json = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "{self:?} {args:?}: {e}: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), json)
    }
}

/// The host takes a lock the Rust host cannot take, and the reverse; its
/// errors are that language's exceptions, with the WIT kind and per-node
/// outcomes.
async fn script_host_excludes_the_rust_host(host: ScriptHost) {
    let c = Cluster::start(3);
    let nodes = c.urls();
    let rust = rust_host(&c);
    let k = key(&format!("{host:?}-portable"));

    let (code, lock) = host.cli(&nodes, &["acquire", &k, "10000"]).await;
    assert_eq!(code, 0, "{lock}");
    let token = lock["token"].as_str().unwrap().to_owned();
    assert!(lock["validity_ms"].as_u64().unwrap() > 9_000, "{lock}");
    rust_host_is_refused(&c, &rust, &k, &token).await;

    let (code, out) = host.cli(&nodes, &["release", &k, &token]).await;
    assert_eq!((code, &out["released"]), (0, &serde_json::json!(true)));
    let held = rust.acquire(&k, Duration::from_secs(2)).await.unwrap();

    let (code, out) = host.cli(&nodes, &["acquire", &k, "10000", "300"]).await;
    assert_eq!(code, 1, "{out}");
    let e = &out["error"];
    assert_eq!(e["type"], "RedlockError", "{e}");
    assert_eq!(e["native"], true, "an Error / Exception: {e}");
    assert_eq!(e["kind"], "unable-to-acquire", "{e}");
    let refused = e["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["outcome"] == "refused")
        .count();
    assert!(refused >= 2, "a quorum refused: {e}");
    assert!(e["message"].as_str().unwrap().contains("node 0"), "{e}");
    assert_eq!(c.holding(&k, held.token()), 3);

    // A wrong token cannot release the Rust host's lock.
    let (code, out) = host.cli(&nodes, &["release", &k, &"0".repeat(32)]).await;
    assert_eq!(
        (code, &out["error"]["kind"]),
        (1, &"unable-to-release".into())
    );
    assert_eq!(c.holding(&k, held.token()), 3);

    // Bad input is a typed error before any I/O.
    let (code, out) = host.cli(&nodes, &["acquire", &k, "0"]).await;
    assert_eq!(
        (code, &out["error"]["kind"]),
        (1, &"invalid-argument".into())
    );
    // Dead nodes are named, with why (two of three dead: the outcome waits
    // for at least one of them).
    let k2 = format!("{k}-dead");
    let dead = || format!("redis://127.0.0.1:{}", crate::support::free_port());
    let nodes = [nodes[0].clone(), dead(), dead()];
    // A budget that a loaded machine cannot eat before the refusals arrive.
    let (code, out) = host.cli(&nodes, &["acquire", &k2, "1000", "2000"]).await;
    assert_eq!(
        (code, &out["error"]["kind"]),
        (1, &"unable-to-acquire".into())
    );
    let refused = out["error"]["nodes"].as_array().unwrap().iter().any(|n| {
        n["outcome"] == "failed"
            && n["detail"]
                .as_str()
                .is_some_and(|d| d.contains("connection-refused"))
    });
    assert!(refused, "{out}");
    eventually("cleanup after the failed attempts", || c.with_key(&k2) == 0).await;
    rust.release(&held).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_host_locks_exclude_the_rust_host() {
    script_host_excludes_the_rust_host(ScriptHost::Node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_host_locks_exclude_the_rust_host() {
    script_host_excludes_the_rust_host(ScriptHost::Python).await;
}

// ---- a sandboxed plugin -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_runs_its_job_under_the_lock_against_real_nodes() {
    use plugin_host::{PLUGIN_WASM, PluginHost};
    let c = Cluster::start(3);
    let rust = rust_host(&c);
    let ctx = c
        .urls()
        .into_iter()
        .fold(redlock_wasm::RedisNodeCtx::builder(), |b, url| b.node(url))
        .node_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let host = std::sync::Arc::new(PluginHost::new(PLUGIN_WASM, ctx).unwrap());
    let job = key("plugin");
    let k = format!("jobs/{job}");
    let limit = Duration::from_secs(30);

    // While the Rust host holds the job's lock, the plugin is refused, and
    // its error says so.
    let held = rust.acquire(&k, Duration::from_secs(2)).await.unwrap();
    let err = host.run(&job, 1, 10, limit).await.unwrap().unwrap_err();
    assert!(err.contains("is busy"), "{err}");
    // Decided when a quorum refused; the last node may not have answered.
    assert!(err.matches(": refused").count() >= 2, "{err}");
    rust.release(&held).await.unwrap();

    // Two plugin instances at once: both finish, their critical sections
    // do not overlap, and the lock is gone afterwards.
    let run = |host: std::sync::Arc<PluginHost>, job: String| async move {
        host.run(&job, 4, 50, limit).await.unwrap().unwrap()
    };
    let (a, b) = tokio::join!(
        run(host.clone(), job.clone()),
        run(host.clone(), job.clone())
    );
    assert_eq!((a.key.as_str(), b.key.as_str()), (k.as_str(), k.as_str()));
    assert_eq!((a.steps, b.steps), (4, 4));
    let (first, second) = if a.started_at < b.started_at {
        (a, b)
    } else {
        (b, a)
    };
    assert!(
        first.finished_at < second.started_at,
        "critical sections overlap: {first:?} {second:?}"
    );
    eventually("no key left", || c.with_key(&k) == 0).await;

    // Long steps make the plugin extend its lock (TTL 1.2 s, steps of 300
    // ms: before the third, less than half the validity would be left).
    let r = host.run(&job, 3, 300, limit).await.unwrap().unwrap();
    assert!(r.extensions >= 1, "{r:?}");
    eventually("no key left", || c.with_key(&k) == 0).await;

    // Bad input from the host reaches the plugin's typed error.
    let err = host.run("", 1, 1, limit).await.unwrap().unwrap_err();
    assert!(err.contains("job name"), "{err}");
}

// ---- the wasmtime CLI with nothing but loopback ------------------------------

/// A network namespace of our own (`unshare -n`), with only `lo`, kept alive
/// by a sleeping process; commands run in it with `nsenter`. Needs root (CI
/// and this project's machines run the suite as root).
struct LoopbackOnly {
    holder: std::process::Child,
    children: Vec<std::process::Child>,
}

impl LoopbackOnly {
    fn new() -> Self {
        let holder = Command::new("unshare")
            .args(["-n", "sleep", "600"])
            .spawn()
            .expect("unshare (util-linux) is needed");
        let ns = LoopbackOnly {
            holder,
            children: Vec::new(),
        };
        // `unshare` execs `sleep` once the namespace exists.
        let pid = ns.holder.id();
        let target = format!("/proc/{pid}/ns/net");
        let start = std::time::Instant::now();
        while std::fs::read_link(&target).ok() == std::fs::read_link("/proc/self/ns/net").ok() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no network namespace: `unshare -n` needs root (CAP_SYS_ADMIN)"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let up = ns.cmd("ip").args(["link", "set", "lo", "up"]).status();
        assert!(up.is_ok_and(|s| s.success()), "ip link set lo up");
        ns
    }

    fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-n")
            .arg(program);
        c
    }

    fn redis(&mut self, port: u16, dir: &Path) {
        let child = self
            .cmd(redlock_wasm::local::binary())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        self.children.push(child);
        let start = std::time::Instant::now();
        loop {
            let probe = self
                .cmd("bash")
                .arg("-c")
                .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}"))
                .stderr(std::process::Stdio::null())
                .status();
            if probe.is_ok_and(|s| s.success()) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "redis on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LoopbackOnly {
    fn drop(&mut self) {
        for c in self
            .children
            .iter_mut()
            .chain(std::iter::once(&mut self.holder))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The CLI in a network namespace whose only interface is loopback: the
/// component reaches the nodes started there and nothing else (not even
/// the root namespace's loopback), and its lock excludes the Rust host's
/// (`redlock`, run in the same namespace).
#[test]
fn wasmtime_cli_with_only_loopback_reachable() {
    let outside = Cluster::start(1);
    let mut ns = LoopbackOnly::new();
    let links = ns.cmd("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
    assert!(links.contains(": lo:"), "{links}");

    let dir = tempfile::tempdir().unwrap();
    let ports = [7001, 7002, 7003];
    for p in ports {
        ns.redis(p, dir.path());
    }
    let nodes: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    let k = key("netns");
    let wasmtime = |nodes: &[String], call: &str| {
        let out = wasmtime_invoke(ns.cmd(wasmtime_cli()), nodes, call)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let printed = wasmtime(
        &nodes,
        &format!(r#"acquire("{k}", {{ttl-ms: 10000}}, some(2000))"#),
    );
    assert!(printed.starts_with("ok({"), "{printed}");

    let rust = ns
        .cmd(env!("CARGO_BIN_EXE_redlock"))
        .args(["acquire", "--key", &k, "--ttl", "10s", "--wait", "300ms"])
        .env("REDLOCK_NODES", nodes.join(","))
        .output()
        .unwrap();
    assert_eq!(rust.status.code(), Some(75), "{rust:?}");

    // A node outside the namespace (the root namespace's loopback) is out of
    // reach: connection refused, inside.
    let printed = wasmtime(
        &outside.urls(),
        &format!(r#"acquire("{k}", {{ttl-ms: 1000, retry-count: some(0)}}, some(500))"#),
    );
    assert!(
        printed.contains("failed(connection(\"connect to 127.0.0.1:"),
        "{printed}"
    );
    assert_eq!(outside.with_key(&k), 0);
}

/// Three languages on one key at once: the Rust host, Node.js and Python
/// each take the lock 15 times and, holding it, read a counter in a file,
/// pause 2 ms and write it + 1. Two holders at once would lose an update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_node_and_python_holders_never_overlap() {
    const N: usize = 15;
    let c = Cluster::start(3);
    let k = key("three-languages");
    let dir = tempfile::tempdir().unwrap();
    let witness = dir.path().join("counter");
    std::fs::write(&witness, "0").unwrap();
    let bump = |w: &Path| {
        let n: u64 = std::fs::read_to_string(w).unwrap().trim().parse().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        std::fs::write(w, (n + 1).to_string()).unwrap();
    };

    let spawn = |host: ScriptHost| {
        host.ready();
        let script = match host {
            ScriptHost::Node => "cli.mjs",
            ScriptHost::Python => "cli.py",
        };
        tokio::process::Command::new(host.program())
            .arg(host.dir().join(script))
            .args(["cycle", &k, &N.to_string()])
            .arg(&witness)
            .env("REDLOCK_NODES", c.urls().join(","))
            .output()
    };
    let node = tokio::spawn(spawn(ScriptHost::Node));
    let python = tokio::spawn(spawn(ScriptHost::Python));

    let rust = Redlock::builder()
        .nodes(c.urls())
        .ttl(Duration::from_secs(5))
        .node_timeout(Duration::from_millis(500))
        .retry_delay(Duration::from_millis(5))
        .retry_jitter(Duration::from_millis(10))
        .build()
        .unwrap();
    for _ in 0..N {
        let lock = rust.acquire(&k, Duration::from_secs(20)).await.unwrap();
        bump(&witness);
        rust.release(&lock).await.unwrap();
    }
    for (name, out) in [("node", node.await), ("python", python.await)] {
        let out = out.unwrap().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["pairs"], N, "{name}: {v}");
    }
    let total: usize = std::fs::read_to_string(&witness)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(total, 3 * N, "updates lost: holders overlapped");
    eventually("no key left", || c.with_key(&k) == 0).await;
}

// ---- the portable component in an embedder of our own, under node faults ----

/// The portable component in one long-lived instance, embedded with
/// wasmtime-wasi: TCP allowed to loopback addresses only (the check every
/// connect passes through), nothing else granted. Calls go through dynamic
/// `Val`s, as a host in another language would see them.
struct Portable {
    store: wasmtime::Store<PortableCtx>,
    acquire: wasmtime::component::Func,
    release: wasmtime::component::Func,
}

struct PortableCtx {
    wasi: wasmtime_wasi::WasiCtx,
    table: wasmtime::component::ResourceTable,
}

impl wasmtime_wasi::WasiView for PortableCtx {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        wasmtime_wasi::WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Portable {
    async fn new(nodes: &[String]) -> Self {
        use wasmtime::component::{Linker, ResourceTable};
        let engine = Engine::new(&Config::new()).unwrap();
        let component = Component::from_file(&engine, PORTABLE_WASM).unwrap();
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .env("REDLOCK_NODES", nodes.join(","))
            .allow_tcp(true)
            .socket_addr_check(|addr, used| {
                use wasmtime_wasi::sockets::SocketAddrUse;
                let ok = match used {
                    // A connect binds an ephemeral local port implicitly.
                    SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    SocketAddrUse::TcpConnect => addr.ip().is_loopback(),
                    _ => false,
                };
                Box::pin(async move { ok })
            })
            .build();
        let ctx = PortableCtx {
            wasi,
            table: ResourceTable::new(),
        };
        let mut store = wasmtime::Store::new(&engine, ctx);
        let instance = linker
            .instantiate_async(&mut store, &component)
            .await
            .unwrap();
        let iface = instance
            .get_export_index(&mut store, None, "redlock:core/redlock@0.1.0")
            .unwrap();
        let mut func = |name: &str| {
            let idx = instance
                .get_export_index(&mut store, Some(&iface), name)
                .unwrap();
            instance.get_func(&mut store, idx).unwrap()
        };
        let (acquire, release) = (func("acquire"), func("release"));
        Portable {
            store,
            acquire,
            release,
        }
    }

    /// `Ok(lock record)` or `Err(error variant)`.
    async fn call(&mut self, f: wasmtime::component::Func, args: &[Val]) -> Result<Val, Val> {
        let mut out = [Val::Bool(false)];
        f.call_async(&mut self.store, args, &mut out).await.unwrap();
        match std::mem::replace(&mut out[0], Val::Bool(false)) {
            Val::Result(Ok(v)) => Ok(v.map_or(Val::Tuple(Vec::new()), |b| *b)),
            Val::Result(Err(e)) => Err(*e.expect("the error variant")),
            other => panic!("not a result: {other:?}"),
        }
    }

    async fn acquire(&mut self, key: &str, ttl_ms: u64, budget_ms: u64) -> Result<Val, Val> {
        let options = Val::Record(vec![
            ("ttl-ms".into(), Val::U64(ttl_ms)),
            (
                "retry-count".into(),
                Val::Option(Some(Box::new(Val::U32(0)))),
            ),
            ("retry-delay-ms".into(), Val::Option(None)),
            ("retry-jitter-ms".into(), Val::Option(None)),
        ]);
        let budget = Val::Option(Some(Box::new(Val::U64(budget_ms))));
        let f = self.acquire;
        self.call(f, &[Val::String(key.into()), options, budget])
            .await
    }

    async fn release(&mut self, lock: Val) -> Result<Val, Val> {
        let budget = Val::Option(Some(Box::new(Val::U64(1000))));
        let f = self.release;
        self.call(f, &[lock, budget]).await
    }
}

use wasmtime::component::Val;

/// The token of a lock record.
fn token_in(lock: &Val) -> String {
    let Val::Record(fields) = lock else {
        panic!("not a lock: {lock:?}")
    };
    match fields.iter().find(|(n, _)| n == "token") {
        Some((_, Val::String(t))) => t.clone(),
        _ => panic!("no token: {lock:?}"),
    }
}

/// One instance lives through a node killed, restarted on its port, and
/// paused: the quorum decides meanwhile, the plug reconnects by itself, and
/// a node outside loopback is refused by the embedder before any traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portable_component_lives_through_node_faults() {
    let mut c = Cluster::start(3);
    let mut p = Portable::new(&c.urls()).await;
    let k = key("portable-faults");
    for _ in 0..20 {
        let lock = p.acquire(&k, 10_000, 2_000).await.unwrap();
        p.release(lock).await.unwrap();
    }

    // Every node closes our idle connections (as Redis's `timeout` does),
    // just before the next call: the plug reads before reuse, and a request
    // that still met a dead connection is sent once more on a new one.
    for n in &c.nodes {
        let killed: i64 = n
            .cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            .unwrap();
        assert!(killed >= 1, "our connection was open");
    }
    // (One attempt only: without both, every SET would fail.)
    let lock = p.acquire(&k, 10_000, 2_000).await.expect("reconnected");
    let token = token_in(&lock);
    // A quorum at least: the call returns once two granted.
    eventually("a quorum after reconnecting", || c.holding(&k, &token) >= 2).await;
    p.release(lock).await.unwrap();

    // Node 0 dies: two of three still grant and release.
    c.nodes[0].kill();
    let lock = p.acquire(&k, 10_000, 2_000).await.expect("2 of 3 grant");
    assert_eq!(c.holding(&k, &token_in(&lock)), 2);
    p.release(lock).await.expect("2 of 3 release");

    // Back on the same port: the broken connection is replaced at the next
    // call, and node 0 holds the locks again.
    c.nodes[0].restart().unwrap();
    let mut all_three = false;
    for _ in 0..50 {
        let lock = p.acquire(&k, 10_000, 2_000).await.unwrap();
        all_three = c.holding(&k, &token_in(&lock)) == 3 || {
            tokio::time::sleep(Duration::from_millis(20)).await;
            c.holding(&k, &token_in(&lock)) == 3
        };
        p.release(lock).await.unwrap();
        if all_three {
            break;
        }
    }
    assert!(all_three, "node 0 never came back into use");

    // Node 1 paused (accepts, never answers): decided by the other two,
    // long before the budget.
    c.nodes[1].pause().unwrap();
    let start = std::time::Instant::now();
    let lock = p.acquire(&k, 10_000, 5_000).await.expect("2 of 3 grant");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    p.release(lock).await.expect("2 of 3 release");
    c.nodes[1].resume().unwrap();
    eventually("no key left", || c.with_key(&k) == 0).await;

    // Outside loopback: refused by the embedder's address check.
    let mut outside = Portable::new(&["redis://192.0.2.1:6379".into()]).await;
    let err = outside.acquire(&k, 1_000, 300).await.unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("access-denied"), "{text}");
}
