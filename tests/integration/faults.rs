//! Dead, paused and cancelled: the lock under the simplest real faults.

use std::time::{Duration, Instant};

use redlock_wasm::{AcquireOptions, CancellationToken, Error, NodeError, Outcome, Redlock};

use crate::support::{Cluster, Inspect, eventually, key, one_failed_attempt};

const TTL: Duration = Duration::from_secs(10);
const NODE_TIMEOUT: Duration = Duration::from_millis(50);
/// Scheduling slack allowed over a deadline on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(300);

fn manager(c: &Cluster) -> Redlock {
    Redlock::builder()
        .nodes(c.urls())
        .ttl(TTL)
        .node_timeout(NODE_TIMEOUT)
        .build()
        .unwrap()
}

/// With 1 of 5 nodes killed, acquire and release still succeed.
#[tokio::test]
async fn one_of_five_killed_still_locks() {
    let mut c = Cluster::start(5);
    let r = manager(&c);
    let k = key("one-dead");
    // Connect first, so the kill breaks an established connection.
    assert!(r.connect().await.iter().all(|x| x.is_ok()));
    c.nodes[2].kill();
    for _ in 0..5 {
        let lock = r
            .acquire(&k, Duration::from_secs(2))
            .await
            .expect("4 of 5 is a quorum");
        eventually("SET on the 4 live nodes", || {
            c.holding(&k, lock.token()) == 4
        })
        .await;
        r.release(&lock).await.expect("release on 4 of 5");
        eventually("no key left", || c.with_key(&k) == 0).await;
    }
}

/// With 3 of 5 killed, acquire fails inside its budget and leaves nothing:
/// no key once the deletes still in flight when it returned have settled
/// (the cleanup does not wait for nodes that had not answered the SET when
/// the failure was certain; it never takes a TTL). Negative control, run
/// once by hand: with the cleanup deletes skipped, two keys were left.
#[tokio::test]
async fn three_of_five_killed_fails_in_time_and_cleans_up() {
    let mut c = Cluster::start(5);
    let r = manager(&c);
    let k = key("three-dead");
    for i in [0, 2, 4] {
        c.nodes[i].kill();
    }
    let budget = Duration::from_millis(800);
    let start = Instant::now();
    let err = r.acquire(&k, budget).await.unwrap_err();
    let took = start.elapsed();
    let Error::UnableToAcquire(f) = &err else {
        panic!("{err:?}")
    };
    assert!(took <= budget + SLACK, "took {took:?}");
    assert!(f.attempts > 1, "it retried: {err}");
    for i in [0, 2, 4] {
        assert!(
            matches!(f.nodes[i].outcome, Outcome::Failed(_) | Outcome::NoReply),
            "{err}"
        );
    }
    // Only commands already sent, never a TTL (10 s here).
    r.settle(Duration::from_secs(1)).await;
    assert_eq!(
        c.with_key(&k),
        0,
        "partial keys released by the deletes acquire sent"
    );
}

/// A SIGSTOPped node delays an acquire by no more than the per-node timeout
/// (in fact not at all: the quorum decides without it).
#[tokio::test]
async fn paused_node_does_not_stall_acquire() {
    let c = Cluster::start(5);
    let r = manager(&c);
    let k = key("paused");
    assert!(r.connect().await.iter().all(|x| x.is_ok()));
    c.nodes[1].pause().unwrap();
    for _ in 0..5 {
        let start = Instant::now();
        let lock = r
            .acquire(&k, Duration::from_secs(2))
            .await
            .expect("acquire");
        assert!(
            start.elapsed() <= NODE_TIMEOUT + SLACK,
            "{:?}",
            start.elapsed()
        );
        r.release(&lock).await.unwrap();
    }
    c.nodes[1].resume().unwrap();
    // The paused node got the SETs late; each was followed by its delete on
    // the same connection, so it ends up empty too.
    tokio::time::sleep(Duration::from_millis(100)).await;
    eventually("no key left", || c.with_key(&k) == 0).await;
}

/// Timeouts are reported per node when a quorum is missing.
#[tokio::test]
async fn paused_majority_reports_timeouts() {
    let c = Cluster::start(3);
    let r = manager(&c);
    let k = key("paused-majority");
    assert!(r.connect().await.iter().all(|x| x.is_ok()));
    c.nodes[0].pause().unwrap();
    c.nodes[1].pause().unwrap();
    let opts = AcquireOptions::new().retry_count(0);
    let err = r
        .acquire_with(&k, Duration::from_secs(1), opts)
        .await
        .unwrap_err();
    let Error::UnableToAcquire(f) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        f.nodes[0].outcome,
        Outcome::Failed(NodeError::Timeout),
        "{err}"
    );
    assert!(err.to_string().contains("timed out"), "{err}");
    c.nodes[0].resume().unwrap();
    c.nodes[1].resume().unwrap();
}

