//! The process-wide instance slots, in a test process of their own: every
//! manager of a process shares them, so these tests would disturb (and be
//! disturbed by) the other integration tests' calls. In-memory nodes: the
//! point is the sandbox's limits, not Redis.

use std::time::{Duration, Instant};

use redlock_wasm::{AcquireOptions, Error, Redlock};

/// The tests share the slots of this process: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn manager() -> Redlock {
    Redlock::builder()
        .in_memory_nodes(3)
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// 300 managers, one call each (more than the 256 instance slots): no call
/// waits for a slot that an idle instance of another manager keeps. Negative
/// control, run once by hand: with per-manager idle instances holding their
/// slots (round one), call 257 waited past its 2 s bound.
#[tokio::test]
async fn three_hundred_managers_each_make_a_call() {
    let _serial = SERIAL.lock().await;
    let mut managers = Vec::new();
    for i in 0..300 {
        let r = manager();
        let key = format!("k{i}");
        let call = r.acquire(&key, Duration::from_millis(500));
        let lock = tokio::time::timeout(Duration::from_secs(2), call)
            .await
            .unwrap_or_else(|_| panic!("call {i} waited for an instance slot"))
            .unwrap_or_else(|e| panic!("call {i}: {e}"));
        r.release(&lock).await.unwrap();
        // Kept alive: an idle instance lives as long as something may reuse it.
        managers.push(r);
    }
}

/// 1,000 concurrent calls on one manager, each with a 100 ms deadline, on a
/// key held elsewhere (so each call that starts retries until its deadline
/// and keeps its instance busy): every call returns within its deadline plus
/// 300 ms of scheduling slack, those that never got a slot with a typed
/// failure of 0 attempts. Negative control, run once by hand: with the wait
/// for a slot outside the deadline and the budget taken before it (round
/// one), the slowest call took several deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_keep_their_deadline() {
    let _serial = SERIAL.lock().await;
    let r = manager();
    let held = r.acquire("busy", Duration::from_secs(1)).await.unwrap();
    let deadline = Duration::from_millis(100);
    let calls = (0..1000).map(|_| {
        let r = r.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            // Short pauses: a call that starts keeps its instance until its
            // deadline.
            let retry = AcquireOptions::new()
                .retry_count(10_000)
                .retry_delay(Duration::from_millis(5))
                .retry_jitter(Duration::ZERO);
            let res = r.acquire_with("busy", deadline, retry).await;
            (start.elapsed(), res)
        })
    });
    let mut slowest = Duration::ZERO;
    let mut never_started = 0;
    for call in futures::future::join_all(calls).await {
        let (took, res) = call.unwrap();
        slowest = slowest.max(took);
        match res {
            Err(Error::UnableToAcquire(f)) => {
                assert!(f.deadline_passed || f.attempts > 0, "{f}");
                if f.attempts == 0 {
                    never_started += 1;
                }
            }
            other => panic!("the key is held: {other:?}"),
        }
    }
    assert!(
        slowest <= deadline + Duration::from_millis(300),
        "slowest call: {slowest:?} ({never_started} never started)"
    );
    r.release(&held).await.unwrap();
}

/// A cancelled call stops waiting for a slot at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_wait_for_a_slot() {
    let _serial = SERIAL.lock().await;
    use redlock_wasm::CancellationToken;
    let r = manager();
    let held = r.acquire("busy2", Duration::from_secs(1)).await.unwrap();
    // Occupy every slot for 2 s.
    let hogs: Vec<_> = (0..300)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.acquire("busy2", Duration::from_secs(2)).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let token = CancellationToken::new();
    let call = {
        let (r, token) = (r.clone(), token.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let res = r
                .acquire_with(
                    "busy2",
                    Duration::from_secs(10),
                    AcquireOptions::new().cancel_on(token),
                )
                .await;
            (start.elapsed(), res)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    token.cancel();
    let (took, res) = call.await.unwrap();
    assert!(matches!(res, Err(Error::Cancelled)), "{res:?}");
    assert!(took < Duration::from_millis(1_000), "{took:?}");
    for h in hogs {
        let _ = h.await;
    }
    r.release(&held).await.unwrap();
}
