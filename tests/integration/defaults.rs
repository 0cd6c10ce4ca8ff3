//! The README's "### Defaults" table, row by row, against what the code
//! does when nothing is configured.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use redlock_wasm::{AcquireOptions, Error, Lock, NodeError, Outcome, Redlock};

use crate::sandbox::HOSTILE;
use crate::support::{Cluster, Inspect, key};

/// The "### Defaults" table of README.md: setting -> documented default.
fn documented_defaults() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("read README.md");
    let (_, section) = readme
        .split_once("\n### Defaults\n")
        .expect("README.md has a \"### Defaults\" section");
    let mut rows = BTreeMap::new();
    for line in section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, setting, default, _why, _] = cells[..] else {
            panic!("not a row of setting | default | why: {line}")
        };
        rows.insert(setting.to_owned(), default.to_owned());
    }
    rows
}

/// "50 ms", "1 s", "24 h".
fn duration(text: &str) -> Duration {
    let (n, unit) = text.trim().split_once(' ').unwrap_or((text, ""));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("a duration: {text:?}"));
    match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "h" => Duration::from_secs(n * 3600),
        _ => panic!("a duration in ms, s or h: {text:?}"),
    }
}

/// The number a cell starts with ("10 in-flight requests per manager").
fn leading(text: &str) -> u64 {
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("starts with a number: {text:?}"))
}

/// Strips a documented prefix/suffix or fails naming the cell.
fn strip<'a>(text: &'a str, prefix: &str, suffix: &str) -> &'a str {
    text.strip_prefix(prefix)
        .and_then(|t| t.strip_suffix(suffix))
        .unwrap_or_else(|| panic!("{text:?} is not {prefix:?}...{suffix:?}"))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap()
}

/// Three loopback ports that accept connections and never answer.
fn silent_nodes() -> (Vec<TcpListener>, Vec<String>) {
    let listeners: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let urls = listeners
        .iter()
        .map(|l| format!("redis://{}", l.local_addr().unwrap()))
        .collect();
    (listeners, urls)
}

/// A manager over in-memory nodes with every default but the TTL.
fn in_memory(ttl: Duration) -> Redlock {
    Redlock::builder()
        .in_memory_nodes(3)
        .ttl(ttl)
        .build()
        .unwrap()
}

