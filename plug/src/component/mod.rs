//! The `redis-node` export over `wasi:sockets`.
//!
//! One connection per node, opened on first use and kept for the life of
//! the instance (`node`, `conn`). Requests are pipelined: each is queued on
//! its node's connection and written at once when the socket takes it;
//! replies arrive in order. Nothing here blocks, not even a name lookup:
//! the lock core waits on the pollables handed out here, and every `get`
//! makes as much progress as the socket allows.
//!
//! A fan-out's pollable is a monotonic-clock one (see `timing`): ready at
//! once while its youngest unanswered request is young, then at growing
//! gaps, and at a request's deadline (the per-node timeout) exactly, when
//! `take` returns its `failed(timeout)`. When `take` returns nothing the
//! core subscribes again (see `fan-out` in the WIT). No pollable handed out
//! is a child of a socket or stream, so connections can be replaced at any
//! time.

mod conn;
mod node;

use std::cell::RefCell;
use std::rc::Rc;

use crate::config;
use crate::timing::{Check, Timing, next_check};
use crate::wire::{self, Command};
use conn::Slot;
use node::Node;

wit_bindgen::generate!({
    world: "redis-node-plug",
    path: "../wit",
    generate_all,
});

use exports::redlock::core::redis_node::{self as api, NodeError, NodeReply, Operation, Reply};
use wasi::clocks::monotonic_clock;
use wasi::io::poll::Pollable;
use wasi::sockets::instance_network;
use wasi::sockets::network::Network;

struct Plug {
    nodes: Vec<Node>,
    /// The per-node timeout, or why `REDLOCK_NODE_TIMEOUT_MS` is refused.
    timing: Result<Timing, String>,
    network: Option<Network>,
}

thread_local! {
    static PLUG: RefCell<Plug> = RefCell::new(Plug::from_env());
}

impl Plug {
    fn from_env() -> Self {
        let list = std::env::var(config::NODES_VAR).unwrap_or_default();
        let timeout = std::env::var(config::NODE_TIMEOUT_VAR).ok();
        Plug {
            nodes: config::parse_nodes(&list)
                .into_iter()
                .map(Node::new)
                .collect(),
            timing: config::parse_node_timeout(timeout.as_deref()).map(Timing::from_ms),
            network: None,
        }
    }

    /// Sends `command` to `node`, due by `deadline`.
    fn send(
        &mut self,
        node: u32,
        command: Command,
        now: u64,
        deadline: u64,
    ) -> Result<(Rc<Slot>, bool), NodeError> {
        let timing = self.timing.clone().map_err(NodeError::Other)?;
        let count = self.nodes.len();
        let network = self
            .network
            .get_or_insert_with(instance_network::instance_network);
        let Some(n) = self.nodes.get_mut(node as usize) else {
            return Err(NodeError::Other(format!(
                "no node {node}: {} lists {count}",
                config::NODES_VAR
            )));
        };
        n.send(network, command, now, deadline, &timing)
    }

    /// Makes every step the nodes marked in `read` allow now, and writes
    /// what the other nodes have queued.
    fn pump(&mut self, read: &[bool], now: u64) {
        let network = self
            .network
            .get_or_insert_with(instance_network::instance_network);
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.pump(network, now, read.get(i).copied().unwrap_or(false));
        }
    }
}

/// The exported `fan-out`: one request per node, each `None` once `take`
/// returned its reply.
pub struct FanOut(RefCell<Vec<Option<Request>>>);

struct Request {
    node: u32,
    slot: Rc<Slot>,
    sent_at: u64,
    /// When the per-node timeout ends; a resend keeps it.
    deadline: u64,
    /// What to send once more on a new connection if the connection it went
    /// out on was open before and dies before answering; only commands
    /// that may run twice (see `wire`).
    resend: Option<Command>,
}

impl Request {
    /// The reply, once there is one: a timeout at the deadline; a broken
    /// connection that was open before is tried once more for a command
    /// that may run twice.
    fn reply(&mut self, now: u64) -> Option<Reply> {
        if self.slot.get().is_none() && now >= self.deadline {
            self.slot.set(Reply::Failed(NodeError::Timeout));
        }
        let reply = self.slot.get();
        if let Some(Reply::Failed(NodeError::Connection(_))) = &reply
            && now < self.deadline
            && let Some(command) = self.resend.take()
        {
            self.slot =
                match PLUG.with(|p| p.borrow_mut().send(self.node, command, now, self.deadline)) {
                    Ok((slot, _)) => slot,
                    Err(e) => Slot::with(Reply::Failed(e)),
                };
            // Usually not the reply yet: the caller subscribes again.
            return self.slot.get();
        }
        reply
    }
}

