//! One pipelined connection to a node.
//!
//! Commands wait in the outbox until the socket takes them, then in flight
//! until their replies arrive, in order. Nothing here blocks: every call
//! makes the steps the socket allows now (finish connecting, write, read,
//! parse) and returns.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use super::exports::redlock::core::redis_node::{NodeError, Reply};
use super::wasi::io::streams::{InputStream, OutputStream, StreamError};
use super::wasi::sockets::network::{ErrorCode, IpAddressFamily, IpSocketAddress, Network};
use super::wasi::sockets::tcp::{ShutdownType, TcpSocket};
use super::wasi::sockets::tcp_create_socket;
use crate::defaults::{MAX_QUEUED, MAX_UNSENT, READ_CHUNK};
use crate::resp::{self, Expect, Meaning};
use crate::timing::Timing;
use crate::wire::Command;

/// Where one request's reply goes; shared by the connection and the
/// fan-out that waits for it.
#[derive(Default)]
pub struct Slot(RefCell<Option<Reply>>);

impl Slot {
    /// A slot that already holds `reply`.
    pub fn with(reply: Reply) -> Rc<Slot> {
        Rc::new(Slot(RefCell::new(Some(reply))))
    }

    /// Sets the reply unless one is there already (a late reply after a
    /// timeout changes nothing).
    pub fn set(&self, reply: Reply) {
        self.0.borrow_mut().get_or_insert(reply);
    }

    /// The reply, once known.
    pub fn get(&self) -> Option<Reply> {
        self.0.borrow().clone()
    }
}

/// A command not yet fully written.
struct Outgoing {
    command: Command,
    written: usize,
    queued_at: u64,
    deadline: u64,
    slot: Rc<Slot>,
}

/// A command written, awaiting its reply.
struct InFlight {
    expect: Expect,
    queued_at: u64,
    slot: Rc<Slot>,
}

enum State {
    /// Waiting for the node's name lookup.
    Resolving,
    Connecting(TcpSocket),
    /// Field order matters: the streams are children of the socket and are
    /// dropped first.
    Open {
        input: InputStream,
        output: OutputStream,
        socket: TcpSocket,
    },
    Broken(NodeError),
}

/// One connection.
pub struct Conn {
    state: State,
    /// When it was made (for the connect staleness limit).
    since: u64,
    /// True once it connected.
    opened: bool,
    label: String,
    outbox: VecDeque<Outgoing>,
    unsent: usize,
    in_flight: VecDeque<InFlight>,
    received: Vec<u8>,
}

impl Conn {
    /// A connection to `label` that has no address yet.
    pub fn new(label: String, now: u64) -> Conn {
        Conn {
            state: State::Resolving,
            since: now,
            opened: false,
            label,
            outbox: VecDeque::new(),
            unsent: 0,
            in_flight: VecDeque::new(),
            received: Vec::new(),
        }
    }

    /// Starts connecting to `addr` (once the address is known).
    pub fn connect(&mut self, network: &Network, addr: IpSocketAddress) {
        if !matches!(self.state, State::Resolving) {
            return;
        }
        let family = match addr {
            IpSocketAddress::Ipv4(_) => IpAddressFamily::Ipv4,
            IpSocketAddress::Ipv6(_) => IpAddressFamily::Ipv6,
        };
        let started = tcp_create_socket::create_tcp_socket(family)
            .map_err(|e| self.fail("socket for", e))
            .and_then(|socket| {
                socket
                    .start_connect(network, addr)
                    .map(|()| socket)
                    .map_err(|e| self.fail("connect to", e))
            });
        match started {
            Ok(socket) => self.state = State::Connecting(socket),
            Err(e) => self.break_with(e),
        }
    }

    fn fail(&self, what: &str, e: ErrorCode) -> NodeError {
        NodeError::Connection(format!("{what} {}: {}", self.label, e.name()))
    }

    /// True while it waits for an address.
    pub fn resolving(&self) -> bool {
        matches!(self.state, State::Resolving)
    }

