//! The component glue: implements [`Nodes`] with the `redis-node` import and
//! WASI, and exports `redlock`. Only type conversions live here.

use crate::engine::{self, Nodes, Op, Wake};
use crate::options::AcquireOptions;
use crate::quorum::{NodeError, Outcome, Reply};

wit_bindgen::generate!({
    world: "lock-core",
    path: "../wit",
    generate_all,
});

use exports::redlock::core::redlock as api;
use redlock::core::redis_node as node;
use wasi::clocks::monotonic_clock;
use wasi::io::poll::{Pollable, poll};

/// The nodes as the host gives them, for the length of one export call.
struct HostNodes {
    count: u32,
    /// `None` once cancellation has been reported.
    cancel: Option<Pollable>,
    /// The deadline pollable of the last wait, reused while the deadline
    /// stays the same (a round waits several times for one deadline).
    timer: Option<(u64, Pollable)>,
    /// Nodes whose pollables the last wait reported ready: only their
    /// replies can have arrived, so only they are asked (`get` is a call
    /// into the host; before the first wait nothing can be ready).
    ready: Vec<u32>,
}

/// A request in flight. Field order matters: the pollable is a child of the
/// pending reply and must be dropped first.
struct Pending {
    pollable: Pollable,
    reply: node::PendingReply,
    node: u32,
}

impl HostNodes {
    fn new() -> Self {
        Self {
            count: node::node_count(),
            cancel: node::cancellation(),
            timer: None,
            ready: Vec::new(),
        }
    }
}

impl Nodes for HostNodes {
    type Pending = Pending;

    fn count(&self) -> u32 {
        self.count
    }

    fn now_ns(&mut self) -> u64 {
        monotonic_clock::now()
    }

    fn random_u64(&mut self) -> u64 {
        wasi::random::random::get_random_u64()
    }

    fn start(&mut self, i: u32, op: &Op<'_>) -> Pending {
        // A new request: nothing of it can be ready before the next wait.
        self.ready.retain(|&n| n != i);
        let reply = match *op {
            Op::SetIfAbsent { key, token, ttl_ms } => node::set_if_absent(i, key, token, ttl_ms),
            Op::DeleteIfToken { key, token } => node::delete_if_token(i, key, token),
            Op::ExtendIfToken { key, token, ttl_ms } => {
                node::extend_if_token(i, key, token, ttl_ms)
            }
            Op::SetIfAbsentFenced { key, token, ttl_ms } => {
                node::set_if_absent_fenced(i, key, token, ttl_ms)
            }
            Op::RaiseFence { key, fence } => node::raise_fence(i, key, fence),
        };
        Pending {
            pollable: reply.subscribe(),
            reply,
            node: i,
        }
    }

    fn reply(&mut self, p: &mut Pending) -> Option<Reply> {
        if !self.ready.contains(&p.node) {
            return None;
        }
        let Some(r) = p.reply.get() else {
            // Woken by progress that is not the reply yet (see the WIT):
            // wait for the next step. Never happens with the wasmtime host.
            p.pollable = p.reply.subscribe();
            return None;
        };
        Some(match r {
            node::Reply::Done => Reply::Done,
            node::Reply::Refused => Reply::Refused,
            node::Reply::Failed(e) => Reply::Failed(e.into()),
            node::Reply::Fence(v) => Reply::Fence(v),
        })
    }

    fn wait(&mut self, pending: &[&Pending], until_ns: u64) -> Wake {
        if self.timer.as_ref().is_none_or(|(at, _)| *at != until_ns) {
            self.timer = Some((until_ns, monotonic_clock::subscribe_instant(until_ns)));
        }
        let Some((_, timer)) = &self.timer else {
            unreachable!("set above")
        };
        let mut set: Vec<&Pollable> = Vec::with_capacity(pending.len() + 2);
        set.extend(pending.iter().map(|p| &p.pollable));
        set.push(timer);
        if let Some(cancel) = &self.cancel {
            set.push(cancel);
        }
        let ready = poll(&set);
        let n = pending.len() as u32;
        self.ready.clear();
        self.ready.extend(
            ready
                .iter()
                .filter(|&&i| i < n)
                .map(|&i| pending[i as usize].node),
        );
        if self.cancel.is_some() && ready.contains(&(n + 1)) {
            self.cancel = None;
            return Wake::Cancelled;
        }
        if self.ready.is_empty() {
            Wake::Deadline
        } else {
            Wake::Progress
        }
    }
}

