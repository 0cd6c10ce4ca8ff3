//! Fencing tokens (docs/FENCING.md) on real nodes: the counters the scripts
//! keep, the API that carries the fence, and what a broken counter does.

use std::time::{Duration, SystemTime};

use redlock_wasm::{AcquireOptions, Error, NodeError, Outcome, Redlock};

use crate::support::{Cluster, Inspect, eventually, key};

const TTL: Duration = Duration::from_secs(10);
const WAIT: Duration = Duration::from_secs(2);

/// A manager with fencing on and a generous node timeout.
fn fenced(urls: Vec<String>) -> Redlock {
    Redlock::builder()
        .nodes(urls)
        .ttl(TTL)
        .node_timeout(Duration::from_millis(500))
        .fencing(true)
        .build()
        .expect("manager")
}

/// Now in microseconds since 1970, rounded down to the second: the floor
/// the fenced script reads from `TIME` on a node of this machine.
fn floor_now() -> u64 {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    secs * 1_000_000
}

/// Fences grow from lock to lock, every node keeps the counter beside the key, extend keeps the fence.
#[tokio::test]
async fn fences_grow_and_every_node_keeps_the_counter() {
    let c = Cluster::start(3);
    let r = fenced(c.urls());
    let k = key("fences-grow");
    let floor = floor_now();
    let mut last = 0;
    for _ in 0..5 {
        let lock = r.acquire(&k, WAIT).await.expect("acquire");
        let fence = lock.fence().expect("fencing is on");
        assert!(fence > last, "{fence} after {last}");
        assert!(fence >= floor, "the clock floor: {fence} < {floor}");
        let longer = r.extend(&lock, TTL).await.expect("extend");
        assert_eq!(longer.fence(), Some(fence), "extend keeps the fence");
        r.release(&longer).await.expect("release");
        eventually("every node counted it", || {
            c.nodes
                .iter()
                .all(|n| n.get(&format!("{k}:fence")) == Some(fence.to_string()))
        })
        .await;
        for n in &c.nodes {
            assert_eq!(n.pttl(&format!("{k}:fence")), -1, "a counter has no TTL");
        }
        last = fence;
    }
}

/// Fencing is per manager and per acquire: off by default, and an unfenced acquire touches no counter.
#[tokio::test]
async fn fencing_is_opt_in_per_manager_and_per_acquire() {
    let c = Cluster::start(3);
    let k = key("fences-opt-in");
    let counter = format!("{k}:fence");
    let plain = Redlock::new(c.urls(), TTL).unwrap();
    let lock = plain.acquire(&k, WAIT).await.unwrap();
    assert_eq!(lock.fence(), None, "off by default");
    plain.release(&lock).await.unwrap();
    let on = plain
        .acquire_with(&k, WAIT, AcquireOptions::new().fencing(true))
        .await
        .unwrap();
    assert!(on.fence().is_some(), "on for one acquire");
    plain.release(&on).await.unwrap();
    let r = fenced(c.urls());
    let off = r
        .acquire_with(&k, WAIT, AcquireOptions::new().fencing(false))
        .await
        .unwrap();
    assert_eq!(off.fence(), None, "off for one acquire of a fenced manager");
    r.release(&off).await.unwrap();
    r.settle(Duration::from_secs(1)).await;
    let fence = on.fence().unwrap().to_string();
    for n in &c.nodes {
        assert_eq!(
            n.get(&counter),
            Some(fence.clone()),
            "only the fenced one counted"
        );
    }
}

/// The counter sits beside the key as stored: with a key prefix, `<prefix><key>:fence`.
#[tokio::test]
async fn the_counter_follows_the_key_prefix() {
    let c = Cluster::start(3);
    let r = Redlock::builder()
        .nodes(c.urls())
        .ttl(TTL)
        .node_timeout(Duration::from_millis(500))
        .key_prefix("app:")
        .fencing(true)
        .build()
        .unwrap();
    let k = key("fences-prefix");
    let lock = r.acquire(&k, WAIT).await.unwrap();
    r.settle(Duration::from_secs(1)).await;
    let fence = lock.fence().unwrap().to_string();
    for n in &c.nodes {
        assert_eq!(n.get(&format!("app:{k}:fence")), Some(fence.clone()));
    }
    r.release(&lock).await.unwrap();
}

