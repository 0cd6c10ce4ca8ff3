//! The sandbox: a failing guest becomes a typed error and later calls work.

use std::time::{Duration, Instant};

use redlock_wasm::{Error, Redlock};

use crate::support::{Cluster, eventually, key};

/// A memory cap far below what the core needs makes the call fail with
/// `Error::Core`; raising it again, the next call on the same manager works.
#[tokio::test]
async fn guest_failure_is_an_error_and_the_next_call_works() {
    let c = Cluster::start(3);
    let r = Redlock::new(c.urls(), Duration::from_secs(10)).unwrap();
    let k = key("sandbox");
    let lock = r.acquire(&k, Duration::from_secs(1)).await.unwrap();
    r.release(&lock).await.unwrap();
    eventually("released everywhere", || c.total_keys() == 0).await;

    r.set_memory_limit(64 * 1024);
    let err = r.acquire(&k, Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(err, Error::Core(_)), "{err:?}");
    assert_eq!(c.total_keys(), 0, "the failed call set nothing");

    r.set_memory_limit(16 << 20);
    let lock = r
        .acquire(&k, Duration::from_secs(1))
        .await
        .expect("fresh instance works");
    r.release(&lock).await.unwrap();
}

/// The core is the one the build produced, and it is a component.
#[test]
fn core_is_embedded() {
    assert!(redlock_wasm::CORE_WASM.len() > 10_000);
    // Component binary: magic, then layer 1 version 0x0d.
    assert_eq!(&redlock_wasm::CORE_WASM[..4], b"\0asm");
    assert_eq!(redlock_wasm::CORE_WASM[4], 0x0d);
}

/// A core that misbehaves on purpose (tests/hostile-guest).
const HOSTILE: &[u8] = include_bytes!(env!("REDLOCK_HOSTILE_CORE_WASM"));

/// An infinite loop, unbounded allocation, imports called in a tight loop,
/// pending replies never dropped: each is stopped by a sandbox limit with a
/// clear error within a bounded time, and the host keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cores_are_stopped_and_the_host_keeps_serving() {
    let c = Cluster::start(3);
    let ttl = Duration::from_secs(10);
    let hostile = Redlock::builder()
        .nodes(c.urls())
        .ttl(ttl)
        .core(HOSTILE)
        .build()
        .unwrap();
    let budget = Duration::from_millis(300);
    for (behaviour, says) in [
        ("spin", "past its budget"),
        ("alloc", ""),
        ("imports", "past its budget"),
        ("leak", ""),
    ] {
        let start = Instant::now();
        let err = hostile.acquire(behaviour, budget).await.unwrap_err();
        let took = start.elapsed();
        let Error::Core(msg) = &err else {
            panic!("{behaviour}: {err:?}")
        };
        assert!(msg.contains(says), "{behaviour}: {msg}");
        assert!(
            took < budget + Duration::from_secs(2),
            "{behaviour}: stopped after {took:?}"
        );
        // The same manager serves the next call, on a fresh instance.
        let next = hostile.acquire("benign", budget).await.unwrap_err();
        assert!(
            matches!(next, Error::InvalidArgument(ref m) if m == "benign"),
            "{behaviour}: {next:?}"
        );
    }
    // Leaving pending replies alive: the call returns, its store is not reused.
    for _ in 0..3 {
        let err = hostile.acquire("forget", budget).await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
    // The real core in the same process is unaffected.
    let normal = Redlock::new(c.urls(), ttl).unwrap();
    let lock = normal
        .acquire(&key("after-hostile"), Duration::from_secs(1))
        .await
        .unwrap();
    normal.release(&lock).await.unwrap();
    eventually("the hostile core never got a SET out", || {
        c.total_keys() == 0
    })
    .await;
}
