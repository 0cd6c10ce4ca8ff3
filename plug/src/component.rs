//! The `redis-node` export over `wasi:sockets`.
//!
//! One TCP connection per node, opened on first use and kept for the life of
//! the instance. Requests are pipelined: each appends its RESP command to the
//! connection's output buffer and a slot to its FIFO queue; replies arrive in
//! order and complete the slots front to back. Nothing here blocks (except a
//! one-time DNS lookup for a node given by name): the lock core waits on the
//! pollables this module hands out, and every `get` makes as much progress as
//! the socket allows (finish connecting, write, read, parse).
//!
//! A pending reply's pollable is the socket's while connecting, the output
//! stream's while its bytes are unsent, else the input stream's; once the
//! reply is known, an already-elapsed clock. The core subscribes again when a
//! wake-up was progress but not yet its reply (see `pending-reply` in the WIT).
//!
//! Resource lifetimes: those pollables are children of the socket and its
//! streams, so a connection stays alive while any pending reply that may have
//! handed one out is alive (the core drops pollables before pending replies).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use crate::config::{self, Endpoint, Host};
use crate::resp::{self, Expect, Meaning};

wit_bindgen::generate!({
    world: "redis-node-plug",
    path: "../wit",
    generate_all,
});

use exports::redlock::core::redis_node::{self as api, NodeError, Reply};
use wasi::clocks::monotonic_clock;
use wasi::io::poll::{Pollable, poll};
use wasi::io::streams::{InputStream, OutputStream, StreamError};
use wasi::sockets::network::{
    ErrorCode, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress, Network,
};
use wasi::sockets::tcp::TcpSocket;
use wasi::sockets::{instance_network, ip_name_lookup, tcp_create_socket};

const DELETE_IF_TOKEN: &str = include_str!("../../lua/delete-if-token.lua");
const EXTEND_IF_TOKEN: &str = include_str!("../../lua/extend-if-token.lua");

const MS: u64 = 1_000_000;
/// A connection still connecting after this long is given up at the next
/// request to its node, which opens a new one.
const CONNECT_STALE_NS: u64 = 1_000 * MS;
/// A connection whose oldest request has waited this long for its reply is
/// given up at the next request to its node (a hung or partitioned node).
const REPLY_STALE_NS: u64 = 2_000 * MS;
/// Longest wait for a DNS answer for a node given by name.
const LOOKUP_TIMEOUT_NS: u64 = 1_000 * MS;
/// Most unsent bytes per connection; beyond, requests fail at once.
const MAX_UNSENT: usize = 1024 * 1024;
/// Most requests awaiting replies per connection.
const MAX_QUEUED: usize = 4096;
/// Largest read per call.
const READ_CHUNK: u64 = 64 * 1024;

struct Plug {
    nodes: Vec<Node>,
    network: Option<Network>,
}

struct Node {
    endpoint: Result<Endpoint, String>,
    resolved: Option<IpSocketAddress>,
    conn: Option<Rc<RefCell<Conn>>>,
}

thread_local! {
    static PLUG: RefCell<Plug> = RefCell::new(Plug::from_env());
}

impl Plug {
    fn from_env() -> Self {
        let list = std::env::var(config::NODES_VAR).unwrap_or_default();
        let nodes = config::parse_nodes(&list)
            .into_iter()
            .map(|endpoint| Node {
                endpoint,
                resolved: None,
                conn: None,
            })
            .collect();
        Plug {
            nodes,
            network: None,
        }
    }

    fn network(&mut self) -> &Network {
        self.network
            .get_or_insert_with(instance_network::instance_network)
    }

