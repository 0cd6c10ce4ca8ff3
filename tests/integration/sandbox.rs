//! The sandbox: a failing guest becomes a typed error and later calls work;
//! each runaway is stopped by the limit meant for it, with that limit's
//! error; the core gets no files, environment, arguments or network.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use redlock_wasm::{Error, Redlock};

use crate::support::{Cluster, eventually, key};

/// A memory cap far below what the core needs makes the call fail with
/// `Error::Core` naming the memory cap; raising it again, the next call on
/// the same manager works. Negative control, run once on a copy of
/// host/src/sandbox.rs: without `store.limiter`, the call under the 64 KiB
/// cap succeeded.
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
    // The core's initial memory alone is over the cap: instantiation fails.
    let Error::Core(msg) = &err else {
        panic!("{err:?}")
    };
    let bytes = msg
        .strip_prefix("instantiate: forcing trap when growing memory to ")
        .and_then(|m| m.strip_suffix(" bytes"))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("not the memory cap: {msg}"));
    assert!(bytes > 64 * 1024, "{msg}");
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
pub(crate) const HOSTILE: &[u8] = redlock_fixtures::HOSTILE_CORE_WASM;

/// The default memory cap, as the README states it (checked against the
/// code by `defaults::documented_defaults_are_the_code_defaults`).
const MIB_16: usize = 16 << 20;

/// A manager running the hostile core over three in-memory nodes.
fn hostile() -> redlock_wasm::RedlockBuilder {
    Redlock::builder()
        .in_memory_nodes(3)
        .ttl(Duration::from_secs(10))
        .core(HOSTILE)
}

/// What the hostile core reported for `probe` (its invalid-argument text).
async fn reported(r: &Redlock, probe: &str) -> String {
    match r.acquire(probe, Duration::from_secs(5)).await {
        Err(Error::InvalidArgument(text)) => text,
        other => panic!("{probe}: {other:?}"),
    }
}

/// The trap's innermost cause (what followed the wasm backtrace), or the
/// whole message when it is not a trap.
fn cause(msg: &str) -> &str {
    match msg.strip_prefix("error while executing at wasm backtrace:") {
        Some(rest) => rest.rsplit_once(": ").map_or(rest, |(_, c)| c),
        None => msg,
    }
}

/// Runs `probe` on `r` in a thread and runtime of its own and waits at most
/// `within` for its error: a runaway that no limit stops fails the test
/// instead of hanging it (its thread is left spinning).
async fn stopped_within(
    r: &Redlock,
    probe: &str,
    budget: Duration,
    within: Duration,
) -> (String, Duration) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (r, p) = (r.clone(), probe.to_owned());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let start = Instant::now();
        let result = rt.block_on(r.acquire(&p, budget));
        let _ = tx.send((result, start.elapsed()));
    });
    match tokio::time::timeout(within, rx).await {
        Ok(Ok((Err(Error::Core(msg)), took))) => (msg, took),
        Ok(Ok((other, _))) => panic!("{probe}: not a sandbox error: {other:?}"),
        Ok(Err(_)) => panic!("{probe}: the call's thread died"),
        Err(_) => panic!("{probe}: not stopped within {within:?}"),
    }
}

