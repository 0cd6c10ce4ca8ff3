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
}

/// A fan-out in flight. Field order matters: the pollable may be a child of
/// the fan-out and must be dropped first.
struct FanOut {
    /// The pollable of the last wait and the reply count it waits for.
    pollable: Option<(u32, Pollable)>,
    fan_out: node::FanOut,
    /// A wait returned since the last `take`: only then can `take` have
    /// something (it is a call into the host; before the first wait
    /// nothing can have arrived).
    waited: bool,
}

impl HostNodes {
    fn new() -> Self {
        Self {
            // Fixed for one call, not for the instance: a host may rebind
            // a warm instance to other nodes between calls (the wasmtime
            // host does).
            count: node::node_count(),
            cancel: node::cancellation(),
            timer: None,
        }
    }
}

fn lease(token: &str, ttl_ms: u64) -> node::Lease {
    node::Lease {
        token: token.to_owned(),
        ttl_ms,
    }
}

impl Nodes for HostNodes {
    type Round = FanOut;

    fn count(&self) -> u32 {
        self.count
    }

    fn now_ns(&mut self) -> u64 {
        monotonic_clock::now()
    }

    fn random_u64(&mut self) -> u64 {
        wasi::random::random::get_random_u64()
    }

    fn send(&mut self, to: &[u32], op: &Op<'_>) -> FanOut {
        let (key, op) = match *op {
            Op::SetIfAbsent {
                key,
                token,
                ttl_ms,
                fresh: false,
            } => (key, node::Operation::SetIfAbsent(lease(token, ttl_ms))),
            Op::SetIfAbsent {
                key,
                token,
                ttl_ms,
                fresh: true,
            } => (key, node::Operation::SetIfAbsentFresh(lease(token, ttl_ms))),
            Op::DeleteIfToken { key, token } => {
                (key, node::Operation::DeleteIfToken(token.to_owned()))
            }
            Op::ExtendIfToken { key, token, ttl_ms } => {
                (key, node::Operation::ExtendIfToken(lease(token, ttl_ms)))
            }
            Op::SetIfAbsentFenced { key, token, ttl_ms } => (
                key,
                node::Operation::SetIfAbsentFenced(lease(token, ttl_ms)),
            ),
            Op::RaiseFence { key, fence } => (key, node::Operation::RaiseFence(fence)),
        };
        FanOut {
            pollable: None,
            fan_out: node::send(to, key, &op),
            waited: false,
        }
    }

    fn take(&mut self, round: &mut FanOut, into: &mut Vec<(u32, Reply)>) {
        if !std::mem::take(&mut round.waited) {
            return;
        }
        let replies = round.fan_out.take();
        if replies.is_empty() {
            // Woken by progress that is not a reply yet (see the WIT), or
            // the deadline passed: the next wait subscribes again. Never
            // the former with the wasmtime host.
            round.pollable = None;
        }
        into.extend(replies.into_iter().map(|r| {
            let reply = match r.reply {
                node::Reply::Done => Reply::Done,
                node::Reply::Refused => Reply::Refused,
                node::Reply::Failed(e) => Reply::Failed(e.into()),
                node::Reply::Fence(v) => Reply::Fence(v),
            };
            (r.node, reply)
        }));
    }

    fn wait(&mut self, round: Option<(&mut FanOut, u32)>, until_ns: u64) -> Wake {
        if self.timer.as_ref().is_none_or(|(at, _)| *at != until_ns) {
            self.timer = Some((until_ns, monotonic_clock::subscribe_instant(until_ns)));
        }
        let Some((_, timer)) = &self.timer else {
            unreachable!("set above")
        };
        let round = round.map(|(r, need)| {
            if r.pollable.as_ref().is_none_or(|(n, _)| *n != need) {
                r.pollable = None;
                r.pollable = Some((need, r.fan_out.subscribe(need)));
            }
            r.waited = true;
            r
        });
        let mut set: Vec<&Pollable> = Vec::with_capacity(3);
        set.push(timer);
        if let Some(cancel) = &self.cancel {
            set.push(cancel);
        }
        if let Some((_, p)) = round.as_ref().and_then(|r| r.pollable.as_ref()) {
            set.push(p);
        }
        let ready = poll(&set);
        // Indices: 0 the timer, then the cancellation if any, then the round.
        let round_at = set.len() as u32 - 1;
        if self.cancel.is_some() && ready.contains(&1) {
            self.cancel = None;
            return Wake::Cancelled;
        }
        if round.is_some() && ready.contains(&round_at) {
            Wake::Progress
        } else {
            Wake::Deadline
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
