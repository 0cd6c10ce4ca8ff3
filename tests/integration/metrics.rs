//! The lock metrics (`docs/METRICS.md`): exact values after a known
//! sequence of operations, read from a debugging recorder.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use redlock_wasm::{AcquireOptions, Error, Redlock};

use crate::support::{Cluster, Inspect, eventually, key};

/// Every metric so far, as `name{label=value,...}` (labels sorted). A
/// snapshot resets what it reads (counters and gauges to 0, histograms
/// emptied), so each read is added to `totals`.
fn read(s: &Snapshotter, totals: &mut BTreeMap<String, DebugValue>) {
    for (k, _, _, v) in s.snapshot().into_vec() {
        let key = k.key();
        let mut labels: Vec<_> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        let merged = match (totals.remove(&name), v) {
            (None, v) => v,
            (Some(DebugValue::Counter(a)), DebugValue::Counter(b)) => DebugValue::Counter(a + b),
            (Some(DebugValue::Gauge(a)), DebugValue::Gauge(b)) => DebugValue::Gauge(a + b),
            (Some(DebugValue::Histogram(mut a)), DebugValue::Histogram(b)) => {
                a.extend(b);
                DebugValue::Histogram(a)
            }
            (a, b) => panic!("{name}: {a:?} then {b:?}"),
        };
        totals.insert(name, merged);
    }
}

fn counter(n: u64) -> DebugValue {
    DebugValue::Counter(n)
}

fn gauge(v: f64) -> DebugValue {
    DebugValue::Gauge(v.into())
}

/// A histogram's values since the last snapshot.
fn histogram(m: &BTreeMap<String, DebugValue>, name: &str) -> Vec<f64> {
    match m.get(name) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
        other => panic!("{name}: {other:?}\nall: {m:#?}"),
    }
}

/// Acquire, a contended acquire that fails after 3 attempts, extend,
/// release, a certain loss, then an acquire and release with one node
/// killed and one paused: every metric has exactly the expected value,
/// and nothing else is recorded. Negative control: counting attempts as
/// SETs sent (not divided by N) gave attempts [5] for the first acquire.
#[tokio::test]
async fn metrics_after_a_known_sequence() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Thread-local, and this runtime has one thread: only this test counts.
    let _local = ::metrics::set_default_local_recorder(&recorder);
    let mut c = Cluster::start(5);
    let manager = || {
        Redlock::builder()
            .nodes(c.urls())
            .ttl(Duration::from_secs(10))
            // Long enough that a healthy node never times out on a loaded
            // machine; the paused node's two requests take this long.
            .node_timeout(Duration::from_secs(1))
            .retry_delay(Duration::from_millis(10))
            .retry_jitter(Duration::ZERO)
            .build()
            .unwrap()
    };
    let (r, other) = (manager(), manager());
    let mut totals = BTreeMap::new();
    let k = key("metrics");

    // 1. Acquire.
    let asked = Instant::now();
    let lock = r.acquire(&k, Duration::from_secs(2)).await.unwrap();
    let held_from = Instant::now();
    read(&snapshotter, &mut totals);
    let m = &totals;
    assert_eq!(m["redlock_locks_held{}"], gauge(1.0));
    assert_eq!(
        histogram(m, "redlock_acquire_attempts{outcome=acquired}"),
        [1.0]
    );
    assert_eq!(
        histogram(m, "redlock_acquire_duration_seconds{outcome=acquired}").len(),
        1
    );
    assert_eq!(m.len(), 3, "{m:#?}");

    // 2. A contended acquire: 3 attempts, all refused.
    let err = other
        .acquire_with(
            &k,
            Duration::from_secs(5),
            AcquireOptions::new().retry_count(2),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnableToAcquire(f) if f.attempts == 3),
        "{err}"
    );

    // 3. Extend, 4. release.
    let lock = r.extend(&lock, Duration::from_secs(10)).await.unwrap();
    let releasing = Instant::now();
    r.release(&lock).await.unwrap();
    let (at_least, at_most) = (releasing - held_from, asked.elapsed());

    // 5. A certain loss: the keys deleted on every node by hand.
    let lock = r.acquire(&k, Duration::from_secs(2)).await.unwrap();
    // Every SET landed first (acquire returns at quorum).
    eventually("the key on every node", || c.with_key(&k) == 5).await;
    for n in &c.nodes {
        let _: i64 = n.cmd(&["DEL", &k]).unwrap();
    }
    let err = r.extend(&lock, Duration::from_secs(10)).await.unwrap_err();
    assert!(matches!(err, Error::LockLost(_)), "{err}");

    // 6. One node down, one paused: acquire and release still succeed.
    let (down, paused) = (
        format!("127.0.0.1:{}", c.nodes[0].port()),
        format!("127.0.0.1:{}", c.nodes[1].port()),
    );
    c.nodes[0].kill();
    c.nodes[1].pause().unwrap();
    let k2 = key("metrics-degraded");
    let lock = r.acquire(&k2, Duration::from_secs(2)).await.unwrap();
    r.release(&lock).await.unwrap();
    // The paused node's SET and delete time out in the background.
    r.settle(Duration::from_secs(5)).await;
    c.nodes[1].resume().unwrap();

    read(&snapshotter, &mut totals);
    let m = &totals;
    let expected_counters = [
        ("redlock_acquire_contended_total{}", 1),
        ("redlock_extensions_total{outcome=ok}", 1),
        ("redlock_extensions_total{outcome=failed}", 1),
        ("redlock_locks_lost_total{reason=refused}", 1),
    ];
    for (name, n) in expected_counters {
        assert_eq!(m.get(name), Some(&counter(n)), "{name}\nall: {m:#?}");
    }
    for (node, kind) in [(&down, "connection"), (&paused, "timeout")] {
        for op in ["set-if-absent", "delete-if-token"] {
            let name = format!("redlock_node_errors_total{{kind={kind},node={node},op={op}}}");
            assert_eq!(m.get(&name), Some(&counter(1)), "{name}\nall: {m:#?}");
        }
    }
    assert_eq!(m["redlock_locks_held{}"], gauge(0.0));
    assert_eq!(
        histogram(m, "redlock_acquire_attempts{outcome=acquired}"),
        [1.0, 1.0, 1.0]
    );
    assert_eq!(
        histogram(m, "redlock_acquire_attempts{outcome=not_acquired}"),
        [3.0]
    );
    assert_eq!(
        histogram(m, "redlock_acquire_duration_seconds{outcome=acquired}").len(),
        3
    );
    let contended = histogram(m, "redlock_acquire_duration_seconds{outcome=not_acquired}");
    assert_eq!(contended.len(), 1);
    assert!(contended[0] >= 0.020, "two 10 ms pauses: {contended:?}");
    let released = histogram(m, "redlock_hold_duration_seconds{end=released}");
    assert_eq!(released.len(), 2);
    assert!(
        released[0] >= at_least.as_secs_f64() && released[0] <= at_most.as_secs_f64(),
        "{released:?}: from {at_least:?} to {at_most:?}"
    );
    assert_eq!(
        histogram(m, "redlock_hold_duration_seconds{end=lost}").len(),
        1
    );
    assert_eq!(m.len(), 4 + 4 + 1 + 6, "nothing else: {m:#?}");
}
