//! The `redis-node` export over `wasi:sockets`.
//!
//! One connection per node, opened on first use and kept for the life of
//! the instance (`node`, `conn`). Requests are pipelined: each is queued on
//! its node's connection and written at once when the socket takes it;
//! replies arrive in order. Nothing here blocks, not even a name lookup:
//! the lock core waits on the pollables handed out here, and every `get`
//! makes as much progress as the socket allows.
//!
//! Every pending reply's pollable is a monotonic-clock one (see
//! `timing`): ready at once while the request is young, then at growing
//! gaps, and at the request's deadline (the per-node timeout) exactly,
//! when `get` returns `failed(timeout)`. When `get` returns `none` the core
//! subscribes again (see `pending-reply` in the WIT). No pollable handed out
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

use exports::redlock::core::redis_node::{self as api, NodeError, Reply};
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

    /// Makes every step `node` allows now, and writes what the other nodes
    /// have queued.
    fn pump(&mut self, node: u32, now: u64) {
        let network = self
            .network
            .get_or_insert_with(instance_network::instance_network);
        for (i, n) in (0u32..).zip(self.nodes.iter_mut()) {
            n.pump(network, now, i == node);
        }
    }
}

/// The exported `pending-reply`.
pub struct PendingReply(RefCell<Request>);

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

impl api::GuestPendingReply for PendingReply {
    fn subscribe(&self) -> Pollable {
        let r = self.0.borrow();
        if r.slot.get().is_some() {
            return ready_now();
        }
        match next_check(r.sent_at, r.deadline, monotonic_clock::now()) {
            Check::Now => ready_now(),
            Check::At(t) => monotonic_clock::subscribe_instant(t),
        }
    }

    fn get(&self) -> Option<Reply> {
        let mut r = self.0.borrow_mut();
        let now = monotonic_clock::now();
        if r.slot.get().is_none() {
            PLUG.with(|p| p.borrow_mut().pump(r.node, now));
            if now >= r.deadline {
                r.slot.set(Reply::Failed(NodeError::Timeout));
            }
        }
        let reply = r.slot.get();
        if let Some(Reply::Failed(NodeError::Connection(_))) = &reply
            && now < r.deadline
            && let Some(command) = r.resend.take()
        {
            let (node, deadline) = (r.node, r.deadline);
            r.slot = match PLUG.with(|p| p.borrow_mut().send(node, command, now, deadline)) {
                Ok((slot, _)) => slot,
                Err(e) => Slot::with(Reply::Failed(e)),
            };
            // Usually not the reply yet: the caller subscribes again.
            return r.slot.get();
        }
        reply
    }
}

/// A pollable that is ready at once.
fn ready_now() -> Pollable {
    monotonic_clock::subscribe_duration(0)
}

fn request(node: u32, command: Command) -> api::PendingReply {
    let now = monotonic_clock::now();
    let (slot, sent_at, deadline, resend) = PLUG.with(|p| {
        let mut p = p.borrow_mut();
        let deadline = match &p.timing {
            Ok(t) => t.deadline(now),
            Err(_) => now,
        };
        let may_resend = command.kind.may_resend().then(|| command.clone());
        match p.send(node, command, now, deadline) {
            Ok((slot, reused)) => (slot, now, deadline, may_resend.filter(|_| reused)),
            Err(e) => (Slot::with(Reply::Failed(e)), now, deadline, None),
        }
    });
    api::PendingReply::new(PendingReply(RefCell::new(Request {
        node,
        slot,
        sent_at,
        deadline,
        resend,
    })))
}

struct Component;

impl api::Guest for Component {
    type PendingReply = PendingReply;

    fn node_count() -> u32 {
        PLUG.with(|p| p.borrow().nodes.len() as u32)
    }

    fn set_if_absent(node: u32, key: String, token: String, ttl_ms: u64) -> api::PendingReply {
        request(node, wire::set_if_absent(&key, &token, ttl_ms))
    }

    fn delete_if_token(node: u32, key: String, token: String) -> api::PendingReply {
        request(node, wire::delete_if_token(&key, &token))
    }

    fn extend_if_token(node: u32, key: String, token: String, ttl_ms: u64) -> api::PendingReply {
        request(node, wire::extend_if_token(&key, &token, ttl_ms))
    }

    fn set_if_absent_fenced(
        node: u32,
        key: String,
        token: String,
        ttl_ms: u64,
    ) -> api::PendingReply {
        request(node, wire::set_if_absent_fenced(&key, &token, ttl_ms))
    }

    fn raise_fence(node: u32, key: String, fence: u64) -> api::PendingReply {
        request(node, wire::raise_fence(&key, fence))
    }

    fn cancellation() -> Option<Pollable> {
        // Nothing outside can cancel a call here. (A never-ready clock
        // pollable would cost a timer per call under jco's Node.js shim,
        // which clamps far deadlines to a 1 ms timer that re-arms forever.)
        None
    }
}

export!(Component);
