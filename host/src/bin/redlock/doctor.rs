//! `redlock doctor`: does the deployment meet Redlock's assumptions? One
//! row per node, the findings that need attention, the restart rule, the
//! verdict; or the same as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use redlock_wasm::{Check, DeploymentReport, Level, NodeReport, Verdict};

use crate::args::DoctorArgs;
use crate::exit::{self, Exit, Failure};

pub async fn doctor(a: DoctorArgs) -> Result<Exit, Failure> {
    let r = crate::manager(&a.nodes, Duration::from_secs(1))?;
    let report = r.check_within(a.timeout).await;
    if a.json {
        println!("{}", json(&report));
    } else {
        print!("{}", render(&report));
    }
    Ok(Exit(code(report.verdict)))
}

/// The exit code of a verdict: 0, 3 (warnings) or 2 (unusable).
pub fn code(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Ok => 0,
        Verdict::Warnings => exit::WARNINGS,
        // Unusable, and any verdict a later library adds: not all good.
        _ => exit::UNUSABLE,
    }
}

/// A table cell: the summary, marked when it is not ok.
fn cell(level: Level, summary: &str) -> String {
    match level {
        Level::Ok => summary.to_owned(),
        Level::Unknown => "?".to_owned(),
        Level::Warning => format!("! {summary}"),
        Level::Unusable => format!("x {summary}"),
    }
}

/// The report as text for a terminal.
pub fn render(report: &DeploymentReport) -> String {
    let mut out = String::new();
    let n = report.nodes.len();
    let _ = writeln!(out, "{n} nodes, quorum {}", report.quorum);

    // One row per node, one column per check; "-" where a check was not made.
    let mut rows: Vec<Vec<String>> = vec![
        std::iter::once("node".to_owned())
            .chain(Check::ALL.iter().map(|c| c.name().to_owned()))
            .collect(),
    ];
    // A cluster member's row sums up its shards; a row per shard follows.
    let row = |label: String, node: &NodeReport| {
        std::iter::once(label)
            .chain(Check::ALL.iter().map(|&c| {
                node.finding(c)
                    .map_or_else(|| "-".to_owned(), |f| cell(f.level, &f.summary))
            }))
            .collect::<Vec<_>>()
    };
    for node in &report.nodes {
        rows.push(row(node.addr.to_string(), node));
        for shard in &node.shards {
            let slots = shard.slots.as_deref().unwrap_or("?");
            rows.push(row(format!("  shard {} [{slots}]", shard.addr), shard));
        }
    }
    let widths: Vec<usize> = (0..=Check::ALL.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (c, w) in row.iter().zip(&widths) {
            let _ = write!(line, "  {c:<w$}");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    if report.problems().next().is_some() {
        let _ = writeln!(out, "  (! warning, x unusable, ? unknown: see below)");
        out.push('\n');
        for (node, f) in report.problems() {
            let _ = writeln!(out, "{} {} ({}): {}", node.addr, f.what, f.level, f.detail);
        }
    }

    // What a restart means for each node's locks, grouped: the rule the
    // operator must follow, which the check itself cannot see.
    let mut rules: Vec<(&str, Vec<String>)> = Vec::new();
    for node in &report.nodes {
        if let Some(f) = node.finding(Check::Persistence)
            && f.level == Level::Ok
        {
            match rules.iter_mut().find(|(d, _)| *d == f.detail) {
                Some((_, addrs)) => addrs.push(node.addr.to_string()),
                None => rules.push((&f.detail, vec![node.addr.to_string()])),
            }
        }
    }
    if !rules.is_empty() {
        out.push('\n');
        for (detail, addrs) in rules {
            let _ = writeln!(out, "restarts ({}): {detail}", addrs.join(", "));
        }
    }

    out.push('\n');
    for reason in &report.reasons {
        let _ = writeln!(out, "{reason}");
    }
    let _ = writeln!(
        out,
        "verdict: {} ({} of {n} nodes usable, quorum {})",
        report.verdict, report.usable, report.quorum
    );
    out
}

/// The report as one JSON object.
pub fn json(report: &DeploymentReport) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = report.nodes.iter().map(node_json).collect();
    serde_json::json!({
        "verdict": report.verdict.name(),
        "quorum": report.quorum,
        "usable": report.usable,
        "reasons": report.reasons,
        "nodes": nodes,
    })
}

/// One node (or shard) as JSON; a cluster member carries its shards.
fn node_json(node: &NodeReport) -> serde_json::Value {
    let findings: Vec<serde_json::Value> = node
        .findings
        .iter()
        .map(|f| {
            serde_json::json!({
                "check": f.what.name(),
                "level": f.level.name(),
                "summary": f.summary,
                "detail": f.detail,
            })
        })
        .collect();
    let mut j = serde_json::json!({
        "node": node.addr.to_string(),
        "usable": node.usable,
        "latency_ms": node.latency.map(|d| d.as_secs_f64() * 1e3),
        "clock_offset_ms": node.clock_offset_us.map(|us| us as f64 / 1e3),
        "version": node.version,
        "findings": findings,
    });
    if let Some(slots) = &node.slots {
        j["slots"] = slots.as_str().into();
    }
    if !node.shards.is_empty() {
        j["shards"] = node.shards.iter().map(node_json).collect();
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each verdict has its own exit code, and warnings' code is no other
    /// subcommand's. Control: WARNINGS = 1 failed.
    #[test]
    fn verdicts_map_to_documented_codes() {
        assert_eq!(code(Verdict::Ok), 0);
        assert_eq!(code(Verdict::Warnings), 3);
        assert_eq!(code(Verdict::Unusable), 2);
        for taken in [
            exit::FAILED,
            exit::USAGE,
            exit::NOT_ACQUIRED,
            exit::LOST,
            exit::SKIPPED,
            exit::NOT_EXECUTABLE,
            exit::NOT_FOUND,
        ] {
            assert_ne!(exit::WARNINGS, taken);
        }
    }

    /// In-memory nodes render as a table with their finding explained, and
    /// as JSON with the same verdict. Control: without the findings section
    /// the explanation was missing.
    #[tokio::test]
    async fn renders_table_and_json() {
        let r = redlock_wasm::RedisNodeCtx::builder()
            .in_memory(3)
            .build()
            .unwrap()
            .check(Duration::from_millis(100))
            .await;
        let text = render(&r);
        assert!(text.starts_with("3 nodes, quorum 2\n"), "{text}");
        assert!(text.contains("\n  in-memory-0:6379  "), "{text}");
        assert!(text.contains("! in-memory"), "{text}");
        assert!(
            text.contains("reachable (warning): in-memory: not a Redis server"),
            "{text}"
        );
        assert!(
            text.ends_with("verdict: warnings (3 of 3 nodes usable, quorum 2)\n"),
            "{text}"
        );
        let j = json(&r);
        assert_eq!(j["verdict"], "warnings");
        assert_eq!(j["nodes"][0]["findings"][0]["check"], "reachable");
        assert_eq!(j["nodes"][0]["findings"][0]["level"], "warning");
    }
}