impl api::GuestFanOut for FanOut {
    /// Ignores the reply count (a hint): replies come in only when `take`
    /// reads the sockets, so the pollable wakes for every step.
    fn subscribe(&self, _replies: u32) -> Pollable {
        let requests = self.0.borrow();
        let now = monotonic_clock::now();
        let mut next = u64::MAX;
        for r in requests.iter().flatten() {
            if r.slot.get().is_some() {
                return ready_now();
            }
            match next_check(r.sent_at, r.deadline, now) {
                Check::Now => return ready_now(),
                Check::At(t) => next = next.min(t),
            }
        }
        // With every reply taken nothing comes: the caller does not wait
        // on it then, but a pollable must be ready some time.
        monotonic_clock::subscribe_instant(next)
    }

    fn take(&self) -> Vec<NodeReply> {
        let mut requests = self.0.borrow_mut();
        let now = monotonic_clock::now();
        let mut read = Vec::new();
        for r in requests.iter().flatten() {
            if r.slot.get().is_none() {
                let i = r.node as usize;
                if read.len() <= i {
                    read.resize(i + 1, false);
                }
                read[i] = true;
            }
        }
        if !read.is_empty() {
            PLUG.with(|p| p.borrow_mut().pump(&read, now));
        }
        let mut out = Vec::new();
        for slot in requests.iter_mut() {
            if let Some(r) = slot
                && let Some(reply) = r.reply(now)
            {
                out.push(NodeReply {
                    node: r.node,
                    reply,
                });
                *slot = None;
            }
        }
        out
    }
}

/// A pollable that is ready at once.
fn ready_now() -> Pollable {
    monotonic_clock::subscribe_duration(0)
}

/// Queues `command` on `node`.
fn request(node: u32, command: Command, now: u64) -> Request {
    let (slot, deadline, resend) = PLUG.with(|p| {
        let mut p = p.borrow_mut();
        let deadline = match &p.timing {
            Ok(t) => t.deadline(now),
            Err(_) => now,
        };
        let may_resend = command.kind.may_resend().then(|| command.clone());
        match p.send(node, command, now, deadline) {
            Ok((slot, reused)) => (slot, deadline, may_resend.filter(|_| reused)),
            Err(e) => (Slot::with(Reply::Failed(e)), deadline, None),
        }
    });
    Request {
        node,
        slot,
        sent_at: now,
        deadline,
        resend,
    }
}

struct Component;

impl api::Guest for Component {
    type FanOut = FanOut;

    fn node_count() -> u32 {
        PLUG.with(|p| p.borrow().nodes.len() as u32)
    }

    fn send(nodes: Vec<u32>, key: String, op: Operation) -> api::FanOut {
        let now = monotonic_clock::now();
        let requests = nodes
            .into_iter()
            .map(|node| {
                let command = match &op {
                    Operation::SetIfAbsent(l) => wire::set_if_absent(&key, &l.token, l.ttl_ms),
                    Operation::SetIfAbsentFresh(l) => {
                        wire::set_if_absent_fresh(&key, &l.token, l.ttl_ms)
                    }
                    Operation::DeleteIfToken(token) => wire::delete_if_token(&key, token),
                    Operation::ExtendIfToken(l) => wire::extend_if_token(&key, &l.token, l.ttl_ms),
                    Operation::SetIfAbsentFenced(l) => {
                        wire::set_if_absent_fenced(&key, &l.token, l.ttl_ms)
                    }
                    Operation::RaiseFence(fence) => wire::raise_fence(&key, *fence),
                };
                Some(request(node, command, now))
            })
            .collect();
        api::FanOut::new(FanOut(RefCell::new(requests)))
    }

    fn cancellation() -> Option<Pollable> {
        // Nothing outside can cancel a call here. (A never-ready clock
        // pollable would cost a timer per call under jco's Node.js shim,
        // which clamps far deadlines to a 1 ms timer that re-arms forever.)
        None
    }
}

export!(Component);
