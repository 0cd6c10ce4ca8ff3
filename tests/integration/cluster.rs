//! Quorum members that are Redis Clusters (issue #15): local clusters of 3
//! masters (`LocalRedisCluster`: `redis-server --cluster-enabled yes` and
//! `redis-cli --cluster create`), many distinct keys over every shard of
//! every member, the history checker, and the faults of a cluster: a shard
//! master killed, a slot migrated while locks are held (ASK, then MOVED), a
//! member entirely down. Each run is time-bounded (about 2 s).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use redlock_wasm::local::LocalRedisCluster;
use redlock_wasm::{Check, Error, Level, NodeError, Redlock, Verdict, key_slot};

use crate::support::history::{Fenced, History, fence_violations};
use crate::support::{Inspect, key, one_failed_attempt, start_node};

const TTL: Duration = Duration::from_millis(500);
const NODE_TIMEOUT: Duration = Duration::from_millis(50);
const WAIT: Duration = Duration::from_millis(300);
const CLIENTS: usize = 12;
/// Distinct keys each run spreads over (the hot ones are contended).
const KEYS: usize = 3000;
const HOT: usize = 8;

fn start_clusters(n: usize) -> Vec<LocalRedisCluster> {
    (0..n)
        .map(|_| LocalRedisCluster::start(3).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

/// `n` clusters a fault can reach from the workload's thread, and their URLs.
fn shared_clusters(n: usize) -> (Arc<Mutex<Vec<LocalRedisCluster>>>, Vec<String>) {
    let clusters = start_clusters(n);
    let urls = clusters.iter().map(LocalRedisCluster::url).collect();
    (Arc::new(Mutex::new(clusters)), urls)
}

fn manager(urls: &[String]) -> Redlock {
    Redlock::builder()
        .nodes(urls.iter().cloned())
        .ttl(TTL)
        .node_timeout(NODE_TIMEOUT)
        .retry_delay(Duration::from_millis(5))
        .retry_jitter(Duration::from_millis(20))
        .fencing(true)
        .build()
        .unwrap()
}

/// What a workload did.
#[derive(Debug, Default)]
struct Outcome {
    acquired: u64,
    failed: u64,
    overlaps: usize,
    fences_out_of_order: usize,
    /// Distinct keys acquired at least once.
    keys_acquired: usize,
    /// Acquired keys per (member, master) of the cluster members.
    per_shard: Vec<Vec<usize>>,
    /// Acquisitions after the fault began.
    acquired_after_fault: u64,
}

/// Runs `CLIENTS` clients for `run` over `names` (half of the picks from
/// the first `HOT` names), with `fault` started after a quarter of the run.
async fn workload(
    urls: Vec<String>,
    names: Arc<Vec<String>>,
    run: Duration,
    fault: impl FnOnce() + Send + 'static,
) -> (Outcome, Vec<String>) {
    let history = Arc::new(History::new());
    let fences: Arc<Mutex<HashMap<String, Vec<Fenced>>>> = Default::default();
    let acquired = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let after = Arc::new(AtomicU64::new(0));
    let fault_at = Instant::now() + run / 4;
    let stop_at = Instant::now() + run;
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        let r = manager(&urls);
        let (history, fences, names) = (history.clone(), fences.clone(), names.clone());
        let (acquired, failed, after) = (acquired.clone(), failed.clone(), after.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                let k = {
                    let mut rng = rand::rng();
                    let i = if rng.random_bool(0.5) {
                        rng.random_range(0..HOT.min(names.len()))
                    } else {
                        rng.random_range(0..names.len())
                    };
                    names[i].clone()
                };
                let start = Instant::now();
                match r.acquire(&k, WAIT).await {
                    Ok(lock) => {
                        let returned = Instant::now();
                        history.hold(id, &k, lock.token(), returned, lock.valid_until());
                        fences
                            .lock()
                            .unwrap()
                            .entry(k.clone())
                            .or_default()
                            .push(Fenced {
                                client: id,
                                start,
                                returned,
                                fence: lock.fence().expect("fencing is on"),
                            });
                        acquired.fetch_add(1, Ordering::Relaxed);
                        if returned > fault_at {
                            after.fetch_add(1, Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        history.release(lock.token(), Instant::now());
                        let _ = r.release(&lock).await;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            r.settle(Duration::from_secs(1)).await;
        }));
    }
    let f = tokio::spawn(async move {
        tokio::time::sleep_until(fault_at.into()).await;
        tokio::task::spawn_blocking(fault).await.unwrap();
    });
    for t in tasks {
        t.await.expect("client");
    }
    f.await.expect("fault");
    let fences = fences.lock().unwrap();
    let keys: Vec<String> = fences.keys().cloned().collect();
    let outcome = Outcome {
        acquired: acquired.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        overlaps: history.overlaps().len(),
        fences_out_of_order: fences.values().map(|h| fence_violations(h).len()).sum(),
        keys_acquired: fences.len(),
        per_shard: Vec::new(),
        acquired_after_fault: after.load(Ordering::Relaxed),
    };
    (outcome, keys)
}

/// Acquired keys per master of each cluster, by the slot map now.
fn per_shard(clusters: &[LocalRedisCluster], keys: &[String]) -> Vec<Vec<usize>> {
    clusters
        .iter()
        .map(|c| {
            let mut owner: HashMap<u16, Option<usize>> = HashMap::new();
            let mut counts = vec![0; c.masters().len()];
            for k in keys {
                let slot = key_slot(k);
                let m = *owner.entry(slot).or_insert_with(|| c.master_of_slot(slot));
                if let Some(m) = m {
                    counts[m] += 1;
                }
            }
            counts
        })
        .collect()
}

/// The slots master `m` serves (one range: `--cluster create` assigns
/// contiguous ranges).
fn slot_range(c: &LocalRedisCluster, m: usize) -> std::ops::RangeInclusive<u16> {
    let mine: Vec<u16> = (0..16384u16)
        .step_by(64)
        .filter(|s| c.master_of_slot(*s) == Some(m))
        .collect();
    *mine.first().unwrap()..=*mine.last().unwrap()
}

fn names(prefix: &str, n: usize) -> Arc<Vec<String>> {
    let base = key(prefix);
    Arc::new((0..n).map(|i| format!("{base}:{i}")).collect())
}

/// Three cluster members of three masters: thousands of distinct keys on
/// every shard of every member, no overlap and fences in order per key, and
/// the keys spread evenly over the shards (printed; each shard within 10 %
/// of its share). Control: the checker finds overlaps in an unsafe lock
/// (`scenarios::checker_catches_an_unsafe_lock`).
/// Negative control, run once by hand: with the fence counter of a cluster
/// member named `<key>:fence` (another slot than the key), every fenced
/// script failed (CROSSSLOT) and this test failed with 0 acquisitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_members_exclude_over_many_keys_on_every_shard() {
    let clusters = start_clusters(3);
    let urls: Vec<String> = clusters.iter().map(LocalRedisCluster::url).collect();
    let names = names("cl-healthy", KEYS);
    let (mut o, keys) = workload(urls, names.clone(), Duration::from_secs(2), || {}).await;
    o.per_shard = per_shard(&clusters, &keys);
    let spread = per_shard(&clusters, &names);
    println!("healthy: {o:?}; all {KEYS} keys per shard: {spread:?}");
    assert_eq!((o.overlaps, o.fences_out_of_order), (0, 0), "{o:?}");
    // Bounds loose enough for a loaded 2-core machine (the full suite).
    assert!(
        o.acquired > 100 && o.acquired > o.failed && o.keys_acquired > 50,
        "{o:?}"
    );
    assert!(
        o.per_shard.iter().flatten().all(|&c| c > 10),
        "every shard of every member granted: {o:?}"
    );
    for (m, counts) in spread.iter().enumerate() {
        let share = KEYS as f64 / counts.len() as f64;
        for (s, &c) in counts.iter().enumerate() {
            assert!(
                (c as f64 - share).abs() < share * 0.1,
                "member {m} shard {s}: {c} keys of {KEYS} ({counts:?})"
            );
        }
    }
}

/// A shard master of one member killed a quarter of the way in: that
/// member fails for the slots of that shard, the quorum (2 of 3) holds, so
/// keys of every slot are still acquired, and nothing overlaps.
/// Negative control, run once by hand: with the fence counter of a cluster
/// member named `<key>:fence` (another slot than the key), no key was
/// acquired after the kill and this test failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shard_master_costs_only_its_slots_on_its_member() {
    let (clusters, urls) = shared_clusters(3);
    let per_shard_before: Vec<std::ops::RangeInclusive<u16>> = {
        let cs = clusters.lock().unwrap();
        (0..3).map(|m| slot_range(&cs[0], m)).collect()
    };
    let c = clusters.clone();
    let (o, keys) = workload(
        urls,
        names("cl-shard-killed", KEYS),
        Duration::from_secs(2),
        move || {
            c.lock().unwrap()[0].master_mut(1).kill();
        },
    )
    .await;
    println!("shard master killed: {o:?}");
    assert_eq!((o.overlaps, o.fences_out_of_order), (0, 0), "{o:?}");
    assert!(
        o.acquired_after_fault > 100,
        "progress after the kill: {o:?}"
    );
    // Keys of the dead shard's slots were still acquired (on members 1 and
    // 2): master 1 of member 0 served them until the kill.
    let dead = &per_shard_before[1];
    let acquired_dead = keys.iter().filter(|k| dead.contains(&key_slot(k))).count();
    println!("keys of the dead shard's slots acquired: {acquired_dead}");
    assert!(
        acquired_dead > 50,
        "{acquired_dead} keys of the dead shard's slots acquired"
    );
}

/// A whole member down a quarter of the way in: the two other members are
/// a quorum, locks go on, nothing overlaps.
/// Negative control, run once by hand: with the fence counter of a cluster
/// member named `<key>:fence` (another slot than the key), no key was
/// acquired after the member went down and this test failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_entirely_down_leaves_a_quorum() {
    let (clusters, urls) = shared_clusters(3);
    let c = clusters.clone();
    let (o, _) = workload(
        urls,
        names("cl-member-down", KEYS),
        Duration::from_secs(2),
        move || {
            c.lock().unwrap()[2].kill_all();
        },
    )
    .await;
    println!("member down: {o:?}");
    assert_eq!((o.overlaps, o.fences_out_of_order), (0, 0), "{o:?}");
    assert!(
        o.acquired_after_fault > 50,
        "progress after the member went down: {o:?}"
    );
}

