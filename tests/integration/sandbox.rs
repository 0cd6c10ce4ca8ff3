//! The sandbox: a failing guest becomes a typed error and later calls work.

use std::time::Duration;

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