    /// The live connection to `node`, opening one when there is none or the
    /// last one broke or went stale; true when it was already open.
    fn conn(&mut self, node: u32) -> Result<(Rc<RefCell<Conn>>, bool), NodeError> {
        let count = self.nodes.len();
        let now = monotonic_clock::now();
        let Some(n) = self.nodes.get_mut(node as usize) else {
            return Err(NodeError::Other(format!(
                "no node {node}: {} lists {count}",
                config::NODES_VAR
            )));
        };
        if let Some(c) = &n.conn {
            if c.borrow_mut().usable(now) {
                return Ok((c.clone(), true));
            }
            n.conn = None;
        }
        let endpoint = n.endpoint.clone().map_err(NodeError::Other)?;
        let addr = match self.nodes[node as usize].resolved {
            Some(a) => a,
            None => {
                let a = resolve(self.network(), &endpoint)?;
                self.nodes[node as usize].resolved = Some(a);
                a
            }
        };
        let conn = Conn::open(self.network(), &endpoint, addr, now)?;
        let conn = Rc::new(RefCell::new(conn));
        self.nodes[node as usize].conn = Some(conn.clone());
        Ok((conn, false))
    }
}

/// The socket address of `e`, resolving a name (once per node).
fn resolve(network: &Network, e: &Endpoint) -> Result<IpSocketAddress, NodeError> {
    let ip = match &e.host {
        Host::Ip(ip) => *ip,
        Host::Name(name) => lookup(network, name)
            .map_err(|why| NodeError::Connection(format!("resolve {name}: {why}")))?,
    };
    Ok(match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            IpSocketAddress::Ipv4(Ipv4SocketAddress {
                port: e.port,
                address: (a, b, c, d),
            })
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            IpSocketAddress::Ipv6(Ipv6SocketAddress {
                port: e.port,
                flow_info: 0,
                address: (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
                scope_id: 0,
            })
        }
    })
}

fn lookup(network: &Network, name: &str) -> Result<std::net::IpAddr, String> {
    let stream = ip_name_lookup::resolve_addresses(network, name).map_err(describe)?;
    // Declared after `stream`, so dropped before it (they are its children).
    let ready = stream.subscribe();
    let timer = monotonic_clock::subscribe_duration(LOOKUP_TIMEOUT_NS);
    loop {
        match stream.resolve_next_address() {
            Ok(Some(ip)) => {
                return Ok(match ip {
                    wasi::sockets::network::IpAddress::Ipv4((a, b, c, d)) => {
                        std::net::Ipv4Addr::new(a, b, c, d).into()
                    }
                    wasi::sockets::network::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
                        std::net::Ipv6Addr::new(a, b, c, d, e, f, g, h).into()
                    }
                });
            }
            Ok(None) => return Err("no address".into()),
            Err(ErrorCode::WouldBlock) => {
                if poll(&[&ready, &timer]).contains(&1) {
                    return Err("timed out".into());
                }
            }
            Err(e) => return Err(describe(e)),
        }
    }
}

fn describe(e: ErrorCode) -> String {
    e.name().to_owned()
}

/// One request awaiting its reply.
struct Slot {
    expect: Expect,
    sent_at: u64,
    result: RefCell<Option<Reply>>,
}

impl Slot {
    fn set(&self, reply: Reply) {
        self.result.borrow_mut().get_or_insert(reply);
    }
}

enum State {
    Connecting { since: u64 },
    Open,
    Broken(NodeError),
}

/// One pipelined connection. Field order matters: the streams are children
/// of the socket and are dropped first.
struct Conn {
    streams: Option<(InputStream, OutputStream)>,
    socket: TcpSocket,
    state: State,
    label: String,
    unsent: Vec<u8>,
    received: Vec<u8>,
    queue: VecDeque<Rc<Slot>>,
}