impl From<node::NodeError> for NodeError {
    fn from(e: node::NodeError) -> Self {
        match e {
            node::NodeError::Timeout => NodeError::Timeout,
            node::NodeError::Connection(s) => NodeError::Connection(s),
            node::NodeError::Redis(s) => NodeError::Redis(s),
            node::NodeError::Other(s) => NodeError::Other(s),
        }
    }
}

impl From<NodeError> for node::NodeError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Timeout => node::NodeError::Timeout,
            NodeError::Connection(s) => node::NodeError::Connection(s),
            NodeError::Redis(s) => node::NodeError::Redis(s),
            NodeError::Other(s) => node::NodeError::Other(s),
        }
    }
}

fn failure(f: engine::QuorumFailure) -> api::QuorumFailure {
    let nodes = f
        .nodes
        .into_iter()
        .zip(0u32..)
        .map(|(o, node)| api::NodeOutcome {
            node,
            outcome: match o {
                Outcome::Done => api::Outcome::Done,
                Outcome::Refused => api::Outcome::Refused,
                Outcome::Failed(e) => api::Outcome::Failed(e.into()),
                Outcome::NoReply => api::Outcome::NoReply,
            },
        })
        .collect();
    api::QuorumFailure {
        attempts: f.attempts,
        deadline_passed: f.deadline_passed,
        nodes,
    }
}

impl From<engine::Error> for api::Error {
    fn from(e: engine::Error) -> Self {
        match e {
            engine::Error::DeadlineNeeded => api::Error::DeadlineNeeded,
            engine::Error::UnableToAcquire(f) => api::Error::UnableToAcquire(failure(f)),
            engine::Error::UnableToRelease(f) => api::Error::UnableToRelease(failure(f)),
            engine::Error::InvalidArgument(s) => api::Error::InvalidArgument(s),
            engine::Error::LockLost(f) => api::Error::LockLost(failure(f)),
            engine::Error::Cancelled => api::Error::Cancelled,
        }
    }
}

impl From<engine::Lock> for api::Lock {
    fn from(l: engine::Lock) -> Self {
        api::Lock {
            key: l.key,
            token: l.token,
            validity_ms: l.validity_ms,
            expires_at: l.expires_at_ns,
            fence: l.fence,
        }
    }
}

impl From<api::Lock> for engine::Lock {
    fn from(l: api::Lock) -> Self {
        engine::Lock {
            key: l.key,
            token: l.token,
            validity_ms: l.validity_ms,
            expires_at_ns: l.expires_at,
            fence: l.fence,
        }
    }
}

struct Core;

impl api::Guest for Core {
    fn acquire(
        key: String,
        options: api::Options,
        budget_ms: Option<u64>,
    ) -> Result<api::Lock, api::Error> {
        let opts = AcquireOptions {
            ttl_ms: options.ttl_ms,
            retry_count: options.retry_count,
            retry_delay_ms: options.retry_delay_ms,
            retry_jitter_ms: options.retry_jitter_ms,
            fence: options.fence.unwrap_or(false),
        };
        engine::acquire(&mut HostNodes::new(), &key, &opts, budget_ms)
            .map(Into::into)
            .map_err(Into::into)
    }

    fn release(lock: api::Lock, budget_ms: Option<u64>) -> Result<(), api::Error> {
        engine::release(&mut HostNodes::new(), &lock.key, &lock.token, budget_ms)
            .map_err(Into::into)
    }

    fn extend(
        lock: api::Lock,
        ttl_ms: u64,
        budget_ms: Option<u64>,
    ) -> Result<api::Lock, api::Error> {
        engine::extend(&mut HostNodes::new(), &lock.into(), ttl_ms, budget_ms)
            .map(Into::into)
            .map_err(Into::into)
    }
}

export!(Core);
