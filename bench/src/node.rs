//! node-redlock, run by Node.js from `bench/node-redlock.mjs`, when `node`
//! and `npm` are installed. Its packages go to `target/bench-node`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct NodeResult {
    pub samples_us: Vec<f64>,
    pub throughput: BTreeMap<String, f64>,
    pub contended: f64,
}

/// Installs node-redlock and ioredis once; `None` (with the reason) when
/// Node.js is not there.
pub fn prepare(root: &Path) -> Result<Option<PathBuf>> {
    if Command::new("node").arg("--version").output().is_err() {
        return Ok(None);
    }
    let dir = root.join("target").join("bench-node");
    std::fs::create_dir_all(&dir)?;
    if !dir.join("node_modules").join("redlock").exists() {
        eprintln!("installing node-redlock and ioredis into {}", dir.display());
        std::fs::write(
            dir.join("package.json"),
            r#"{"private":true,"type":"module"}"#,
        )?;
        let ok = Command::new("npm")
            .args([
                "install",
                "--silent",
                "--no-audit",
                "--no-fund",
                "redlock@5.0.0-beta.2",
                "ioredis@5",
            ])
            .current_dir(&dir)
            .status()
            .context("run npm")?
            .success();
        if !ok {
            bail!("npm install failed");
        }
    }
    std::fs::copy(
        root.join("bench").join("node-redlock.mjs"),
        dir.join("node-redlock.mjs"),
    )?;
    Ok(Some(dir))
}

pub fn run(
    dir: &Path,
    urls: &[String],
    iters: usize,
    clients: &[usize],
    secs: f64,
    tag: &str,
) -> Result<NodeResult> {
    let cfg = serde_json::json!({ "urls": urls, "iters": iters, "clients": clients, "secs": secs, "tag": tag });
    let out = Command::new("node")
        .arg(dir.join("node-redlock.mjs"))
        .arg(cfg.to_string())
        .current_dir(dir)
        .output()
        .context("run node")?;
    if !out.status.success() {
        bail!(
            "node-redlock bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parse node-redlock output")
}
