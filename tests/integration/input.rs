//! Bad input gets a typed error before any I/O, and leaves nothing behind.

use std::time::{Duration, Instant};

use redlock_wasm::{AcquireOptions, Deadline, Error, Lock, Redlock};

use crate::support::{Cluster, key};

const TTL: Duration = Duration::from_secs(10);

/// Every bad argument to acquire is refused with its typed error, and no
/// node sees a single key.
#[tokio::test]
async fn bad_acquire_arguments_are_refused_before_io() {
    let c = Cluster::start(3);
    let r = Redlock::new(c.urls(), TTL).unwrap();
    let ok_key = key("bad-input");
    let long_key = "k".repeat(1025);
    let ttl = |ms| AcquireOptions::new().ttl(Duration::from_millis(ms));
    let in_2s = Duration::from_secs(2);
    let cases: Vec<(&str, Result<Lock, Error>)> = vec![
        ("empty key", r.acquire("", in_2s).await),
        ("key over 1024 bytes", r.acquire(&long_key, in_2s).await),
        ("ttl 0", r.acquire_with(&ok_key, in_2s, ttl(0)).await),
        (
            "ttl within drift",
            r.acquire_with(&ok_key, in_2s, ttl(2)).await,
        ),
        (
            "ttl over 24 h",
            r.acquire_with(&ok_key, in_2s, ttl(86_400_001)).await,
        ),
        (
            "deadline passed",
            r.acquire(&ok_key, Instant::now() - Duration::from_millis(5))
                .await,
        ),
        ("zero budget", r.acquire(&ok_key, Duration::ZERO).await),
    ];
    for (what, result) in cases {
        match result {
            Err(Error::InvalidArgument(msg)) => assert!(!msg.is_empty(), "{what}"),
            other => panic!("{what}: expected InvalidArgument, got {other:?}"),
        }
    }
    let none = r.acquire(&ok_key, Deadline::none()).await;
    assert!(matches!(none, Err(Error::DeadlineNeeded)), "{none:?}");
    assert!(matches!(
        r.release_by(
            &Lock::from_parts(&ok_key, "t", Instant::now()),
            Deadline::none()
        )
        .await,
        Err(Error::DeadlineNeeded)
    ));
    let empty_token = Lock::from_parts(&ok_key, "", Instant::now() + TTL);
    assert!(matches!(
        r.release(&empty_token).await,
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(c.total_keys(), 0, "no I/O for bad input");
}

/// Configuration errors: no nodes, duplicates, bad URLs, bad limits.
#[test]
fn bad_configuration_is_refused() {
    let no_nodes: Vec<String> = vec![];
    let cases: Vec<(&str, Result<Redlock, Error>)> = vec![
        ("no nodes", Redlock::new(no_nodes, TTL)),
        (
            "duplicate",
            Redlock::new(
                [
                    "redis://127.0.0.1:7000",
                    "redis://localhost:7001",
                    "redis://127.0.0.1:7000/0",
                ],
                TTL,
            ),
        ),
        ("http url", Redlock::new(["http://127.0.0.1:7000"], TTL)),
        (
            "bad port",
            Redlock::new(["redis://127.0.0.1:notaport"], TTL),
        ),
        ("not a url", Redlock::new(["127.0.0.1:6379"], TTL)),
        (
            "zero concurrency",
            Redlock::builder()
                .node("redis://127.0.0.1:7000")
                .ttl(TTL)
                .concurrency(0)
                .build(),
        ),
        (
            "zero node timeout",
            Redlock::builder()
                .node("redis://127.0.0.1:7000")
                .ttl(TTL)
                .node_timeout(Duration::ZERO)
                .build(),
        ),
    ];
    for (what, result) in cases {
        match result {
            Err(Error::Config(msg)) => assert!(!msg.is_empty(), "{what}"),
            other => panic!("{what}: expected Config, got {other:?}"),
        }
    }
}

/// Passwords never appear in errors or Debug output; tokens never in Debug.
#[tokio::test]
async fn secrets_stay_out_of_output() {
    let err = Redlock::new(["redis://user:hunter2@127.0.0.1:bad"], TTL).unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(!format!("{err:?}").contains("hunter2"));

    let c = Cluster::start(3);
    let mut urls = c.urls();
    urls[0] = urls[0].replace("redis://", "redis://default:hunter2@");
    let r = Redlock::new(urls, TTL).unwrap();
    assert!(!format!("{r:?}").contains("hunter2"), "{r:?}");
    // Node 0 rejects the password (none is set): the error names the node, not the secret.
    let lock = r
        .acquire(&key("secrets"), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!format!("{lock:?}").contains(lock.token()), "{lock:?}");
    let err = r
        .acquire_with(
            &key("secrets"),
            Duration::from_millis(200),
            AcquireOptions::new().retry_count(0),
        )
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    r.release(&lock).await.unwrap();
}

/// Unreachable nodes fail the operation with connection errors naming them.
#[tokio::test]
async fn unreachable_nodes_are_named() {
    let ports = crate::support::free_ports(3);
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}"))
        .collect();
    let r = Redlock::new(urls, TTL).unwrap();
    let err = r
        .acquire_with(
            &key("unreachable"),
            Duration::from_millis(500),
            AcquireOptions::new().retry_count(1),
        )
        .await
        .unwrap_err();
    let Error::UnableToAcquire(f) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(f.done(), 0);
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{}", ports[0])),
        "{err}"
    );
}