impl Conn {
    fn open(
        network: &Network,
        endpoint: &Endpoint,
        addr: IpSocketAddress,
        now: u64,
    ) -> Result<Conn, NodeError> {
        let label = endpoint.to_string();
        let fail = |what: &str, e: ErrorCode| {
            NodeError::Connection(format!("{what} {label}: {}", describe(e)))
        };
        let family = match addr {
            IpSocketAddress::Ipv4(_) => IpAddressFamily::Ipv4,
            IpSocketAddress::Ipv6(_) => IpAddressFamily::Ipv6,
        };
        let socket =
            tcp_create_socket::create_tcp_socket(family).map_err(|e| fail("socket for", e))?;
        socket
            .start_connect(network, addr)
            .map_err(|e| fail("connect to", e))?;
        let mut conn = Conn {
            streams: None,
            socket,
            state: State::Connecting { since: now },
            label,
            unsent: Vec::new(),
            received: Vec::new(),
            queue: VecDeque::new(),
        };
        // Set-up commands go first on the wire; their replies are checked
        // like any other and a failure breaks the connection.
        if let Some(password) = &endpoint.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &endpoint.username {
                args.push(user.as_bytes());
            }
            args.push(password.as_bytes());
            conn.push(&encoded(&args), Expect::Ok, now);
        }
        if endpoint.db != 0 {
            let db = endpoint.db.to_string();
            conn.push(&encoded(&[b"SELECT", db.as_bytes()]), Expect::Ok, now);
        }
        Ok(conn)
    }

    /// False when broken, or stale enough to replace (see the constants).
    fn usable(&mut self, now: u64) -> bool {
        // The server may have closed it since the last call (its `timeout`,
        // a restart, a proxy), and replies nobody waited for may be pending
        // (so the oldest request may look overdue when it is not): one step
        // finds out and takes them.
        self.pump(true);
        if self.stale(now) {
            self.break_with(NodeError::Timeout);
        }
        !matches!(self.state, State::Broken(_))
    }

    fn stale(&self, now: u64) -> bool {
        match &self.state {
            State::Broken(_) => false,
            State::Connecting { since } => now.saturating_sub(*since) > CONNECT_STALE_NS,
            State::Open => self
                .queue
                .front()
                .is_some_and(|s| now.saturating_sub(s.sent_at) > REPLY_STALE_NS),
        }
    }

    fn push(&mut self, command: &[u8], expect: Expect, now: u64) -> Rc<Slot> {
        let slot = Rc::new(Slot {
            expect,
            sent_at: now,
            result: RefCell::new(None),
        });
        if let State::Broken(e) = &self.state {
            slot.set(Reply::Failed(e.clone()));
        } else if self.unsent.len() > MAX_UNSENT || self.queue.len() >= MAX_QUEUED {
            slot.set(Reply::Failed(NodeError::Other(format!(
                "too many requests waiting for {}",
                self.label
            ))));
        } else {
            self.unsent.extend_from_slice(command);
            self.queue.push_back(slot.clone());
        }
        slot
    }

    /// Makes every step the socket allows now, without blocking; reads only
    /// when `read` (just after a request is queued, no reply can be there:
    /// each WASI call costs, a lot on some hosts).
    fn pump(&mut self, read: bool) {
        if let State::Connecting { .. } = self.state {
            match self.socket.finish_connect() {
                Ok(streams) => {
                    self.streams = Some(streams);
                    self.state = State::Open;
                }
                Err(ErrorCode::WouldBlock) => return,
                Err(e) => {
                    let msg = format!("connect to {}: {}", self.label, describe(e));
                    return self.break_with(NodeError::Connection(msg));
                }
            }
        }
        if !matches!(self.state, State::Open) {
            return;
        }
        if let Err(e) = self.flush() {
            return self.break_with(e);
        }
        if !read {
            return;
        }
        // Replies that arrived before a close or an error still count.
        let read = self.read();
        if let Err(e) = self.complete() {
            return self.break_with(e);
        }
        match read {
            Ok(false) => {}
            Ok(true) => {
                let msg = format!("connection closed by {}", self.label);
                self.break_with(NodeError::Connection(msg));
            }
            Err(e) => self.break_with(e),
        }
    }

    fn flush(&mut self) -> Result<(), NodeError> {
        let Some((_, output)) = &self.streams else {
            return Ok(());
        };
        let mut wrote = false;
        while !self.unsent.is_empty() {
            let room = output.check_write().map_err(|e| self.stream_error(e))?;
            if room == 0 {
                break;
            }
            let n = self
                .unsent
                .len()
                .min(usize::try_from(room).unwrap_or(usize::MAX));
            output
                .write(&self.unsent[..n])
                .map_err(|e| self.stream_error(e))?;
            self.unsent.drain(..n);
            wrote = true;
        }
        if wrote {
            output.flush().map_err(|e| self.stream_error(e))?;
        }
        Ok(())
    }

    /// Reads what has arrived; true when the peer closed the stream.
    fn read(&mut self) -> Result<bool, NodeError> {
        let Some((input, _)) = &self.streams else {
            return Ok(false);
        };
        loop {
            let room = resp::MAX_BUFFERED.saturating_sub(self.received.len());
            if room == 0 {
                return Err(NodeError::Other(format!(
                    "reply from {} larger than {} bytes",
                    self.label,
                    resp::MAX_BUFFERED
                )));
            }
            let want = READ_CHUNK.min(room as u64);
            match input.read(want) {
                Ok(bytes) => {
                    self.received.extend_from_slice(&bytes);
                    // A short read took all there was.
                    if (bytes.len() as u64) < want {
                        return Ok(false);
                    }
                }
                Err(StreamError::Closed) => return Ok(true),
                Err(e) => return Err(self.stream_error(e)),
            }
        }
    }

    /// Completes the slots whose replies are in `received`.
    fn complete(&mut self) -> Result<(), NodeError> {
        let mut at = 0;
        let result = loop {
            let value = match resp::parse(&self.received[at..]) {
                Ok(Some((value, used))) => {
                    at += used;
                    value
                }
                Ok(None) => break Ok(()),
                Err(e) => {
                    break Err(NodeError::Other(format!(
                        "malformed reply from {}: {e}",
                        self.label
                    )));
                }
            };
            let Some(slot) = self.queue.pop_front() else {
                break Err(NodeError::Other(format!(
                    "reply from {} that no request asked for",
                    self.label
                )));
            };
            match (slot.expect, resp::interpret(slot.expect, value)) {
                (Expect::Ok, Meaning::Done) => {}
                (Expect::Ok, Meaning::RedisError(e)) => break Err(NodeError::Redis(e)),
                (_, Meaning::Done) => slot.set(Reply::Done),
                (_, Meaning::Refused) => slot.set(Reply::Refused),
                (_, Meaning::RedisError(e)) => slot.set(Reply::Failed(NodeError::Redis(e))),
                (_, Meaning::Unexpected(m)) => {
                    let m = format!("{m} from {}", self.label);
                    if slot.expect == Expect::Ok {
                        break Err(NodeError::Other(m));
                    }
                    slot.set(Reply::Failed(NodeError::Other(m)));
                }
            }
        };
        self.received.drain(..at);
        result
    }

    fn stream_error(&self, e: StreamError) -> NodeError {
        match e {
            StreamError::Closed => {
                NodeError::Connection(format!("connection closed by {}", self.label))
            }
            StreamError::LastOperationFailed(e) => {
                NodeError::Connection(format!("{}: {}", self.label, e.to_debug_string()))
            }
        }
    }

    /// Fails every waiting request with `e`; the connection is not used
    /// again (it is kept until its last pending reply is dropped).
    fn break_with(&mut self, e: NodeError) {
        for slot in self.queue.drain(..) {
            slot.set(Reply::Failed(e.clone()));
        }
        self.unsent.clear();
        self.received.clear();
        if matches!(self.state, State::Open) {
            let _ = self.socket.shutdown(wasi::sockets::tcp::ShutdownType::Both);
        }
        self.state = State::Broken(e);
    }

    fn pollable(&self) -> Pollable {
        match (&self.state, &self.streams) {
            (State::Connecting { .. }, _) => self.socket.subscribe(),
            (State::Open, Some((_, output))) if !self.unsent.is_empty() => output.subscribe(),
            (State::Open, Some((input, _))) => input.subscribe(),
            _ => ready_now(),
        }
    }
}