/// A slot migrated between masters of one member while a lock on a key of
/// it is held and clients keep locking other keys of that slot (one hash
/// tag): they meet ASK during the move and MOVED after it. The held lock
/// survives the move (extend and release succeed, a contender is refused),
/// and nothing overlaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migrated_while_locks_are_held() {
    let clusters = Arc::new(start_clusters(3));
    let urls: Vec<String> = clusters.iter().map(LocalRedisCluster::url).collect();
    let tag = key("cl-migrate");
    let held_key = format!("{{{tag}}}:held");
    let slot = key_slot(&held_key);
    let from = clusters[0].master_of_slot(slot).unwrap();
    let to = (from + 1) % 3;
    // The held lock outlives the run: a TTL of its own.
    let holder = Redlock::builder()
        .nodes(urls.iter().cloned())
        .ttl(Duration::from_secs(10))
        .fencing(true)
        .build()
        .unwrap();
    let held = holder.acquire(&held_key, WAIT).await.unwrap();
    let names = Arc::new(
        (0..200)
            .map(|i| format!("{{{tag}}}:{i}"))
            .collect::<Vec<_>>(),
    );
    let c = clusters.clone();
    let moved = Arc::new(AtomicU64::new(0));
    let m = moved.clone();
    let (o, _) = workload(urls.clone(), names, Duration::from_secs(2), move || {
        let n = c[0]
            .migrate_slot(slot, from, to, || {
                std::thread::sleep(Duration::from_millis(100))
            })
            .expect("migrate");
        m.store(n as u64, Ordering::Relaxed);
    })
    .await;
    println!(
        "slot {slot} migrated ({} keys moved): {o:?}",
        moved.load(Ordering::Relaxed)
    );
    assert_eq!(clusters[0].master_of_slot(slot), Some(to), "the slot moved");
    assert_eq!((o.overlaps, o.fences_out_of_order), (0, 0), "{o:?}");
    assert!(
        o.acquired_after_fault > 20,
        "progress during and after the move: {o:?}"
    );
    // The held lock moved with its key (MIGRATE keeps the TTL).
    let other = manager(&urls);
    let e = other.acquire(&held_key, Duration::from_millis(100)).await;
    assert!(matches!(e, Err(Error::UnableToAcquire(_))), "{e:?}");
    let held = holder
        .extend(&held, Duration::from_secs(5))
        .await
        .expect("extend after the move");
    holder.release(&held).await.expect("release after the move");
    other
        .acquire(&held_key, WAIT)
        .await
        .expect("free after release");
}