/// In-memory nodes fence too, with the same rules.
#[tokio::test]
async fn in_memory_nodes_fence() {
    let r = Redlock::builder()
        .in_memory_nodes(5)
        .ttl(TTL)
        .fencing(true)
        .build()
        .unwrap();
    let floor = floor_now();
    let a = r.acquire("k", WAIT).await.unwrap();
    r.release(&a).await.unwrap();
    let b = r.acquire("k", WAIT).await.unwrap();
    let (fa, fb) = (a.fence().unwrap(), b.fence().unwrap());
    assert!(fa >= floor && fb > fa, "{fa} then {fb}");
}

/// A counter that is not a number fails its node with the script's error, and sets no lock key there.
///
/// On 2 of 3 nodes: the acquire fails and names the error; on 1 of 3 it
/// succeeds on the other two.
#[tokio::test]
async fn a_counter_that_is_not_a_number_fails_its_node() {
    let c = Cluster::start(3);
    let r = fenced(c.urls());
    let k = key("fences-garbage");
    let counter = format!("{k}:fence");
    c.nodes[0].set(&counter, "not-a-number", 60_000);
    let lock = r.acquire(&k, WAIT).await.expect("2 of 3 nodes are fine");
    r.release(&lock).await.unwrap();
    c.nodes[1].set(&counter, "not-a-number", 60_000);
    let opts = AcquireOptions::new().retry_count(0);
    let err = r.acquire_with(&k, WAIT, opts).await.unwrap_err();
    let Error::UnableToAcquire(f) = &err else {
        panic!("{err:?}")
    };
    assert!(
        err.to_string().contains("is not a number"),
        "names the script's error: {err}"
    );
    let bad = f
        .nodes
        .iter()
        .filter(|n| matches!(&n.outcome, Outcome::Failed(NodeError::Redis(e)) if e.contains("is not a number")))
        .count();
    assert_eq!(bad, 2, "{err}");
    r.settle(Duration::from_secs(1)).await;
    assert_eq!(
        c.nodes[0].get(&k),
        None,
        "no lock key where the counter is bad"
    );
    assert_eq!(c.with_key(&k), 0, "nothing left behind");
}

/// Counters refuse to pass 2^53 - 1, where Lua's numbers stop being exact, instead of repeating a value.
#[tokio::test]
async fn a_counter_never_passes_2_pow_53() {
    let c = Cluster::start(3);
    let r = fenced(c.urls());
    let k = key("fences-max");
    let counter = format!("{k}:fence");
    let max = (1u64 << 53) - 1;
    for n in &c.nodes {
        let _: () = n.cmd(&["SET", &counter, &(max - 1).to_string()]).unwrap();
    }
    let lock = r.acquire(&k, WAIT).await.expect("reaches 2^53 - 1");
    assert_eq!(lock.fence(), Some(max));
    r.release(&lock).await.unwrap();
    let opts = AcquireOptions::new().retry_count(0);
    let err = r.acquire_with(&k, WAIT, opts).await.unwrap_err();
    assert!(err.to_string().contains("would pass 2^53 - 1"), "{err}");
    r.settle(Duration::from_secs(1)).await;
    assert_eq!(c.with_key(&k), 0, "no lock key set");
}