/// A pollable that is ready at once.
fn ready_now() -> Pollable {
    monotonic_clock::subscribe_duration(0)
}

fn encoded(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    resp::encode(&mut out, args);
    out
}

/// The exported `pending-reply`.
pub struct PendingReply(RefCell<Request>);

struct Request {
    slot: Rc<Slot>,
    /// `None` when the request failed before reaching a connection.
    conn: Option<Rc<RefCell<Conn>>>,
    /// What to send again, once, on a new connection if the reused one
    /// turns out dead before answering (a server-side idle close racing
    /// this request). Safe: `SET NX` with the same token and the two
    /// compare-and-... scripts may run twice.
    resend: Option<(u32, Vec<u8>)>,
    /// The connection given up for the resend: a pollable the caller may
    /// still hold is its child, so it lives as long as this reply.
    given_up: Option<Rc<RefCell<Conn>>>,
}

impl PendingReply {
    fn failed(e: NodeError) -> api::PendingReply {
        let slot = Rc::new(Slot {
            expect: Expect::Ok,
            sent_at: 0,
            result: RefCell::new(Some(Reply::Failed(e))),
        });
        api::PendingReply::new(PendingReply(RefCell::new(Request {
            slot,
            conn: None,
            resend: None,
            given_up: None,
        })))
    }
}