/// Mixed deployment: two single processes and one cluster. Fencing works
/// on the cluster member for keys with and without a hash tag (the counter
/// shares the key's slot: `{key}:fence`, or `key:fence` for a tagged key),
/// and `shards` names the slot and the master that holds each key. A key
/// with a `}` and no hash tag is refused on the cluster member before any
/// I/O for a fenced acquire (the other members still grant).
/// Negative control, run once by hand: with the fence counter of a cluster
/// member named `<key>:fence` (another slot than the key), the cluster
/// member never held a key and this test failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_members_and_fences_on_a_cluster() {
    let (a, b) = (start_node(), start_node());
    let c = LocalRedisCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let urls = vec![a.url(), c.url(), b.url()];
    let r = manager(&urls);
    for k in [key("cl-mixed"), format!("{{{}}}:job", key("cl-mixed-tag"))] {
        let first = r.acquire(&k, WAIT).await.unwrap();
        r.release(&first).await.unwrap();
        let second = r.acquire(&k, WAIT).await.unwrap();
        assert!(
            second.fence() > first.fence(),
            "{k}: {first:?} then {second:?}"
        );
        // Granted by all three members, the cluster included (the last
        // member's reply may come after the quorum's).
        r.settle(Duration::from_secs(1)).await;
        let states = r.nodes().inspect(&k).await;
        assert!(
            states
                .iter()
                .all(|s| s.as_ref().unwrap().holder.as_deref() == Some(second.token()))
        );
        let shards = r.nodes().shards(&k).await;
        assert!(shards[0].is_none() && shards[2].is_none());
        let shard = shards[1].clone().unwrap().unwrap();
        let master = c.master_of_slot(key_slot(&k)).unwrap();
        assert_eq!(shard.slot, key_slot(&k));
        assert_eq!(
            shard.master,
            Some(format!("127.0.0.1:{}", c.masters()[master].port()))
        );
        r.release(&second).await.unwrap();
    }
    let odd = format!("{}}}x", key("cl-odd"));
    let lock = r
        .acquire(&odd, WAIT)
        .await
        .expect("the two single members grant");
    let states = r.nodes().inspect(&odd).await;
    assert_eq!(
        states[1].as_ref().unwrap().holder,
        None,
        "refused on the cluster"
    );
    r.release(&lock).await.unwrap();
}