/// `redlock acquire --fence --json` prints the fence; `redlock run --fence` gives the next one to the job as REDLOCK_FENCE.
///
/// Without --fence, `acquire --json` prints no fence and `run` gives the
/// job no REDLOCK_FENCE, not even one inherited from an outer run.
#[test]
fn the_cli_prints_the_fence_and_gives_it_to_the_job() {
    use crate::cli::{output, redlock, stderr};
    let c = Cluster::start(3);
    let k = key("fences-cli");
    let acquire = |fence: bool| {
        let mut cmd = redlock(&c);
        cmd.args(["acquire", "--key", &k, "--ttl", "1s", "--json"]);
        if fence {
            cmd.arg("--fence");
        }
        let o = output(cmd);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut release = redlock(&c);
        release.args([
            "release",
            "--key",
            &k,
            "--token",
            v["token"].as_str().unwrap(),
        ]);
        assert!(output(release).status.success());
        v
    };
    assert!(
        acquire(false).get("fence").is_none(),
        "no fence unless asked"
    );
    let first = acquire(true)["fence"].as_u64().expect("a fence");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fence");
    let run = |fence: bool| {
        let mut cmd = redlock(&c);
        cmd.env("REDLOCK_FENCE", "1");
        cmd.args(["run", "--key", &k, "--ttl", "1s"]);
        if fence {
            cmd.arg("--fence");
        }
        let script = format!(
            "printf '%s' \"${{REDLOCK_FENCE-unset}}\" > {}",
            file.display()
        );
        cmd.args(["--", "sh", "-c", &script]);
        let o = output(cmd);
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read_to_string(&file).unwrap()
    };
    let second: u64 = run(true).parse().expect("REDLOCK_FENCE is a number");
    assert!(second > first, "{first} then {second}");
    assert_eq!(
        run(false),
        "unset",
        "an outer REDLOCK_FENCE is not passed on"
    );
}

/// The fence checker on synthetic histories: ordered and overlapping calls pass; a fence that did not grow, also an equal one, is found.
#[test]
fn the_fence_checker_finds_fences_out_of_order_and_only_those() {
    use crate::support::history::{Fenced, fence_violations};
    let t0 = std::time::Instant::now();
    let f = |client, start: u64, returned: u64, fence| Fenced {
        client,
        start: t0 + Duration::from_millis(start),
        returned: t0 + Duration::from_millis(returned),
        fence,
    };
    let ordered = [f(0, 0, 10, 5), f(1, 11, 20, 6), f(2, 30, 40, 100)];
    assert!(fence_violations(&ordered).is_empty());
    // Overlapping calls may come in any order; returned at the instant the
    // other started is not before it.
    assert!(fence_violations(&[f(0, 0, 10, 9), f(1, 5, 15, 3)]).is_empty());
    assert!(fence_violations(&[f(0, 0, 10, 9), f(1, 10, 15, 3)]).is_empty());
    let equal = fence_violations(&[f(0, 0, 10, 7), f(1, 11, 20, 7)]);
    assert_eq!(equal.len(), 1);
    assert_eq!((equal[0].first.client, equal[0].second.client), (0, 1));
    // Against the highest earlier fence, not just the latest one.
    let v = fence_violations(&[f(0, 0, 10, 50), f(1, 11, 20, 60), f(2, 30, 40, 55)]);
    assert_eq!(v.len(), 1);
    assert_eq!((v[0].first.fence, v[0].second.fence), (60, 55));
}

/// What a restarted node lost.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Lost {
    /// Nothing: every node runs with `appendonly yes`, `appendfsync always`.
    Nothing,
    /// Everything: no persistence.
    Everything,
    /// What came after an RDB snapshot (`SAVE`) taken after A's first lock:
    /// it comes back with a stale counter.
    SinceSnapshot,
}