/// Each runaway is stopped by the limit meant for it, with that limit's
/// error, and the host keeps serving: an infinite loop and a tight loop of
/// imports by the time cap (budget + 500 ms, enforced through epoch
/// interruption), unbounded allocation by the memory cap (16 MiB), fan-outs
/// never dropped by the cap on live resources, a fan-out to a million nodes
/// by the host's check of the list against its node count.
///
/// Negative controls, each run once on a copy of host/src/sandbox.rs: without
/// epoch interruption (and its async yield) `spin` and `imports` were never
/// stopped ("not stopped within 3.3s"); without `store.limiter` `alloc` ended
/// in Rust's out-of-memory abort ("wasm `unreachable` instruction executed"),
/// not at the cap; without the table's `set_max_capacity` `leak` was stopped
/// by wasmtime's own "store handle limit exceeded" instead; without the
/// node-count check the host took the million-node fan-out (queued a
/// million commands for node 0) and the call returned normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cores_are_stopped_by_the_limit_meant_for_them() {
    let c = Cluster::start(3);
    let ttl = Duration::from_secs(10);
    let hostile = Redlock::builder()
        .nodes(c.urls())
        .ttl(ttl)
        .core(HOSTILE)
        .build()
        .unwrap();
    let budget = Duration::from_millis(300);
    let within = budget + Duration::from_secs(3);
    for probe in ["spin", "imports"] {
        let (msg, took) = stopped_within(&hostile, probe, budget, within).await;
        // The time cap is the core's budget (what the deadline left when the
        // call started, in whole ms rounded up, so at most 300) + 500 ms.
        let cap_ms: u64 = msg
            .strip_prefix("the lock core ran ")
            .and_then(|m| m.strip_suffix(" ms past its budget and was stopped"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{probe}: not the time cap: {msg}"));
        assert!((501..=800).contains(&cap_ms), "{probe}: {msg}");
        assert!(
            took >= Duration::from_millis(cap_ms) && took < Duration::from_millis(cap_ms + 1000),
            "{probe}: stopped after {took:?}"
        );
        served_next(&hostile, probe).await;
    }
    // Allocation without bound traps on the first growth past the cap.
    let (msg, _) = stopped_within(&hostile, "alloc", budget, within).await;
    let grown: usize = cause(&msg)
        .strip_prefix("forcing trap when growing memory to ")
        .and_then(|m| m.strip_suffix(" bytes"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("alloc: not the memory cap: {msg}"));
    assert!(
        grown > MIB_16 && grown <= MIB_16 + (2 << 20),
        "alloc: stopped growing to {grown} bytes: {msg}"
    );
    served_next(&hostile, "alloc").await;
    // Fan-outs never dropped: the resource table is full at its cap
    // long before the time cap.
    let (msg, took) = stopped_within(&hostile, "leak", budget, within).await;
    assert_eq!(
        cause(&msg),
        "resource table has no free keys",
        "leak: {msg}"
    );
    assert!(took < budget, "leak: stopped after {took:?}");
    served_next(&hostile, "leak").await;
    // A fan-out to more nodes than there are: refused before the host
    // allocates or sends anything for it.
    let (msg, took) = stopped_within(&hostile, "flood", budget, within).await;
    assert!(
        msg.contains("redis-node.send: 1048576 nodes listed, 3 configured"),
        "flood: {msg}"
    );
    assert!(took < budget, "flood: stopped after {took:?}");
    served_next(&hostile, "flood").await;

    // The real core in the same process is unaffected.
    let normal = Redlock::new(c.urls(), ttl).unwrap();
    let lock = normal
        .acquire(&key("after-hostile"), Duration::from_secs(1))
        .await
        .unwrap();
    normal.release(&lock).await.unwrap();
    eventually("the hostile core's SETs are gone", || c.total_keys() == 0).await;
}

/// The same manager serves the next call, on a fresh instance.
async fn served_next(hostile: &Redlock, after: &str) {
    let next = hostile
        .acquire("benign", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(next, Error::InvalidArgument(ref m) if m == "benign"),
        "after {after}: {next:?}"
    );
}

/// The instance id in a `whoami` or `forget` report.
fn instance_of(report: &str) -> String {
    report
        .split_whitespace()
        .skip_while(|w| *w != "instance")
        .nth(1)
        .unwrap_or_else(|| panic!("no instance in {report:?}"))
        .to_owned()
}

/// A call that returns normally but leaves resources behind is not reused:
/// three such calls run in three different instances and no later call runs
/// in any of them, while a clean instance is reused (the check can see reuse).
///
/// Negative control, run once: with `checkin` keeping an instance whatever
/// its table holds, the second `forget` ran in the first one's instance
/// ("instance ... reused after it left resources behind").
#[tokio::test]
async fn a_core_that_leaves_resources_behind_is_not_reused() {
    // A memory cap no other test uses: idle instances are kept per cap, so
    // no other test's instance mixes with this one's.
    let r = hostile().memory_limit(MIB_16 + (1 << 20)).build().unwrap();
    let first = reported(&r, "whoami").await;
    let again = reported(&r, "whoami").await;
    assert_eq!(
        instance_of(&again),
        instance_of(&first),
        "a clean instance is reused: {first} / {again}"
    );
    assert!(again.ends_with(" call 2"), "{again}");

    let mut forgetful = Vec::new();
    for _ in 0..3 {
        let said = reported(&r, "forget").await;
        assert!(
            said.starts_with("left fan-outs behind in instance "),
            "{said}"
        );
        let id = instance_of(&said);
        assert!(
            !forgetful.contains(&id),
            "instance {id} reused after it left resources behind"
        );
        forgetful.push(id);
    }
    assert_eq!(
        forgetful[0],
        instance_of(&first),
        "the clean one ran the first"
    );
    for _ in 0..3 {
        let said = reported(&r, "whoami").await;
        assert!(
            !forgetful.contains(&instance_of(&said)),
            "{said} left resources behind"
        );
    }
}

/// The core cannot read or write files: with no directory preopened, every
/// path is "not found" to it (std::fs through wasi-libc), /etc/passwd and a
/// file the test made alike, and nothing it writes reaches the host.
///
/// Negative control, run once: with `/` preopened read-write, the core read
/// /etc/passwd ("read: ok").
#[tokio::test]
async fn hostile_core_reaches_no_file() {
    let r = hostile().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret").unwrap();
    let written = dir.path().join("written");
    let not_found = "NotFound: No such file or directory (os error 44)";
    for path in [std::path::Path::new("/etc/passwd"), &secret] {
        assert!(path.exists(), "the host has {}", path.display());
        let said = reported(&r, &format!("fs-read:{}", path.display())).await;
        assert_eq!(said, format!("read: {not_found}"), "{}", path.display());
    }
    let said = reported(&r, &format!("fs-write:{}", written.display())).await;
    assert_eq!(said, format!("write: {not_found}"));
    assert!(!written.exists(), "the core wrote a file on the host");
}

/// The core sees no environment variable and no argument, though the host
/// process has both.
///
/// Negative control, run once: with `inherit_env()` and `inherit_args()`, the
/// core listed the test process's variables (PATH, HOME, CARGO_*) and arguments.
#[tokio::test]
async fn hostile_core_sees_no_environment_or_arguments() {
    assert!(std::env::vars_os().next().is_some() && std::env::args_os().next().is_some());
    let r = hostile().build().unwrap();
    assert_eq!(reported(&r, "env").await, "vars [] args []");
}

/// The core has no network: creating a TCP or UDP socket is access-denied
/// (so a loopback listener and a UDP socket hear nothing from it) and a
/// name lookup fails at once; the host then reaches both sockets itself (the
/// check can see a connection).
///
/// Negative control, run once: with TCP, UDP and lookups allowed and
/// `inherit_network()`, the core connected ("connected", and the listener
/// accepted it), its datagram arrived, and it resolved localhost to 127.0.0.1.
#[tokio::test]
async fn hostile_core_has_no_network() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let tcp_port = listener.local_addr().unwrap().port();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let udp_port = udp.local_addr().unwrap().port();

    let r = hostile().build().unwrap();
    assert_eq!(
        reported(&r, &format!("tcp:{tcp_port}")).await,
        "create-tcp-socket: access-denied"
    );
    assert_eq!(
        reported(&r, &format!("udp:{udp_port}")).await,
        "create-udp-socket: access-denied"
    );
    for name in ["localhost", "example.com", "127.0.0.1"] {
        assert_eq!(
            reported(&r, &format!("lookup:{name}")).await,
            "resolve-addresses: permanent-resolver-failure",
            "{name}"
        );
    }
    // Anything the core had sent would have arrived by now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let accepted = listener.accept().map(|(_, from)| from);
    assert!(
        matches!(&accepted, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the listener saw a connection: {accepted:?}"
    );
    let mut buf = [0u8; 64];
    let got = udp.recv_from(&mut buf);
    assert!(
        matches!(&got, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the UDP socket got a datagram: {got:?}"
    );

    // The control: the same checks do see the host's own connection and datagram.
    let _conn = TcpStream::connect(("127.0.0.1", tcp_port)).unwrap();
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"host", ("127.0.0.1", udp_port))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        listener.accept().is_ok(),
        "the listener can see a connection"
    );
    assert!(
        udp.recv_from(&mut buf).is_ok(),
        "the UDP socket can see a datagram"
    );
}
