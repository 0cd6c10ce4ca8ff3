//! `redlock status`: per node, reachable or not, who holds the key, for how long.

use std::collections::HashMap;
use std::time::Duration;

use crate::args::StatusArgs;
use crate::exit::{self, Exit, Failure};

/// Tokens are shown shortened: enough to tell holders apart, not to steal.
pub fn short(token: &str) -> String {
    let head: String = token.chars().take(8).collect();
    if token.chars().count() > 8 {
        format!("{head}…")
    } else {
        head
    }
}

pub async fn status(a: StatusArgs) -> Result<Exit, Failure> {
    let r = crate::manager(&a.nodes, Duration::from_secs(1))?;
    let nodes = r.nodes();
    let (states, shards) = futures::join!(nodes.inspect(&a.key), nodes.shards(&a.key));
    let n = states.len();
    let quorum = n / 2 + 1;
    println!("key {:?} on {n} nodes (quorum {quorum})", a.key);
    println!("  {:<28} {:<12} {:<10} ttl", "node", "state", "holder");
    let mut holders: HashMap<&str, usize> = HashMap::new();
    let mut reachable = 0;
    for ((addr, state), shard) in nodes.nodes().zip(&states).zip(&shards) {
        // A Redis Cluster member: which shard holds the key.
        let shard = match shard {
            Some(Ok(s)) => format!("  ({s})"),
            Some(Err(e)) => format!("  (shard unknown: {e})"),
            None => String::new(),
        };
        match state {
            Ok(s) => {
                reachable += 1;
                let holder = s.holder.as_deref().map_or_else(|| "-".into(), short);
                let ttl = s
                    .ttl
                    .map_or_else(|| "-".into(), |t| format!("{:.1}s", t.as_secs_f64()));
                if let Some(h) = &s.holder {
                    *holders.entry(h.as_str()).or_default() += 1;
                }
                println!(
                    "  {:<28} {:<12} {:<10} {ttl}{shard}",
                    addr.to_string(),
                    "reachable",
                    holder
                );
            }
            Err(e) => println!(
                "  {:<28} {:<12} {e}{shard}",
                addr.to_string(),
                "unreachable"
            ),
        }
    }
    match holders.iter().max_by_key(|(_, c)| **c) {
        Some((token, &count)) if count >= quorum => println!(
            "held by a quorum: yes (token {}, on {count} of {n} nodes)",
            short(token)
        ),
        Some((token, &count)) => println!(
            "held by a quorum: no (most: token {} on {count} of {n} nodes)",
            short(token)
        ),
        None => println!("held by a quorum: no (free on every reachable node)"),
    }
    if reachable < quorum {
        eprintln!("redlock: only {reachable} of {n} nodes reachable; a lock needs {quorum}");
        return Ok(Exit(exit::FAILED));
    }
    Ok(Exit(0))
}