/// The counter's restart case on 5 real nodes. A takes and releases two
/// fenced locks reaching nodes 0-2 only (it sees nodes 3 and 4 through
/// proxies that swallow everything), so only they count them. Node 0 is
/// killed (SIGKILL) and restarted `down` later, having lost `lost`. B's
/// fenced lock reaches nodes 0, 3 and 4 only (1 and 2 behind swallowing
/// proxies). Returns A's second acquire and B's, for the checker.
async fn restart_between_locks(lost: Lost, down: Duration) -> [crate::support::history::Fenced; 2] {
    use crate::support::history::Fenced;
    use crate::support::proxy::{Mode, Proxy};
    use redlock_wasm::local::LocalNode;
    let args: &[&str] = match lost {
        Lost::Nothing => &["--appendonly", "yes", "--appendfsync", "always"],
        _ => &[],
    };
    let mut c = Cluster {
        nodes: (0..5)
            .map(|_| LocalNode::start_with(args).unwrap_or_else(|e| panic!("{e}")))
            .collect(),
    };
    let mut proxies = Vec::new();
    for n in &c.nodes {
        let p = Proxy::start(n.port()).await.expect("proxy");
        p.set(Mode::Blackhole);
        proxies.push(p);
    }
    // `reach[i]`: node i directly, else behind its swallowing proxy.
    let manager = |reach: [bool; 5]| {
        let urls = (0..5).map(|i| match reach[i] {
            true => c.nodes[i].url(),
            false => proxies[i].url(),
        });
        Redlock::builder()
            .nodes(urls)
            .ttl(Duration::from_secs(5))
            .node_timeout(Duration::from_millis(50))
            .fencing(true)
            .build()
            .unwrap()
    };
    let a = manager([true, true, true, false, false]);
    let b = manager([true, false, false, true, true]);
    let k = key(&format!("fences-restart-{lost:?}-{}", down.as_millis()));
    let mut last = None;
    for i in 0..2 {
        let start = std::time::Instant::now();
        let lock = a.acquire(&k, WAIT).await.expect("A, on nodes 0-2");
        last = Some(Fenced {
            client: 0,
            start,
            returned: std::time::Instant::now(),
            fence: lock.fence().unwrap(),
        });
        a.release(&lock).await.unwrap();
        if i == 0 && lost == Lost::SinceSnapshot {
            a.settle(Duration::from_millis(200)).await;
            let _: () = c.nodes[0].cmd(&["SAVE"]).unwrap();
        }
    }
    a.settle(Duration::from_millis(200)).await;
    c.nodes[0].kill();
    tokio::time::sleep(down).await;
    c.nodes[0].restart().unwrap();
    let start = std::time::Instant::now();
    let lock = b.acquire(&k, WAIT).await.expect("B, on nodes 0, 3, 4");
    let second = Fenced {
        client: 1,
        start,
        returned: std::time::Instant::now(),
        fence: lock.fence().unwrap(),
    };
    [last.unwrap(), second]
}

/// Waits until the wall clock is early in a second, so that a scenario of a
/// few hundred ms does not cross into the next one.
async fn early_in_a_second() {
    loop {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        if ms < 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(u64::from(1_005 - ms))).await;
    }
}

/// The counter's known limit, shown: a node back within the second, having lost its counters (no persistence, or a stale RDB snapshot), repeats a fence, and the checker sees it.
///
/// The clock floor re-seeds a lost counter only when the node stayed down
/// past the second (docs/FENCING.md, Restarts); here it comes back at once.
/// A run that crossed into the next second is protected by the floor after
/// all, and is tried again (at most 5 times).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprotected_restart_repeats_a_fence_and_the_checker_sees_it() {
    use crate::support::history::fence_violations;
    for lost in [Lost::Everything, Lost::SinceSnapshot] {
        let mut shown = false;
        for _ in 0..5 {
            early_in_a_second().await;
            let [a, b] = restart_between_locks(lost, Duration::ZERO).await;
            if b.fence / 1_000_000 > a.fence / 1_000_000 {
                continue; // a new second: the floor protected it
            }
            let v = fence_violations(&[a, b]);
            assert_eq!(v.len(), 1, "{lost:?}: {a:?} then {b:?}");
            shown = true;
            break;
        }
        assert!(shown, "{lost:?}: every run crossed a second");
    }
}

