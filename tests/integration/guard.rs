//! The lock guard (`Redlock::acquire_guard`) on real nodes: it keeps a lock
//! through work longer than the TTL, signals a loss before the validity
//! ends, releases on drop or on request, and cancels the work.
//!
//! Each test names the deliberately broken build it was checked against
//! once (its negative control) and what that showed.

use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use redlock_wasm::guard::schedule;
use redlock_wasm::{Error, GuardOptions, Loss, Redlock};

use crate::support::{Cluster, Inspect, eventually, key};

fn manager(c: &Cluster, ttl: Duration) -> Redlock {
    Redlock::builder()
        .nodes(c.urls())
        .ttl(ttl)
        .build()
        .expect("manager")
}

/// A guard that signals 100 ms before the end of validity (grace 0).
fn no_grace() -> GuardOptions {
    GuardOptions::new().grace(Duration::ZERO)
}

/// Deletes `k` on the first `n` nodes, as an operator (or an eviction) would,
/// once every node has it (acquire returns at quorum: a late SET would
/// otherwise land after the delete).
async fn delete_on(c: &Cluster, n: usize, k: &str) {
    eventually("the key on every node", || c.with_key(k) == c.nodes.len()).await;
    for node in &c.nodes[..n] {
        let _: i64 = node.cmd(&["DEL", k]).unwrap();
    }
}

/// Work that outlives four TTLs keeps the lock, and another client cannot
/// take it meanwhile. Negative control: a guard that never extends gave
/// the lock up (`Unconfirmed`) 0.89 s in; the check at 1 s failed.
#[tokio::test]
async fn work_longer_than_several_ttls_keeps_the_lock() {
    let c = Cluster::start(3);
    let ttl = Duration::from_secs(1);
    let r = manager(&c, ttl);
    let other = manager(&c, ttl);
    let k = key("guard-keeps");
    let guard = r
        .acquire_guard_with(&k, Duration::from_secs(2), no_grace())
        .await
        .expect("acquire");
    let token = guard.lock().token().to_owned();
    let work = guard.cancellation();
    let start = Instant::now();
    while start.elapsed() < 4 * ttl {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(guard.loss().is_none(), "{:?}", guard.loss());
        match other.acquire(&k, Duration::from_millis(50)).await {
            Err(Error::UnableToAcquire(_)) => {}
            got => panic!("another client got past the guard: {got:?}"),
        }
    }
    assert!(!work.is_cancelled());
    let lock = guard.lock();
    assert_eq!(lock.token(), token, "the same lock, extended");
    assert!(lock.is_valid());
    assert!(c.holding(&k, &token) >= 2, "held on a quorum");
    guard.release().await.expect("release");
    assert!(work.is_cancelled(), "released: the work is told");
}

/// With a majority paused (SIGSTOP), the signal fires inside the margin
/// before the last confirmed validity ends, not after it. Negative control:
/// a guard signalling at `valid_until` (margin 0) fired 1.6 ms after the
/// validity ended. (Here it fires about 99 ms before.)
#[tokio::test]
async fn majority_paused_signals_before_validity_ends() {
    let c = Cluster::start(3);
    let ttl = Duration::from_secs(1);
    let r = manager(&c, ttl);
    let k = key("guard-paused");
    let guard = r
        .acquire_guard_with(&k, Duration::from_secs(2), no_grace())
        .await
        .expect("acquire");
    let first = guard.lock();
    // Past the first extension (after a third of the validity).
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_ne!(guard.lock(), first, "extended once");
    c.nodes[1].pause().unwrap();
    c.nodes[2].pause().unwrap();

    let loss = tokio::time::timeout(2 * ttl, guard.lost())
        .await
        .expect("a signal within the validity");
    let fired = Instant::now();
    let last = guard.lock();
    c.nodes[1].resume().unwrap();
    c.nodes[2].resume().unwrap();

    let valid_until = last.valid_until();
    let margin = schedule::signal_margin(last.validity(), Duration::ZERO);
    assert!(
        fired < valid_until,
        "fired {:?} after the validity ended",
        fired - valid_until
    );
    assert!(
        fired + margin + Duration::from_millis(5) >= valid_until,
        "fired {:?} before the validity ended: earlier than the schedule ({margin:?})",
        valid_until - fired
    );
    assert!(
        matches!(&loss, Loss::Unconfirmed(Some(Error::LockLost(_)))),
        "{loss:?}"
    );
    assert!(guard.cancellation().is_cancelled());
    eprintln!(
        "signal {:?} before the last confirmed validity ended",
        valid_until - fired
    );
}