    /// True once connected and not broken.
    pub fn open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// True when commands wait to be written.
    pub fn has_unsent(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Why it broke, if it did.
    pub fn broken(&self) -> Option<&NodeError> {
        match &self.state {
            State::Broken(e) => Some(e),
            _ => None,
        }
    }

    /// Why it could not connect, if it broke before it ever did.
    pub fn connect_error(&self) -> Option<&NodeError> {
        self.broken().filter(|_| !self.opened)
    }

    /// True when it should be replaced (see [`Timing`]).
    pub fn stale(&self, now: u64, timing: &Timing) -> bool {
        match &self.state {
            State::Broken(_) => false,
            State::Resolving | State::Connecting(_) => {
                timing.connect_stale(now.saturating_sub(self.since))
            }
            State::Open { .. } => {
                let oldest = self
                    .in_flight
                    .front()
                    .map(|f| f.queued_at)
                    .or_else(|| self.outbox.front().map(|o| o.queued_at));
                oldest.is_some_and(|at| timing.reply_stale(now.saturating_sub(at)))
            }
        }
    }

    /// Queues `command`, due by `deadline`, and writes what the socket
    /// takes now.
    pub fn push(&mut self, command: Command, now: u64, deadline: u64) -> Rc<Slot> {
        let slot = Rc::new(Slot::default());
        if let State::Broken(e) = &self.state {
            slot.set(Reply::Failed(e.clone()));
            return slot;
        }
        if self.unsent > MAX_UNSENT || self.outbox.len() + self.in_flight.len() >= MAX_QUEUED {
            slot.set(Reply::Failed(NodeError::Other(format!(
                "too many requests waiting for {}",
                self.label
            ))));
            return slot;
        }
        self.unsent += command.bytes.len();
        self.outbox.push_back(Outgoing {
            command,
            written: 0,
            queued_at: now,
            deadline,
            slot: slot.clone(),
        });
        // Just queued: no reply can be there yet, so no read (each WASI
        // call costs, a lot on some hosts).
        self.pump(false, now);
        slot
    }

    /// Makes every step the socket allows now; reads only when `read`.
    pub fn pump(&mut self, read: bool, now: u64) {
        if let State::Connecting(socket) = &self.state {
            match socket.finish_connect() {
                Ok((input, output)) => {
                    let State::Connecting(socket) =
                        std::mem::replace(&mut self.state, State::Resolving)
                    else {
                        unreachable!("matched above")
                    };
                    self.state = State::Open {
                        input,
                        output,
                        socket,
                    };
                    self.opened = true;
                }
                Err(ErrorCode::WouldBlock) => return,
                Err(e) => {
                    let e = self.fail("connect to", e);
                    return self.break_with(e);
                }
            }
        }
        if !self.open() {
            return;
        }
        if let Err(e) = self.flush(now) {
            return self.break_with(e);
        }
        if !read {
            return;
        }
        // Replies that arrived before a close or an error still count.
        let closed = self.read();
        if let Err(e) = self.complete() {
            return self.break_with(e);
        }
        match closed {
            Ok(false) => {}
            Ok(true) => {
                let msg = format!("connection closed by {}", self.label);
                self.break_with(NodeError::Connection(msg));
            }
            Err(e) => self.break_with(e),
        }
    }

    /// Writes as much of the outbox as the socket takes, in order. A SET
    /// whose request timed out before any of it was written is dropped (see
    /// [`crate::wire::Kind::dropped_when_late`]).
    fn flush(&mut self, now: u64) -> Result<(), NodeError> {
        let State::Open { output, .. } = &self.state else {
            return Ok(());
        };
        let mut dropped = 0;
        self.outbox.retain(|o| {
            let late = o.written == 0 && o.command.kind.dropped_when_late() && now >= o.deadline;
            if late {
                o.slot.set(Reply::Failed(NodeError::Timeout));
                dropped += o.command.bytes.len();
            }
            !late
        });
        self.unsent -= dropped;
        if self.outbox.is_empty() {
            return Ok(());
        }
        let room = output.check_write().map_err(|e| self.stream_error(e))?;
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        if room == 0 {
            return Ok(());
        }
        // One write of as many commands as fit.
        let mut chunk = Vec::new();
        for o in &self.outbox {
            let take = (o.command.bytes.len() - o.written).min(room - chunk.len());
            chunk.extend_from_slice(&o.command.bytes[o.written..o.written + take]);
            if chunk.len() == room {
                break;
            }
        }
        output.write(&chunk).map_err(|e| self.stream_error(e))?;
        output.flush().map_err(|e| self.stream_error(e))?;
        self.unsent -= chunk.len();
        let mut left = chunk.len();
        while left > 0 {
            let Some(o) = self.outbox.front_mut() else {
                break;
            };
            let take = (o.command.bytes.len() - o.written).min(left);
            o.written += take;
            left -= take;
            if o.written == o.command.bytes.len() {
                let o = self.outbox.pop_front().expect("front exists");
                self.in_flight.push_back(InFlight {
                    expect: o.command.expect,
                    queued_at: o.queued_at,
                    slot: o.slot,
                });
            }
        }
        Ok(())
    }

    /// Reads what has arrived; true when the peer closed the stream.
    fn read(&mut self) -> Result<bool, NodeError> {
        let State::Open { input, .. } = &self.state else {
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

    /// Completes the requests whose replies are in `received`.
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
            let Some(f) = self.in_flight.pop_front() else {
                break Err(NodeError::Other(format!(
                    "reply from {} that no request asked for",
                    self.label
                )));
            };
            match (f.expect, resp::interpret(f.expect, value)) {
                (Expect::Ok, Meaning::Done) => {}
                (Expect::Ok, Meaning::RedisError(e)) => break Err(NodeError::Redis(e)),
                (_, Meaning::Done) => f.slot.set(Reply::Done),
                (_, Meaning::Refused) => f.slot.set(Reply::Refused),
                (_, Meaning::Fence(v)) => f.slot.set(Reply::Fence(v)),
                (_, Meaning::RedisError(e)) => f.slot.set(Reply::Failed(NodeError::Redis(e))),
                (_, Meaning::Unexpected(m)) => {
                    let m = format!("{m} from {}", self.label);
                    if f.expect == Expect::Ok {
                        break Err(NodeError::Other(m));
                    }
                    f.slot.set(Reply::Failed(NodeError::Other(m)));
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

    /// Fails every request still waiting with `e`; the connection is not
    /// used again.
    pub fn break_with(&mut self, e: NodeError) {
        for o in self.outbox.drain(..) {
            o.slot.set(Reply::Failed(e.clone()));
        }
        for f in self.in_flight.drain(..) {
            f.slot.set(Reply::Failed(e.clone()));
        }
        self.unsent = 0;
        self.received.clear();
        if let State::Open { socket, .. } = &self.state {
            let _ = socket.shutdown(ShutdownType::Both);
        }
        self.state = State::Broken(e);
    }
}