/// Two members that share a seed are one cluster: refused when built,
/// before any I/O, as a server listed twice is.
#[test]
fn members_sharing_a_seed_are_refused() {
    let e = Redlock::builder()
        .nodes([
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
            "redis://127.0.0.1:7100",
            "redis+cluster://127.0.0.1:7002,127.0.0.1:7001",
        ])
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("listed twice"), "{e}");
}

/// Two members that name different seeds of one cluster share no seed, so
/// the builder cannot tell them apart; when they connect, their node ids
/// (`CLUSTER NODES`) show one cluster. With the third member dead, the later
/// of the two never counts, so no quorum of 2 sits on one cluster; the next
/// call is refused as a configuration error naming both. Negative control,
/// run once by hand: without the node-id check, the acquire succeeded on the
/// one live cluster.
#[tokio::test]
async fn one_cluster_under_two_members_never_counts_twice() {
    let c = LocalRedisCluster::start(3).unwrap_or_else(|e| panic!("{e}"));
    let seed = |i: usize| format!("redis+cluster://127.0.0.1:{}", c.masters()[i].port());
    let dead = crate::support::free_port();
    let r = Redlock::builder()
        .nodes([seed(0), seed(1), format!("redis://127.0.0.1:{dead}")])
        .ttl(Duration::from_secs(10))
        .node_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let k = key("same-cluster");
    let f = one_failed_attempt(&r, &k, Duration::from_secs(2)).await;
    assert!(
        f.nodes.iter().any(|n| matches!(&n.outcome,
            redlock_wasm::Outcome::Failed(NodeError::Other(m)) if m.contains("same Redis Cluster"))),
        "{f}"
    );
    let err = r.acquire(&k, Duration::from_secs(1)).await.unwrap_err();
    let Error::Config(m) = &err else {
        panic!("{err:?}")
    };
    for i in 0..2 {
        let port = c.masters()[i].port();
        assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}");
    }
    r.settle(Duration::from_secs(1)).await;
    let owner = c.master_of_slot(key_slot(&k)).unwrap();
    assert_eq!(c.masters()[owner].get(&k), None, "nothing left");
}