/// Each row of the README's defaults table is what the code does unconfigured,
/// observed through the public API (timings, attempts, validity, refusals),
/// and every row is checked.
///
/// Negative controls, run once with the assertions made to report instead of
/// stop, in three builds with defaults changed: (A) node timeout 100 ms,
/// concurrency 8, retries 31, retry delay 75 ms, drift TTL / 90 + 1 ms,
/// release budget 2 s, key limit 1000 bytes, memory cap 32 MiB, key prefix
/// "lock:"; (B) node timeout 25 ms, jitter 100 ms, drift TTL / 100 + 3 ms,
/// release budget 500 ms, key limit 1025, memory cap 16 MiB - 64 KiB; (C)
/// jitter 250 ms, TTL limit 24 h + 1 ms. Every changed default failed its
/// row's check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_defaults_are_the_code_defaults() {
    let mut doc = documented_defaults();
    let mut row = |setting: &str| {
        doc.remove(setting)
            .unwrap_or_else(|| panic!("no {setting:?} row in README's defaults table"))
    };
    let ttl = Duration::from_secs(10);
    let held = in_memory(ttl);

    // per-node timeout: a node that never answers is a timeout after it.
    let timeout = duration(&row("per-node timeout"));
    let (_silent, urls) = silent_nodes();
    let r = Redlock::new(urls.clone(), ttl).unwrap();
    assert_eq!(r.nodes().node_timeout(), timeout);
    let start = Instant::now();
    let err = r
        .acquire_with(
            "timeout",
            Duration::from_secs(5),
            AcquireOptions::new().retry_count(0),
        )
        .await
        .unwrap_err();
    let took = start.elapsed();
    let Error::UnableToAcquire(f) = &err else {
        panic!("{err:?}")
    };
    // Two timeouts of three make the quorum impossible: the third may be
    // a timeout too or still unanswered.
    let timeouts = f
        .nodes
        .iter()
        .filter(|n| n.outcome == Outcome::Failed(NodeError::Timeout))
        .count();
    assert!(
        timeouts >= 2
            && f.nodes.iter().all(|n| {
                matches!(
                    n.outcome,
                    Outcome::Failed(NodeError::Timeout) | Outcome::NoReply
                )
            }),
        "{err}"
    );
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(250),
        "silent nodes answered in {took:?}"
    );

    // concurrency limit
    let concurrency = leading(&row("concurrency limit"));
    assert_eq!(r.nodes().concurrency() as u64, concurrency);

    // retries: attempts on a held key, without pauses, are 1 + retries.
    let retries = leading(strip(&row("retries"), "", " after the first attempt"));
    held.acquire("retries", Duration::from_secs(5))
        .await
        .unwrap();
    let no_pause = AcquireOptions::new()
        .retry_delay(Duration::ZERO)
        .retry_jitter(Duration::ZERO);
    let err = held
        .acquire_with("retries", Duration::from_secs(5), no_pause)
        .await
        .unwrap_err();
    let Error::UnableToAcquire(f) = &err else {
        panic!("{err:?}")
    };
    assert!(!f.deadline_passed, "{err}");
    assert_eq!(u64::from(f.attempts), retries + 1, "{err}");

    // retry pause: one retry of each of 60 held keys at once; each call
    // takes one pause. Pinned: the fixed part to [delay, delay + 25 ms),
    // the random part's top to (jitter - 25 ms, jitter + 50 ms). With 60
    // uniform draws, no draw under 25 ms (or none over jitter - 25 ms) has
    // a chance of about 1 in 50,000 each.
    let pause = row("retry pause");
    let (delay, jitter) = pause
        .split_once(" + random 0-")
        .unwrap_or_else(|| panic!("{pause:?} is not \"D + random 0-J\""));
    let (delay, jitter) = (duration(delay), duration(jitter));
    let calls = (0..60).map(|i| {
        let held = held.clone();
        async move {
            let k = format!("pause-{i}");
            held.acquire(&k, Duration::from_secs(5)).await.unwrap();
            let start = Instant::now();
            let err = held
                .acquire_with(
                    &k,
                    Duration::from_secs(5),
                    AcquireOptions::new().retry_count(1),
                )
                .await
                .unwrap_err();
            assert!(
                matches!(&err, Error::UnableToAcquire(f) if f.attempts == 2),
                "{err}"
            );
            start.elapsed()
        }
    });
    let pauses = futures::future::join_all(calls).await;
    let (shortest, longest) = (*pauses.iter().min().unwrap(), *pauses.iter().max().unwrap());
    let ms25 = Duration::from_millis(25);
    assert!(shortest >= delay, "a pause of {shortest:?}");
    assert!(shortest < delay + ms25, "no pause under {:?}", delay + ms25);
    assert!(
        longest > delay + jitter - ms25,
        "no pause over {:?}",
        delay + jitter - ms25
    );
    assert!(
        longest < delay + jitter + 2 * ms25,
        "a pause of {longest:?}"
    );

    // drift allowance: validity is TTL - elapsed - (TTL / D + C ms), and
    // the shortest TTL accepted is the first above its own drift.
    let drift = row("drift allowance");
    let (divisor, constant) = strip(&drift, "TTL / ", "")
        .split_once(" + ")
        .unwrap_or_else(|| panic!("{drift:?} is not \"TTL / D + C ms\""));
    let (divisor, constant) = (leading(divisor), ms(duration(constant)));
    for ttl_ms in [100_000, 86_400_000] {
        let r = in_memory(Duration::from_millis(ttl_ms));
        let start = Instant::now();
        let lock = r.acquire("drift", Duration::from_secs(5)).await.unwrap();
        let took = ms(start.elapsed()) + 1;
        let most = ttl_ms - (ttl_ms / divisor + constant);
        let v = ms(lock.validity());
        assert!(
            v <= most && v + took >= most,
            "TTL {ttl_ms} ms: validity {v} ms"
        );
    }
    let shortest_ttl = (1..).find(|t| *t > t / divisor + constant).unwrap();

    // TTL: the range accepted, and the shortest is the first above its drift.
    let ttls = row("TTL");
    let (low, high) = ttls
        .split_once(" ..= ")
        .unwrap_or_else(|| panic!("{ttls:?} is not \"LOW ..= HIGH\""));
    let (low, high) = (duration(low), duration(high));
    assert_eq!(
        ms(low),
        shortest_ttl,
        "the shortest TTL is the first above its drift"
    );
    let once = || AcquireOptions::new().retry_count(0);
    for (ttl, accepted) in [
        (low - Duration::from_millis(1), false),
        (low, true),
        (high, true),
        (high + Duration::from_millis(1), false),
    ] {
        let got = held
            .acquire_with("ttl", Duration::from_secs(5), once().ttl(ttl))
            .await;
        let refused = matches!(got, Err(Error::InvalidArgument(_)));
        assert_eq!(!refused, accepted, "TTL {ttl:?}: {got:?}");
        if let Ok(lock) = got {
            held.release(&lock).await.unwrap();
        }
    }

    // release budget: a release on nodes that never answer (and a node
    // timeout longer than it) returns when the budget ends.
    let budget = duration(&row("release budget"));
    let r = Redlock::builder()
        .nodes(urls)
        .ttl(ttl)
        .node_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let lock = Lock::from_parts(
        "budget",
        "0123456789abcdef0123456789abcdef",
        Instant::now() + ttl,
    );
    let start = Instant::now();
    let err = r.release(&lock).await.unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(&err, Error::UnableToRelease(f) if f.deadline_passed),
        "{err}"
    );
    assert!(
        took >= budget - Duration::from_millis(1) && took < budget + Duration::from_millis(400),
        "release took {took:?}"
    );

    // key size
    let most = leading(strip(&row("key size"), "at most ", " bytes")) as usize;
    for (bytes, accepted) in [(most, true), (most + 1, false)] {
        let got = held
            .acquire(&"k".repeat(bytes), Duration::from_secs(5))
            .await;
        let refused = matches!(got, Err(Error::InvalidArgument(_)));
        assert_eq!(!refused, accepted, "a key of {bytes} bytes: {got:?}");
        if let Ok(lock) = got {
            held.release(&lock).await.unwrap();
        }
    }

    // core memory cap: a core may grow its memory to the cap, not a page more.
    let cap = row("core memory cap");
    let cap = leading(strip(&cap, "", " MiB")) as usize * (1 << 20);
    let r = Redlock::builder()
        .in_memory_nodes(1)
        .ttl(ttl)
        .core(HOSTILE)
        .build()
        .unwrap();
    let err = r
        .acquire(&format!("grow:{cap}"), Duration::from_secs(5))
        .await;
    assert!(
        matches!(&err, Err(Error::InvalidArgument(m)) if *m == format!("memory is {} pages ({cap} bytes)", cap >> 16)),
        "{err:?}"
    );
    let err = r
        .acquire(&format!("grow:{}", cap + 1), Duration::from_secs(5))
        .await;
    assert!(
        matches!(&err, Err(Error::Core(m)) if m.ends_with(&format!(": forcing trap when growing memory to {} bytes", cap + (1 << 16)))),
        "{err:?}"
    );

    // key prefix: none, so the key stored in Redis is the caller's key.
    assert_eq!(row("key prefix"), "none");
    let c = Cluster::start(1);
    let r = Redlock::new(c.urls(), ttl).unwrap();
    let k = key("no-prefix");
    assert_eq!(r.nodes().redis_key(&k), k);
    let lock = r.acquire(&k, Duration::from_secs(2)).await.unwrap();
    assert_eq!(c.nodes[0].get(&k).as_deref(), Some(lock.token()));
    r.release(&lock).await.unwrap();

    // fencing: off, so a lock has no fence and no counter is kept.
    assert_eq!(row("fencing"), "off");
    assert_eq!(lock.fence(), None);
    r.settle(Duration::from_secs(1)).await;
    assert_eq!(c.nodes[0].get(&format!("{k}:fence")), None);

    assert!(doc.is_empty(), "rows this test does not check: {doc:?}");
}
