//! node-redlock in a Node.js child process that runs `bench/node-redlock.mjs`
//! and answers one JSON request per line, so that the Rust side orders the
//! contenders and sets the faults while node-redlock runs the same loops as
//! the others. The child's I/O is async: a fault proxy or a timer in this
//! process keeps running while node-redlock works.
//!
//! Its packages come from `bench/package.json` and `bench/package-lock.json`
//! (exact versions), installed with `npm ci` into `target/bench-node`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

use crate::contenders::Retry;

/// Installs the pinned packages once (again when the lockfile changes);
/// `None` when Node.js or npm is not there.
pub fn prepare(root: &Path) -> Result<Option<PathBuf>> {
    let has = |exe: &str| {
        std::process::Command::new(exe)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("node") || !has("npm") {
        return Ok(None);
    }
    let src = root.join("bench");
    let dir = root.join("target").join("bench-node");
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::read(src.join("package-lock.json"))?;
    let installed = std::fs::read(dir.join("package-lock.json")).ok();
    if installed.as_deref() != Some(&lock[..]) || !dir.join("node_modules/redlock").exists() {
        eprintln!(
            "installing node-redlock's pinned packages into {}",
            dir.display()
        );
        std::fs::copy(src.join("package.json"), dir.join("package.json"))?;
        std::fs::write(dir.join("package-lock.json"), &lock)?;
        let ok = std::process::Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .context("run npm ci")?
            .success();
        if !ok {
            // Leave no lockfile behind, so the next run tries again.
            let _ = std::fs::remove_file(dir.join("package-lock.json"));
            bail!("npm ci failed in {}", dir.display());
        }
    }
    std::fs::copy(src.join("node-redlock.mjs"), dir.join("node-redlock.mjs"))?;
    Ok(Some(dir))
}

/// Uncontended pairs measured in the child.
#[derive(Debug, Deserialize)]
pub struct NodeLatency {
    pub samples_us: Vec<f64>,
    pub cpu_us: f64,
    pub failed: usize,
    pub hung: bool,
}

/// A throughput run measured in the child.
#[derive(Debug, Deserialize)]
pub struct NodeThroughput {
    pub pairs: u64,
    pub secs: f64,
    pub cpu_us: f64,
}

struct Io {
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// The running child. Requests take turns: one at a time.
pub struct NodeChild {
    io: Mutex<Io>,
    _child: Child,
    next_id: std::cell::Cell<u64>,
}

impl NodeChild {
    pub async fn start(dir: &Path) -> Result<Self> {
        let mut child = Command::new("node")
            .arg(dir.join("node-redlock.mjs"))
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("start node")?;
        let stdin = child.stdin.take().context("node's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("node's stdout")?).lines();
        Ok(NodeChild {
            io: Mutex::new(Io { stdin, stdout }),
            _child: child,
            next_id: std::cell::Cell::new(0),
        })
    }

    /// Sends one request and waits at most `within` for its answer.
    async fn call(&self, req: Value, within: Duration) -> Result<Value> {
        let mut io = self.io.lock().await;
        let exchange = async {
            io.stdin.write_all(format!("{req}\n").as_bytes()).await?;
            io.stdin.flush().await?;
            let line = io
                .stdout
                .next_line()
                .await?
                .context("node-redlock's process ended")?;
            let v: Value = serde_json::from_str(&line).context("node-redlock's answer")?;
            if let Some(e) = v.get("error") {
                bail!("node-redlock: {e}");
            }
            anyhow::Ok(v)
        };
        tokio::time::timeout(within, exchange)
            .await
            .with_context(|| format!("node-redlock gave no answer in {within:?} to {req}"))?
    }

    /// A Redlock over `urls`, with node-redlock's defaults or `retry`.
    pub async fn open(&self, urls: &[String], retry: Retry) -> Result<u64> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let retry = match retry {
            Retry::Defaults => Value::Null,
            Retry::Same(p) => {
                // node-redlock pauses delay +- jitter; the same policy's pause
                // is uniform on 0 ..= max: delay = jitter = max / 2.
                let half = p.max_pause.as_millis() as u64 / 2;
                json!({ "count": p.attempts - 1, "delay": half, "jitter": half })
            }
        };
        self.call(
            json!({ "op": "open", "id": id, "urls": urls, "retry": retry }),
            Duration::from_secs(10),
        )
        .await?;
        Ok(id)
    }

    pub async fn warm(&self, id: u64, secs: f64) -> Result<()> {
        self.call(
            json!({ "op": "warm", "id": id, "secs": secs }),
            Duration::from_secs_f64(secs + 30.0),
        )
        .await?;
        Ok(())
    }

    pub async fn latency(
        &self,
        id: u64,
        tag: &str,
        iters: usize,
        max_secs: Option<f64>,
        hang: Duration,
    ) -> Result<NodeLatency> {
        // The child bounds each pair by `hang`; this bound is for the child.
        let within = Duration::from_secs_f64(max_secs.unwrap_or(60.0) + 30.0) + hang * 3;
        let v = self
            .call(
                json!({ "op": "latency", "id": id, "tag": tag, "iters": iters,
                        "max_secs": max_secs, "hang_ms": hang.as_millis() as u64 }),
                within,
            )
            .await?;
        Ok(serde_json::from_value(v)?)
    }

    pub async fn throughput(
        &self,
        id: u64,
        tag: &str,
        clients: usize,
        secs: f64,
        one_key: bool,
    ) -> Result<NodeThroughput> {
        let v = self
            .call(
                json!({ "op": "throughput", "id": id, "tag": tag, "clients": clients,
                        "secs": secs, "one_key": one_key }),
                Duration::from_secs_f64(secs + 30.0),
            )
            .await?;
        Ok(serde_json::from_value(v)?)
    }

    pub async fn close(&self, id: u64) -> Result<()> {
        self.call(json!({ "op": "close", "id": id }), Duration::from_secs(10))
            .await?;
        Ok(())
    }
}