/// The protected restarts: with `appendfsync always` at once, and without persistence (empty or from a stale snapshot) after more than a second: fences keep growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_restart_keeps_fences_growing() {
    use crate::support::history::fence_violations;
    let cases = [
        (Lost::Nothing, Duration::ZERO),
        (Lost::Everything, Duration::from_millis(1_100)),
        (Lost::SinceSnapshot, Duration::from_millis(1_100)),
    ];
    for (lost, down) in cases {
        early_in_a_second().await;
        let [a, b] = restart_between_locks(lost, down).await;
        assert!(
            fence_violations(&[a, b]).is_empty(),
            "{lost:?}, down {down:?}: {} then {}",
            a.fence,
            b.fence
        );
    }
}

#[path = "../../host/examples/fenced_store/store.rs"]
mod store;

/// Kleppmann's scenario: A pauses past its validity, B takes the lock and writes, A's late write is refused by the fenced store.
///
/// A runs as its own task: it takes the lock, writes, stalls past its
/// validity (a GC pause), and writes again once B has written. The fenced
/// store keeps B's data and names B's fence. The same two late writes to
/// a resource without a fence check (a plain SET) show what fencing
/// prevents: there A's late write wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_paused_past_its_validity_is_refused_by_the_fenced_store() {
    use store::{FencedStore, Write};
    let c = Cluster::start(3);
    let resource = crate::support::start_node();
    let store = FencedStore::connect(&resource.url()).await.unwrap();
    let record = key("kleppmann");
    let manager = || {
        Redlock::builder()
            .nodes(c.urls())
            .ttl(Duration::from_millis(400))
            .node_timeout(Duration::from_millis(200))
            .fencing(true)
            .build()
            .unwrap()
    };
    let (a, b) = (manager(), manager());
    let (held_tx, held_rx) = tokio::sync::oneshot::channel();
    let (wrote_tx, wrote_rx) = tokio::sync::oneshot::channel::<()>();
    let (k, s, plain) = (record.clone(), store.clone(), resource.url());
    let a_task = tokio::spawn(async move {
        let lock = a.acquire(&k, WAIT).await.expect("A");
        let fence = lock.fence().unwrap();
        assert_eq!(s.write(&k, fence, "A").await.unwrap(), Write::Accepted);
        let _ = held_tx.send(lock.valid_until());
        // The pause: past validity, and until B has written.
        tokio::time::sleep(lock.remaining() + Duration::from_millis(50)).await;
        wrote_rx.await.unwrap();
        assert!(!lock.is_valid());
        let late = s.write(&k, fence, "A, late").await.unwrap();
        let mut conn = redis::Client::open(plain).unwrap();
        let _: () = redis::cmd("SET")
            .arg(format!("{k}:unfenced"))
            .arg("A, late")
            .query(&mut conn)
            .unwrap();
        (fence, late)
    });

    let a_valid_until = held_rx.await.unwrap();
    let lock = b
        .acquire(&record, WAIT)
        .await
        .expect("B, once A's keys expired");
    assert!(
        std::time::Instant::now() >= a_valid_until,
        "B got the lock only after A's validity ended"
    );
    let fence_b = lock.fence().unwrap();
    assert_eq!(
        store.write(&record, fence_b, "B").await.unwrap(),
        Write::Accepted
    );
    resource.set(&format!("{record}:unfenced"), "B", 60_000);
    wrote_tx.send(()).unwrap();

    let (fence_a, late) = a_task.await.unwrap();
    assert!(fence_a < fence_b, "{fence_a} then {fence_b}");
    assert_eq!(
        late,
        Write::Refused { highest: fence_b },
        "A's late write is refused"
    );
    assert_eq!(
        store.read(&record).await.unwrap(),
        Some((fence_b, "B".to_owned())),
        "the store holds B's data"
    );
    assert_eq!(
        resource.get(&format!("{record}:unfenced")).as_deref(),
        Some("A, late"),
        "without a fence check, A's late write overwrites B's"
    );
    b.release(&lock).await.unwrap();
}