impl api::GuestPendingReply for PendingReply {
    fn subscribe(&self) -> Pollable {
        let r = self.0.borrow();
        match &r.conn {
            Some(conn) if r.slot.result.borrow().is_none() => conn.borrow().pollable(),
            _ => ready_now(),
        }
    }

    fn get(&self) -> Option<Reply> {
        let mut r = self.0.borrow_mut();
        if r.slot.result.borrow().is_none()
            && let Some(conn) = &r.conn
        {
            conn.borrow_mut().pump(true);
        }
        let reply = r.slot.result.borrow().clone();
        if let Some(Reply::Failed(NodeError::Connection(_))) = &reply
            && let Some((node, command)) = r.resend.take()
            && let Ok((conn, _)) = PLUG.with(|p| p.borrow_mut().conn(node))
        {
            let expect = r.slot.expect;
            let slot = send(&conn, &command, expect);
            r.given_up = r.conn.replace(conn);
            r.slot = slot;
            // Not the reply yet: the caller subscribes again (see the WIT).
            return r.slot.result.borrow().clone();
        }
        reply
    }
}

fn send(conn: &Rc<RefCell<Conn>>, command: &[u8], expect: Expect) -> Rc<Slot> {
    let mut c = conn.borrow_mut();
    let slot = c.push(command, expect, monotonic_clock::now());
    c.pump(false);
    slot
}

fn request(node: u32, args: &[&[u8]], expect: Expect) -> api::PendingReply {
    let (conn, reused) = match PLUG.with(|p| p.borrow_mut().conn(node)) {
        Ok(c) => c,
        Err(e) => return PendingReply::failed(e),
    };
    let command = encoded(args);
    let slot = send(&conn, &command, expect);
    api::PendingReply::new(PendingReply(RefCell::new(Request {
        slot,
        conn: Some(conn),
        resend: reused.then_some((node, command)),
        given_up: None,
    })))
}

struct Component;

impl api::Guest for Component {
    type PendingReply = PendingReply;

    fn node_count() -> u32 {
        PLUG.with(|p| p.borrow().nodes.len() as u32)
    }

    fn set_if_absent(node: u32, key: String, token: String, ttl_ms: u64) -> api::PendingReply {
        let ttl = ttl_ms.to_string();
        let args: [&[u8]; 6] = [
            b"SET",
            key.as_bytes(),
            token.as_bytes(),
            b"NX",
            b"PX",
            ttl.as_bytes(),
        ];
        request(node, &args, Expect::OkOrNil)
    }

    fn delete_if_token(node: u32, key: String, token: String) -> api::PendingReply {
        let args: [&[u8]; 5] = [
            b"EVAL",
            DELETE_IF_TOKEN.as_bytes(),
            b"1",
            key.as_bytes(),
            token.as_bytes(),
        ];
        request(node, &args, Expect::OneOrZero)
    }

    fn extend_if_token(node: u32, key: String, token: String, ttl_ms: u64) -> api::PendingReply {
        let ttl = ttl_ms.to_string();
        let args: [&[u8]; 6] = [
            b"EVAL",
            EXTEND_IF_TOKEN.as_bytes(),
            b"1",
            key.as_bytes(),
            token.as_bytes(),
            ttl.as_bytes(),
        ];
        request(node, &args, Expect::OneOrZero)
    }

    fn cancellation() -> Option<Pollable> {
        // Nothing outside can cancel a call here. (A never-ready clock
        // pollable would cost a timer per call under jco's Node.js shim,
        // which clamps far deadlines to a 1 ms timer that re-arms forever.)
        None
    }
}

export!(Component);