/// The deadline is respected while the key is held by someone else.
#[tokio::test]
async fn deadline_is_respected() {
    let c = Cluster::start(5);
    let r = manager(&c);
    let k = key("deadline");
    let holder = r.acquire(&k, Duration::from_secs(2)).await.unwrap();
    for budget_ms in [1, 20, 150, 400] {
        let budget = Duration::from_millis(budget_ms);
        let start = Instant::now();
        let err = r.acquire(&k, budget).await.unwrap_err();
        assert!(matches!(err, Error::UnableToAcquire(_)), "{err:?}");
        assert!(
            start.elapsed() <= budget + SLACK,
            "{budget:?}: {:?}",
            start.elapsed()
        );
    }
    r.release(&holder).await.unwrap();
}

/// Cancelling through a token stops promptly and deletes what was set.
#[tokio::test]
async fn cancellation_token_stops_and_cleans_up() {
    let c = Cluster::start(5);
    let r = manager(&c);
    let k = key("cancel");
    // Another client holds 3 nodes: every attempt wins 2, fails, cleans up,
    // pauses and retries until cancelled.
    for n in &c.nodes[2..] {
        n.set(&k, "someone-else", 60_000);
    }
    let token = CancellationToken::new();
    let opts = AcquireOptions::new().cancel_on(token.clone());
    let canceller = {
        let token = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(120)).await;
            token.cancel();
        })
    };
    let start = Instant::now();
    let err = r
        .acquire_with(&k, Duration::from_secs(10), opts)
        .await
        .unwrap_err();
    canceller.await.unwrap();
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_millis(120) + SLACK,
        "{:?}",
        start.elapsed()
    );
    // The deletes it sent, landed (the cleanup waits only for nodes that had
    // answered; never a TTL).
    r.settle(Duration::from_secs(1)).await;
    assert_eq!(c.nodes[0].get(&k), None);
    assert_eq!(c.nodes[1].get(&k), None);
    assert_eq!(c.with_key(&k), 3, "the other client's keys are untouched");
}

/// Dropping an acquire future mid-flight, after its SETs went out (node 0
/// already holds the key; nodes 1 and 2 are paused, so the call is still
/// waiting): it stops at once, what it set carries the call's TTL and so
/// expires with it, and the manager keeps working. Round one dropped the
/// call after 1 µs, most likely before any SET was sent.
#[tokio::test]
async fn dropped_acquire_leaves_at_most_expiring_keys() {
    let c = Cluster::start(3);
    let r = Redlock::builder()
        .nodes(c.urls())
        .ttl(TTL)
        .node_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(r.connect().await.iter().all(Result::is_ok));
    let k = key("dropped");
    c.nodes[1].pause().unwrap();
    c.nodes[2].pause().unwrap();
    let ttl = Duration::from_millis(700);
    let opts = AcquireOptions::new().ttl(ttl);
    let mut call = Box::pin(r.acquire_with(&k, Duration::from_secs(3), opts));
    let start = Instant::now();
    loop {
        tokio::select! {
            res = &mut call => panic!("cannot finish with 2 of 3 paused: {res:?}"),
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
        if c.nodes[0].get(&k).is_some() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "no SET reached node 0"
        );
    }
    // Dropped here, with its SETs out.
    drop(call);
    let pttl = c.nodes[0].pttl(&k);
    assert!(
        pttl > 0 && pttl <= ttl.as_millis() as i64,
        "expires with the call's TTL: {pttl} ms"
    );
    c.nodes[1].resume().unwrap();
    c.nodes[2].resume().unwrap();
    // The manager still works after a dropped call (another key).
    let lock = r
        .acquire(&key("dropped-after"), Duration::from_secs(2))
        .await
        .unwrap();
    r.release(&lock).await.unwrap();
}

/// A lock whose validity has passed reports itself lost on extend, and a
/// late release does not delete the successor's key.
#[tokio::test]
async fn holder_that_outlives_validity() {
    let c = Cluster::start(3);
    let r = manager(&c);
    let k = key("outlived");
    let short = AcquireOptions::new().ttl(Duration::from_millis(100));
    let old = r
        .acquire_with(&k, Duration::from_secs(1), short)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let successor = r.acquire(&k, Duration::from_secs(1)).await.unwrap();

    let err = r.extend(&old, TTL).await.unwrap_err();
    let Error::LockLost(f) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(f.attempts, 0, "validity over: decided without I/O");
    assert!(r.release(&old).await.is_err(), "the old token is gone");
    eventually("successor intact", || c.holding(&k, successor.token()) == 3).await;
    r.release(&successor).await.unwrap();
}

