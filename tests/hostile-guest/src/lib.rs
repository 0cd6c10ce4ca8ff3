//! A component with the lock core's world that misbehaves on purpose, for
//! the host's sandbox tests. `acquire`'s key picks the misbehaviour; a
//! parameter follows a `:`.
//!
//! Runaways, each meant to be stopped by one sandbox limit:
//! - `spin`: an infinite loop (the time cap);
//! - `imports`: calls an import in a tight loop forever (the time cap);
//! - `alloc`: allocates without bound (the memory cap);
//! - `grow:BYTES`: grows its linear memory to BYTES and says how big it is
//!   (the memory cap, to the page);
//! - `leak`: creates fan-outs forever, never dropping them (the cap
//!   on live resources);
//! - `flood`: sends one operation to a million nodes (the host refuses a
//!   list longer than its node count);
//! - `forget`: leaves three fan-outs alive and returns (its instance
//!   must not be reused).
//!
//! Capabilities the core must not have; each reports what it saw as the
//! `invalid-argument` text, for the host test to check:
//! - `fs-read:PATH` / `fs-write:PATH`: `std::fs`;
//! - `env`: `std::env::vars` and `std::env::args`;
//! - `tcp:PORT` / `udp:PORT`: a wasi:sockets connection / datagram to
//!   127.0.0.1:PORT;
//! - `lookup:NAME`: a wasi:sockets ip-name-lookup of NAME.
//!
//! `whoami` names the instance (a random id drawn on its first call) and
//! counts its calls; `forget` names its instance too. Anything else returns
//! `invalid-argument` "benign" at once.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        // The lock core's world plus the sockets the real core never
        // imports, so this one can try them.
        inline: "
            package redlock:hostile;

            world hostile-core {
                include redlock:core/lock-core@0.2.0;
                import wasi:sockets/instance-network@0.2.12;
                import wasi:sockets/tcp-create-socket@0.2.12;
                import wasi:sockets/udp-create-socket@0.2.12;
                import wasi:sockets/ip-name-lookup@0.2.12;
            }
        ",
        path: "../../wit",
        world: "redlock:hostile/hostile-core",
        generate_all,
    });

    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use exports::redlock::core::redlock as api;
    use redlock::core::redis_node as node;
    use wasi::io::poll::poll;
    use wasi::sockets::network::{ErrorCode, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress};
    use wasi::sockets::{
        instance_network, ip_name_lookup, tcp_create_socket, udp, udp_create_socket,
    };

    struct Hostile;

    /// A set-if-absent of token "t" for a second.
    fn set() -> node::Operation {
        node::Operation::SetIfAbsent(node::Lease {
            token: "t".into(),
            ttl_ms: 1000,
        })
    }

    /// This instance's id, drawn on its first call (0: not yet).
    static INSTANCE: AtomicU64 = AtomicU64::new(0);
    /// Calls this instance has served.
    static CALLS: AtomicU32 = AtomicU32::new(0);

    fn instance() -> u64 {
        let id = INSTANCE.load(Ordering::Relaxed);
        if id != 0 {
            return id;
        }
        let id = wasi::random::random::get_random_u64() | 1;
        INSTANCE.store(id, Ordering::Relaxed);
        id
    }

    fn said(text: impl Into<String>) -> Result<api::Lock, api::Error> {
        Err(api::Error::InvalidArgument(text.into()))
    }

    fn loopback(port: &str) -> Result<IpSocketAddress, String> {
        let port = port.parse().map_err(|e| format!("port {port:?}: {e}"))?;
        Ok(IpSocketAddress::Ipv4(Ipv4SocketAddress {
            port,
            address: (127, 0, 0, 1),
        }))
    }

    fn code(step: &str, e: ErrorCode) -> String {
        format!("{step}: {}", e.name())
    }

    /// Tries a TCP connection to 127.0.0.1:`port`; says how far it got.
    fn tcp(port: &str) -> String {
        let addr = match loopback(port) {
            Ok(a) => a,
            Err(e) => return e,
        };
        let socket = match tcp_create_socket::create_tcp_socket(IpAddressFamily::Ipv4) {
            Ok(s) => s,
            Err(e) => return code("create-tcp-socket", e),
        };
        let network = instance_network::instance_network();
        if let Err(e) = socket.start_connect(&network, addr) {
            return code("start-connect", e);
        }
        let ready = socket.subscribe();
        poll(&[&ready]);
        drop(ready);
        match socket.finish_connect() {
            Ok((input, output)) => {
                drop((input, output));
                "connected".into()
            }
            Err(e) => code("finish-connect", e),
        }
    }

    /// Tries to send a datagram to 127.0.0.1:`port`; says how far it got.
    fn udp(port: &str) -> String {
        let addr = match loopback(port) {
            Ok(a) => a,
            Err(e) => return e,
        };
        let socket = match udp_create_socket::create_udp_socket(IpAddressFamily::Ipv4) {
            Ok(s) => s,
            Err(e) => return code("create-udp-socket", e),
        };
        let network = instance_network::instance_network();
        let any = IpSocketAddress::Ipv4(Ipv4SocketAddress {
            port: 0,
            address: (0, 0, 0, 0),
        });
        if let Err(e) = socket.start_bind(&network, any) {
            return code("start-bind", e);
        }
        let ready = socket.subscribe();
        poll(&[&ready]);
        drop(ready);
        if let Err(e) = socket.finish_bind() {
            return code("finish-bind", e);
        }
        let (incoming, outgoing) = match socket.stream(Some(addr)) {
            Ok(s) => s,
            Err(e) => return code("stream", e),
        };
        let said = match outgoing.check_send() {
            Err(e) => code("check-send", e),
            Ok(_) => match outgoing.send(&[udp::OutgoingDatagram {
                data: b"hostile".to_vec(),
                remote_address: None,
            }]) {
                Ok(n) => format!("sent {n}"),
                Err(e) => code("send", e),
            },
        };
        drop((incoming, outgoing));
        said
    }

    /// Tries to resolve `name`; says what it got.
    fn lookup(name: &str) -> String {
        let network = instance_network::instance_network();
        let stream = match ip_name_lookup::resolve_addresses(&network, name) {
            Ok(s) => s,
            Err(e) => return code("resolve-addresses", e),
        };
        loop {
            match stream.resolve_next_address() {
                Ok(Some(ip)) => return format!("resolved {ip:?}"),
                Ok(None) => return "resolved to nothing".into(),
                Err(ErrorCode::WouldBlock) => {
                    let ready = stream.subscribe();
                    poll(&[&ready]);
                }
                Err(e) => return code("resolve-next-address", e),
            }
        }
    }

    /// Grows memory 0 to `bytes` (whole pages); says how big it is then.
    fn grow(bytes: &str) -> String {
        const PAGE: usize = 64 * 1024;
        let Ok(bytes) = bytes.parse::<usize>() else {
            return format!("bytes {bytes:?}");
        };
        let want = bytes.div_ceil(PAGE);
        let have = core::arch::wasm32::memory_size(0);
        if want > have && core::arch::wasm32::memory_grow(0, want - have) == usize::MAX {
            return format!("memory.grow to {want} pages refused");
        }
        let pages = core::arch::wasm32::memory_size(0);
        format!("memory is {pages} pages ({} bytes)", pages * PAGE)
    }

    fn io<T>(what: &str, r: std::io::Result<T>) -> String {
        match r {
            Ok(_) => format!("{what}: ok"),
            Err(e) => format!("{what}: {:?}: {e}", e.kind()),
        }
    }

    impl api::Guest for Hostile {
        fn acquire(
            key: String,
            _options: api::Options,
            _budget_ms: Option<u64>,
        ) -> Result<api::Lock, api::Error> {
            let calls = CALLS.fetch_add(1, Ordering::Relaxed) + 1;
            let (what, arg) = key.split_once(':').unwrap_or((key.as_str(), ""));
            match what {
                "spin" => {
                    let mut x: u64 = 0;
                    loop {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                "alloc" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                    }
                }
                "grow" => said(grow(arg)),
                "imports" => loop {
                    std::hint::black_box(node::node_count());
                },
                "leak" => loop {
                    std::mem::forget(node::send(&[0], "leak", &set()));
                },
                "flood" => {
                    let nodes = vec![0u32; 1 << 20];
                    drop(node::send(&nodes, "flood", &set()));
                    said("the host took a million nodes")
                }
                "forget" => {
                    for i in 0..3 {
                        std::mem::forget(node::send(&[i], "forget", &set()));
                    }
                    said(format!("left fan-outs behind in instance {:x}", instance()))
                }
                "whoami" => said(format!("instance {:x} call {calls}", instance())),
                "fs-read" => said(io("read", std::fs::read(arg))),
                "fs-write" => said(io("write", std::fs::write(arg, b"hostile"))),
                "env" => {
                    let vars: Vec<String> = std::env::vars_os()
                        .map(|(k, _)| k.to_string_lossy().into_owned())
                        .collect();
                    let args: Vec<String> = std::env::args_os()
                        .map(|a| a.to_string_lossy().into_owned())
                        .collect();
                    said(format!("vars {vars:?} args {args:?}"))
                }
                "tcp" => said(tcp(arg)),
                "udp" => said(udp(arg)),
                "lookup" => said(lookup(arg)),
                _ => said("benign"),
            }
        }

        fn release(_lock: api::Lock, _budget_ms: Option<u64>) -> Result<(), api::Error> {
            Err(api::Error::InvalidArgument("benign".into()))
        }

        fn extend(
            _lock: api::Lock,
            _ttl_ms: u64,
            _budget_ms: Option<u64>,
        ) -> Result<api::Lock, api::Error> {
            Err(api::Error::InvalidArgument("benign".into()))
        }
    }

    export!(Hostile);
}
