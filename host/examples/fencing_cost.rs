//! What fencing costs: acquire + release pairs on local Redis servers,
//! without a fence, with one (the nodes' counters agree: one round trip),
//! and with one whose commit round is forced (one node's counter is pushed
//! ahead before every acquire, as after a node missed grants: two round
//! trips). Five rounds whose order rotates; per row the median of the
//! rounds' p50 and p99, and the p50 ratio to the row without a fence.
//!
//! ```sh
//! cargo run --release -p redlock-wasm --features local --example fencing_cost -- 5 1000
//! ```
//! (arguments: nodes, pairs per row and round; defaults 5 and 1000)

use std::time::{Duration, Instant};

use redlock_wasm::local::LocalCluster;
use redlock_wasm::{AcquireOptions, Redlock};

#[derive(Clone, Copy, PartialEq)]
enum Row {
    Plain,
    Fenced,
    Committed,
}

impl Row {
    fn name(self) -> &'static str {
        match self {
            Row::Plain => "acquire + release, no fence",
            Row::Fenced => "acquire + release, fenced (counters agree)",
            Row::Committed => "acquire + release, fenced, commit round forced",
        }
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q) as usize]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(5), |a| a.parse())?;
    let pairs: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let cluster = LocalCluster::start(n)?;
    let r = Redlock::builder()
        .nodes(cluster.urls())
        .ttl(Duration::from_secs(10))
        .build()?;
    r.connect().await;
    let mut ahead = redis::Client::open(cluster.urls()[0].as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let rows = [Row::Plain, Row::Fenced, Row::Committed];
    let mut p50 = vec![Vec::new(); rows.len()];
    let mut p99 = vec![Vec::new(); rows.len()];
    for round in 0..5 {
        for i in 0..rows.len() {
            let at = (i + round) % rows.len();
            let row = rows[at];
            let key = format!("fencing-cost:{at}");
            let opts = || AcquireOptions::new().fencing(row != Row::Plain);
            // Warm-up: connections, instances, counters.
            for _ in 0..50 {
                let lock = r.acquire_with(&key, Duration::from_secs(1), opts()).await?;
                r.release(&lock).await?;
            }
            let mut times = Vec::with_capacity(pairs);
            for _ in 0..pairs {
                if row == Row::Committed {
                    let _: i64 = redis::cmd("INCRBY")
                        .arg(format!("{key}:fence"))
                        .arg(1_000)
                        .query_async(&mut ahead)
                        .await?;
                }
                let t = Instant::now();
                let lock = r.acquire_with(&key, Duration::from_secs(1), opts()).await?;
                r.release(&lock).await?;
                times.push(t.elapsed());
            }
            times.sort_unstable();
            p50[at].push(quantile(&times, 0.5));
            p99[at].push(quantile(&times, 0.99));
        }
    }
    let base = median(p50[0].clone()).as_secs_f64();
    println!("{n} local nodes, {pairs} pairs per row and round, 5 rounds (medians)");
    println!("| row | p50 | p99 | p50 vs no fence |");
    println!("|---|---|---|---|");
    for (i, row) in rows.iter().enumerate() {
        let (a, b) = (median(p50[i].clone()), median(p99[i].clone()));
        println!(
            "| {} | {:.3} ms | {:.3} ms | {:.2}x |",
            row.name(),
            a.as_secs_f64() * 1e3,
            b.as_secs_f64() * 1e3,
            a.as_secs_f64() / base
        );
    }
    r.settle(Duration::from_secs(1)).await;
    Ok(())
}
