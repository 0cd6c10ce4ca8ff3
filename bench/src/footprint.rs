//! Measured once per run, in processes of their own: the host's memory while
//! it holds 10,000 locks, and a cold `redlock run -- true` against a bare
//! `true`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use redlock_wasm::Redlock;

use crate::measure::median;
use crate::report::Round;

/// The memory measurement, in a fresh process (`redlock-bench rss`).
pub fn rss(urls: &[String]) -> Result<Round> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("rss");
    for u in urls {
        cmd.arg("--node").arg(u);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("rss child failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(["rss_before_mib", "rss_held_mib", "peak_mib"]
        .into_iter()
        .map(|k| (k.to_owned(), v[k].as_f64().unwrap_or(f64::NAN)))
        .collect())
}

/// The child process of the memory measurement.
pub async fn rss_child(urls: &[String], locks: usize) -> Result<()> {
    let r = Redlock::builder()
        .nodes(urls.iter().cloned())
        .ttl(Duration::from_secs(60))
        .build()?;
    let first = r.acquire("bench:rss:warm", Duration::from_secs(1)).await?;
    r.release(&first).await?;
    let before = status_kib("VmRSS:");
    let mut held = Vec::with_capacity(locks);
    for i in 0..locks {
        held.push(
            r.acquire(&format!("bench:rss:{i}"), Duration::from_secs(1))
                .await?,
        );
    }
    let during = status_kib("VmRSS:");
    let peak = status_kib("VmHWM:");
    for l in &held {
        r.release(l).await?;
    }
    r.settle(Duration::from_secs(2)).await;
    println!(
        "{}",
        serde_json::json!({
            "rss_before_mib": before / 1024.0,
            "rss_held_mib": during / 1024.0,
            "peak_mib": peak / 1024.0,
        })
    );
    Ok(())
}

fn status_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(f64::NAN)
}

/// A cold `redlock run -- true` against a bare `true`, 21 runs each, when
/// the `redlock` binary sits next to this one.
pub fn cold_cli(urls: &[String]) -> Result<Round> {
    let mut m = Round::new();
    let redlock = std::env::current_exe()?.with_file_name("redlock");
    if !redlock.exists() {
        eprintln!(
            "cold CLI run skipped: {} not built (cargo build --release -p redlock-wasm --features cli --bin redlock)",
            redlock.display()
        );
        return Ok(m);
    }
    let time = |cmd: &mut Command| -> Result<f64> {
        let t = Instant::now();
        let ok = cmd.output()?.status.success();
        if !ok {
            bail!("{cmd:?} failed");
        }
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let (mut bare, mut run) = (Vec::new(), Vec::new());
    for i in 0..21 {
        bare.push(time(&mut Command::new("true"))?);
        let mut c = Command::new(&redlock);
        c.env("REDLOCK_NODES", urls.join(",")).args([
            "run",
            "--key",
            &format!("bench:cli:{i}"),
            "--",
            "true",
        ]);
        run.push(time(&mut c)?);
    }
    m.insert("cli_true_ms".into(), median(&bare));
    m.insert("cli_run_ms".into(), median(&run));
    Ok(m)
}
