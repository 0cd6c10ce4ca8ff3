//! A simulated cluster on a virtual clock, for testing the engine natively:
//! nodes that grant, refuse, fail, hang, or behave like a real Redis.

use std::collections::HashMap;

use crate::engine::{Nodes, Op, Wake};
use crate::quorum::{NodeError, Reply};
use crate::validity::NS_PER_MS;

/// How a simulated node answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Every operation is `done`.
    Grant,
    /// Every operation is `refused`.
    Refuse,
    /// Every operation fails with a connection error.
    Fail,
    /// Never answers.
    Hang,
    /// Keeps keys with expiry on the virtual clock, like a real Redis.
    Redis,
}

/// The kind of an operation, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Set,
    Delete,
    Extend,
}

pub struct SimNode {
    pub behavior: Behavior,
    pub latency_ns: u64,
    keys: HashMap<String, (String, u64)>,
}

pub struct Sim {
    pub clock: u64,
    pub nodes: Vec<SimNode>,
    /// (node, kind, clock) of every operation started.
    pub log: Vec<(u32, Kind, u64)>,
    /// Cancellation fires at this instant.
    pub cancel_at: Option<u64>,
    rng: u64,
}

pub struct SimPending {
    ready_at: Option<u64>,
    reply: Reply,
}

impl Sim {
    /// Nodes with the given behaviours; node `i` answers after `(i + 1)` ms.
    pub fn new(behaviors: &[Behavior]) -> Self {
        let nodes = behaviors
            .iter()
            .enumerate()
            .map(|(i, &behavior)| SimNode {
                behavior,
                latency_ns: (i as u64 + 1) * NS_PER_MS,
                keys: HashMap::new(),
            })
            .collect();
        Self {
            clock: 1_000 * NS_PER_MS,
            nodes,
            log: Vec::new(),
            cancel_at: None,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    pub fn count_ops(&self, kind: Kind) -> usize {
        self.log.iter().filter(|(_, k, _)| *k == kind).count()
    }

    /// Who holds `key` on node `i` now.
    pub fn holder(&self, i: usize, key: &str) -> Option<&str> {
        self.nodes[i]
            .keys
            .get(key)
            .filter(|(_, exp)| *exp > self.clock)
            .map(|(t, _)| t.as_str())
    }

    /// Plants `key` = `token` on node `i` until `ttl_ms` from now.
    pub fn plant(&mut self, i: usize, key: &str, token: &str, ttl_ms: u64) {
        let exp = self.clock + ttl_ms * NS_PER_MS;
        self.nodes[i]
            .keys
            .insert(key.to_owned(), (token.to_owned(), exp));
    }
}

fn redis_apply(keys: &mut HashMap<String, (String, u64)>, now: u64, op: &Op<'_>) -> Reply {
    keys.retain(|_, (_, exp)| *exp > now);
    match *op {
        Op::SetIfAbsent { key, token, ttl_ms } => {
            if keys.contains_key(key) {
                Reply::Refused
            } else {
                keys.insert(key.into(), (token.into(), now + ttl_ms * NS_PER_MS));
                Reply::Done
            }
        }
        Op::DeleteIfToken { key, token } => match keys.get(key) {
            Some((t, _)) if t == token => {
                keys.remove(key);
                Reply::Done
            }
            _ => Reply::Refused,
        },
        Op::ExtendIfToken { key, token, ttl_ms } => match keys.get_mut(key) {
            Some((t, exp)) if t == token => {
                *exp = now + ttl_ms * NS_PER_MS;
                Reply::Done
            }
            _ => Reply::Refused,
        },
    }
}

impl Nodes for Sim {
    type Pending = SimPending;

    fn count(&self) -> u32 {
        self.nodes.len() as u32
    }

    fn now_ns(&mut self) -> u64 {
        self.clock
    }

    fn random_u64(&mut self) -> u64 {
        // xorshift64*: deterministic, which is what a simulation wants.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn start(&mut self, node: u32, op: &Op<'_>) -> SimPending {
        let kind = match op {
            Op::SetIfAbsent { .. } => Kind::Set,
            Op::DeleteIfToken { .. } => Kind::Delete,
            Op::ExtendIfToken { .. } => Kind::Extend,
        };
        self.log.push((node, kind, self.clock));
        let now = self.clock;
        let n = &mut self.nodes[node as usize];
        let ready_at = Some(now + n.latency_ns);
        match n.behavior {
            Behavior::Grant => SimPending {
                ready_at,
                reply: Reply::Done,
            },
            Behavior::Refuse => SimPending {
                ready_at,
                reply: Reply::Refused,
            },
            Behavior::Fail => SimPending {
                ready_at,
                reply: Reply::Failed(NodeError::Connection("simulated".into())),
            },
            Behavior::Hang => SimPending {
                ready_at: None,
                reply: Reply::Failed(NodeError::Timeout),
            },
            // The command executes when it reaches the node: half-way.
            Behavior::Redis => {
                let reply = redis_apply(&mut n.keys, now + n.latency_ns / 2, op);
                SimPending { ready_at, reply }
            }
        }
    }

    fn reply(&mut self, p: &mut SimPending) -> Option<Reply> {
        match p.ready_at {
            Some(t) if t <= self.clock => Some(p.reply.clone()),
            _ => None,
        }
    }

    fn wait(&mut self, pending: &[&SimPending], until_ns: u64) -> Wake {
        let next = pending.iter().filter_map(|p| p.ready_at).min();
        if let Some(c) = self.cancel_at
            && c <= until_ns
            && next.is_none_or(|t| c <= t)
        {
            self.clock = self.clock.max(c);
            self.cancel_at = None;
            return Wake::Cancelled;
        }
        match next {
            Some(t) if t <= until_ns => {
                self.clock = self.clock.max(t);
                Wake::Progress
            }
            _ => {
                self.clock = self.clock.max(until_ns);
                Wake::Deadline
            }
        }
    }
}