/// A node that refuses connections (its process is dead) is not asked at
/// every request: after a refused connect, requests to it (deletes too)
/// fail without a connect attempt ("not asked: it refused the last connection") for a
/// back-off (25 ms, doubling with each refusal in a row, at most the
/// cooldown); once it listens again, it counts again within that bound.
/// The attempts here need the dead node (one of the two others is held),
/// so each one reports its outcome. Negative control, run once by hand:
/// with the back-off disabled, all 40 attempts connected and were refused.
#[tokio::test]
async fn a_refusing_node_is_not_asked_at_every_request() {
    let mut c = Cluster::start(3);
    c.nodes[2].kill();
    let r = Redlock::builder()
        .nodes(c.urls())
        .ttl(TTL)
        .node_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let mut refused = 0;
    let mut not_asked = 0;
    for i in 0..40 {
        let k = key(&format!("needs-the-dead-node-{i}"));
        let _: () = c.nodes[0]
            .cmd(&["SET", &k, "someone-else", "PX", "10000"])
            .unwrap();
        let f = one_failed_attempt(&r, &k, Duration::from_secs(2)).await;
        match &f.nodes[2].outcome {
            Outcome::Failed(NodeError::Other(m)) if m.contains("not asked") => {
                assert!(m.contains("refused the last connection"), "{m}");
                not_asked += 1;
            }
            Outcome::Failed(_) => refused += 1,
            other => panic!("the dead node answered: {other:?}"),
        }
        if not_asked >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        refused >= 1 && not_asked >= 3,
        "refused {refused}, not asked {not_asked}: every attempt connected"
    );

    // Listening again: within the back-off's bound (the cooldown, 1 s with
    // this timeout) it is asked and counts once more.
    c.nodes[2].restart().unwrap();
    every_node_counts_within(&r, &c, Duration::from_secs(3)).await;
}

/// Acquires fresh keys until every node of `c` holds one (settled), at
/// most for `bound`: a node that was skipped counts again.
async fn every_node_counts_within(r: &Redlock, c: &Cluster, bound: Duration) {
    let start = Instant::now();
    loop {
        let k = key("counts-again");
        let lock = r.acquire(&k, Duration::from_secs(1)).await.unwrap();
        r.settle(Duration::from_secs(1)).await;
        let all = c.holding(&k, lock.token()) == c.nodes.len();
        r.release(&lock).await.unwrap();
        if all {
            return;
        }
        assert!(start.elapsed() < bound, "a node never counted again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A node that stopped answering is not waited for again: once its last
/// `SUSPECT_AFTER` requests timed out, SETs to it fail at once ("not
/// asked") for a cooldown instead of costing every attempt the node
/// timeout, and the first request after the cooldown that is answered in
/// time ends the suspicion. The attempt here needs the silent node (two of
/// the four others are held), so it would wait for it.
/// Negative control, run once by hand: with suspicion disabled
/// (`SUSPECT_AFTER = u32::MAX`), the silent node's outcome was a timeout.
#[tokio::test]
async fn a_silent_node_is_not_waited_for_again() {
    use crate::support::proxy::{Mode, Proxy};
    let c = Cluster::start(5);
    let proxy = Proxy::start(c.nodes[4].port()).await.unwrap();
    let mut urls = c.urls();
    urls[4] = proxy.url();
    let r = Redlock::builder()
        .nodes(urls)
        .ttl(TTL)
        .node_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    assert!(r.connect().await.iter().all(|x| x.is_ok()));
    // Silent, connection open: what a paused node or a partition looks like.
    proxy.set(Mode::Hold);

    // Two acquire + release pairs: four requests to the silent node time
    // out (the pairs themselves succeed on the other four).
    for i in 0..2 {
        let lock = r
            .acquire(&key(&format!("warm-{i}")), Duration::from_secs(2))
            .await
            .unwrap();
        r.release(&lock).await.unwrap();
    }
    r.settle(Duration::from_secs(2)).await;

    let k = key("needs-the-silent-node");
    for n in &c.nodes[..2] {
        let _: () = n.cmd(&["SET", &k, "someone-else", "PX", "10000"]).unwrap();
    }
    let f = one_failed_attempt(&r, &k, Duration::from_secs(2)).await;
    assert!(
        matches!(&f.nodes[4].outcome, Outcome::Failed(NodeError::Other(m)) if m.contains("not asked")),
        "the silent node was asked and waited for: {f}"
    );

    // It answers again (the held requests are delivered, in order): after
    // the cooldown (1 s at most), it is asked and counts once more.
    proxy.set(Mode::Pass);
    every_node_counts_within(&r, &c, Duration::from_secs(3)).await;
}