/// Keys deleted by hand on a majority fire the signal at the next
/// extension (a certain loss), not at the end of the schedule. Negative
/// control: treating refusals as transient fired 2.86 s after the
/// deletion (the schedule's end; the limit is 1.29 s).
#[tokio::test]
async fn certain_loss_signals_at_once() {
    let c = Cluster::start(3);
    let ttl = Duration::from_secs(3);
    let r = manager(&c, ttl);
    let k = key("guard-certain");
    let guard = r
        .acquire_guard_with(&k, Duration::from_secs(2), no_grace())
        .await
        .expect("acquire");
    let lock = guard.lock();
    delete_on(&c, 2, &k).await;
    let deleted = Instant::now();

    let loss = tokio::time::timeout(2 * ttl, guard.lost())
        .await
        .expect("a signal");
    let fired = Instant::now();
    // The next extension comes a third of the validity after the acquire.
    let promptly = schedule::extend_after(lock.validity()) + Duration::from_millis(300);
    assert!(
        fired - deleted <= promptly,
        "fired {:?} after the deletion (at most {promptly:?})",
        fired - deleted
    );
    assert!(fired + Duration::from_secs(1) < lock.valid_until());
    let Loss::Certain(Error::LockLost(f)) = &loss else {
        panic!("{loss:?}")
    };
    assert!(f.refused() >= 2, "{loss}");
    guard.release().await.ok();
}

/// Dropping the guard releases its keys at once (a 3 s TTL would keep
/// them) and stops its extensions. Negative controls: a drop that does not
/// release left the keys ("not within 2 s"); a drop that does not stop the
/// extender made one more (refused) extension.
#[tokio::test]
async fn drop_releases_and_stops_extending() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Thread-local, and this runtime has one thread: only this test counts.
    let _local = ::metrics::set_default_local_recorder(&recorder);
    // Extensions since the last look (a snapshot resets the counters).
    let extensions = || {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == "redlock_extensions_total")
            .map(|(.., v)| match v {
                DebugValue::Counter(n) => n,
                other => panic!("{other:?}"),
            })
            .sum::<u64>()
    };
    let c = Cluster::start(3);
    let ttl = Duration::from_secs(3);
    let r = manager(&c, ttl);
    let k = key("guard-drop");
    let guard = r
        .acquire_guard_with(&k, Duration::from_secs(2), no_grace())
        .await
        .expect("acquire");
    // An extension at a third of the validity (0.99 s); the next at 2 s.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert!(extensions() >= 1, "extended (a failed try counts too)");
    let token = guard.lock().token().to_owned();
    assert_eq!(c.holding(&k, &token), 3);

    let work = guard.cancellation();
    drop(guard);
    assert!(work.is_cancelled());
    let dropped = Instant::now();
    eventually("the drop released every node", || c.with_key(&k) == 0).await;
    assert!(dropped.elapsed() < Duration::from_secs(1), "not by the TTL");
    // Past the next extension's time (2 s after the acquire).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(extensions(), 0, "no extension after the drop");
}

/// `release()` deletes the keys, cancels the work and returns the
/// release's own result (an error when the keys were already gone).
/// Negative control: a release returning `Ok(())` whatever happened
/// returned `Ok` for the deleted keys.
#[tokio::test]
async fn explicit_release_returns_its_result() {
    let c = Cluster::start(3);
    let r = manager(&c, Duration::from_secs(30));
    let k = key("guard-release");
    let guard = r.acquire_guard(&k, Duration::from_secs(2)).await.unwrap();
    let work = guard.cancellation();
    guard.release().await.expect("release");
    assert!(
        c.with_key(&k) <= 1,
        "a quorum deleted when release returned"
    );
    assert!(work.is_cancelled());
    eventually("deleted everywhere", || c.with_key(&k) == 0).await;

    let guard = r.acquire_guard(&k, Duration::from_secs(2)).await.unwrap();
    delete_on(&c, 3, &k).await;
    let err = guard.release().await.unwrap_err();
    let Error::UnableToRelease(f) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(f.done(), 0, "{err}");
    assert!(f.refused() >= 2, "{err}");
}

/// Work spawned on a multi-thread runtime, holding the guard across
/// awaits, stops through the guard's token when the lock is lost (keys
/// deleted on a majority), before the validity ends. Negative control: a
/// token not tied to the loss kept the work running until the 5 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_cancels_the_work() {
    let c = Cluster::start(3);
    let r = manager(&c, Duration::from_secs(3));
    let k = key("guard-token");
    let guard = r
        .acquire_guard_with(&k, Duration::from_secs(2), no_grace())
        .await
        .unwrap();
    let valid_until = guard.lock().valid_until();
    let work = tokio::spawn(async move {
        let token = guard.cancellation();
        let mut steps = 0u32;
        loop {
            tokio::select! {
                () = token.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(10)) => steps += 1,
            }
        }
        (Instant::now(), guard.loss(), steps)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    delete_on(&c, 2, &k).await;
    let (stopped, loss, steps) = tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .expect("the work stopped")
        .unwrap();
    assert!(steps > 0);
    assert!(stopped < valid_until, "stopped before the validity ended");
    assert!(matches!(loss, Some(Loss::Certain(_))), "{loss:?}");
}