/// The deployment check asks every master that serves slots, not only the
/// seed the URL names: a shard with an evicting policy is the one warning,
/// named with its slots, on the library's report and in `redlock doctor`'s
/// table; two members that name one cluster by different seeds share run
/// ids and make the verdict unusable. Negative control, run once by hand:
/// checking the first seed only, the evicting shard (not a seed) passed as
/// noeviction and the shared cluster as unique.
#[tokio::test]
async fn the_deployment_check_asks_every_shard() {
    let clusters = start_clusters(2);
    let single = start_node();
    let evicting = &clusters[0].masters()[2];
    let _: () = evicting
        .cmd(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])
        .unwrap();
    let seed = |c: usize, m: usize| {
        format!(
            "redis+cluster://127.0.0.1:{}",
            clusters[c].masters()[m].port()
        )
    };
    let check = |urls: Vec<String>| async move {
        Redlock::builder()
            .nodes(urls)
            .node_timeout(Duration::from_secs(1))
            .build()
            .unwrap()
            .check()
            .await
    };

    let r = check(vec![seed(0, 0), clusters[1].url(), single.url()]).await;
    assert_eq!(
        r.nodes.iter().map(|n| n.shards.len()).collect::<Vec<_>>(),
        [3, 3, 0],
        "{r:#?}"
    );
    let shard = &r.nodes[0].shards[2];
    assert_eq!(
        shard.addr.to_string(),
        format!("127.0.0.1:{}", evicting.port())
    );
    let slots = shard.slots.clone().unwrap();
    assert!(slots.ends_with("-16383"), "{slots}");
    let problems: Vec<_> = r
        .problems()
        .map(|(n, f)| (n.index, f.what, f.level))
        .collect();
    assert_eq!(problems, [(0, Check::Eviction, Level::Warning)], "{r:#?}");
    let f = r.nodes[0].finding(Check::Eviction).unwrap();
    assert_eq!(
        f.summary,
        format!("allkeys-lru on 127.0.0.1:{}", evicting.port())
    );
    assert!(
        f.detail.contains(&format!("(slots {slots})")),
        "{}",
        f.detail
    );
    assert_eq!((r.verdict, r.usable), (Verdict::Warnings, 3));

    let o = crate::cli::output({
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_redlock"));
        cmd.env_remove("REDLOCK_LOG").args([
            "--node",
            &seed(0, 0),
            "--node",
            &clusters[1].url(),
            "--node",
            &single.url(),
            "doctor",
            "--node-timeout",
            "1s",
        ]);
        cmd
    });
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(3), "{text}{}", crate::cli::stderr(&o));
    let row = format!("  shard 127.0.0.1:{} [{slots}]", evicting.port());
    assert!(text.contains(&row), "{text}");

    let r = check(vec![seed(1, 0), seed(1, 1), single.url()]).await;
    assert_eq!(r.verdict, Verdict::Unusable, "{r:#?}");
    assert!(r.reasons[0].contains("share a server"), "{:?}", r.reasons);
    for n in 0..2 {
        let f = r.nodes[n].finding(Check::Duplicate).unwrap();
        assert_eq!(f.level, Level::Unusable, "{f:?}");
    }
}
