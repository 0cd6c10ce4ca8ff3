//! A simulated cluster on a virtual clock, for testing the engine natively:
//! nodes that grant, refuse, fail, hang, or behave like a real Redis; a
//! network that delays every command and every reply; and several clients
//! that contend for the same nodes.
//!
//! A command changes a node when it *arrives*, not when it is sent, so a SET
//! can land after its sender gave up on it. From one client to one node,
//! commands arrive in the order they were sent and replies come back in that
//! order (FIFO): a host sends a node's commands on one connection, and that
//! ordering is all the engine may rely on. Across nodes, and across clients
//! on one node, any order is possible. [`Sim::new`] gives
//! every node a fixed latency (half on the way out, half back);
//! [`Sim::with_network`] draws every delay from a seeded generator.
//!
//! Redis nodes also keep fence counters (`lua/set-if-absent-fenced.lua`,
//! `lua/raise-fence.lua`) with the clock floor on their own clock, which
//! may be set off the virtual clock; [`Sim::restart`] restarts a node with
//! or without its data.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

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
    /// Executes every command like [`Behavior::Redis`], but the reply is
    /// lost: the caller sees a connection error.
    RedisThenFail,
    /// Executes every command like [`Behavior::Redis`], but no reply comes
    /// back (the caller sees a timeout if the host has one).
    RedisThenHang,
}

impl Behavior {
    /// True for nodes that keep keys.
    fn keeps_keys(self) -> bool {
        matches!(
            self,
            Behavior::Redis | Behavior::RedisThenFail | Behavior::RedisThenHang
        )
    }
}

/// The kind of an operation, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Set,
    Delete,
    Extend,
    FencedSet,
    RaiseFence,
}

pub struct SimNode {
    pub behavior: Behavior,
    /// Round trip in the fixed-latency simulation ([`Sim::new`]).
    pub latency_ns: u64,
    /// How much faster than the virtual clock this node's clock runs, in
    /// parts per million: keys expire this much early.
    pub expiry_skew_ppm: u64,
    /// How far this node's wall clock (Redis `TIME`, the fence floor) is
    /// ahead of the virtual clock; negative: behind.
    pub clock_offset_ns: i64,
    keys: HashMap<String, (String, u64)>,
    /// Fence counters, by lock key.
    fences: HashMap<String, u64>,
    /// Per client (each has its own connection here): when its last command
    /// arrived, and when its last reply got back, for FIFO both ways.
    connections: HashMap<usize, (u64, u64)>,
}

/// Who sent a command: a client and its call (acquire, release, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sender {
    pub client: usize,
    pub call: usize,
}

/// One command, as sent and as delivered.
#[derive(Debug, Clone)]
pub struct Sent {
    pub from: Sender,
    pub node: u32,
    pub kind: Kind,
    pub key: String,
    pub token: String,
    /// TTL of a SET or extend; 0 for a delete.
    pub ttl_ms: u64,
    /// The fence a raise-fence commits; 0 for the others.
    pub fence: u64,
    /// A SET of a token no earlier request carried (`Op::SetIfAbsent`).
    pub fresh: bool,
    pub sent_at: u64,
    /// When the command reaches the node and takes effect.
    pub arrives_at: u64,
    /// When the reply reaches the caller; `None`: never.
    pub ready_at: Option<u64>,
    /// What the caller is told; known once it is ready.
    pub reply: Option<Reply>,
    /// True once the command reached the node.
    pub arrived: bool,
    /// Who held `key` on the node right after the command took effect.
    pub holder_after: Option<String>,
}

impl Sent {
    fn op(&self) -> Op<'_> {
        let (key, token, ttl_ms) = (self.key.as_str(), self.token.as_str(), self.ttl_ms);
        match self.kind {
            Kind::Set => Op::SetIfAbsent {
                key,
                token,
                ttl_ms,
                fresh: self.fresh,
            },
            Kind::Delete => Op::DeleteIfToken { key, token },
            Kind::Extend => Op::ExtendIfToken { key, token, ttl_ms },
            Kind::FencedSet => Op::SetIfAbsentFenced { key, token, ttl_ms },
            Kind::RaiseFence => Op::RaiseFence {
                key,
                fence: self.fence,
            },
        }
    }
}

/// splitmix64: a small seeded generator for the network and the tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max`.
    pub fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(bound) => self.next_u64() % bound,
            None => self.next_u64(),
        }
    }

    /// True one time in `n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next_u64().is_multiple_of(n.max(1))
    }
}

/// Delivery delays and the host's per-node timeout, drawn per message.
#[derive(Debug, Clone, Copy)]
pub struct Network {
    /// Seeds every delay.
    pub seed: u64,
    /// Most one-way trips take `0..=fast_ns`.
    pub fast_ns: u64,
    /// One trip in `slow_one_in` takes `0..=slow_ns` instead: a straggler
    /// that can arrive after its sender gave up.
    pub slow_ns: u64,
    pub slow_one_in: u64,
    /// The host's per-node timeout: a reply not back by then is reported as
    /// [`NodeError::Timeout`] at that instant, though the command still runs.
    /// `None`: no timer (the wasi:sockets plug); the guest's deadline decides.
    pub node_timeout_ns: Option<u64>,
    /// Each node's clock runs fast by up to this much (ppm).
    pub max_expiry_skew_ppm: u64,
}

impl Network {
    /// A network whose shape also depends on the seed: how slow stragglers
    /// are, how many there are, whether the host has a node timeout, and how
    /// fast the nodes' clocks run (within the 1 % Redlock's drift allows).
    pub fn seeded(seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x6E65_7477_6F72_6B00);
        Self {
            seed,
            fast_ns: rng.up_to(3 * NS_PER_MS),
            slow_ns: (20 + rng.up_to(380)) * NS_PER_MS,
            slow_one_in: 2 + rng.up_to(6),
            node_timeout_ns: (!rng.one_in(3)).then(|| (5 + rng.up_to(95)) * NS_PER_MS),
            max_expiry_skew_ppm: 10_000,
        }
    }
}

pub struct Sim {
    pub clock: u64,
    pub nodes: Vec<SimNode>,
    /// Every command sent, in send order.
    pub log: Vec<Sent>,
    /// Cancellation fires at this instant.
    pub cancel_at: Option<u64>,
    /// From this instant on, the nodes behave like this: a fault that
    /// starts in the middle of an operation (a partition between its two
    /// rounds). Applied by the first command sent at or after it.
    pub switch: Option<(u64, Vec<Behavior>)>,
    /// The engine's randomness (tokens, jitter).
    rng: u64,
    net: Option<(Network, Rng)>,
    /// Commands on their way to a node: (arrival, log index).
    in_flight: BTreeSet<(u64, usize)>,
}

pub struct SimPending {
    id: usize,
    ready_at: Option<u64>,
}

impl Sim {
    /// Nodes with the given behaviours; node `i` answers after `(i + 1)` ms,
    /// and a command takes effect half-way.
    pub fn new(behaviors: &[Behavior]) -> Self {
        let nodes = behaviors
            .iter()
            .enumerate()
            .map(|(i, &behavior)| SimNode {
                behavior,
                latency_ns: (i as u64 + 1) * NS_PER_MS,
                expiry_skew_ppm: 0,
                clock_offset_ns: 0,
                keys: HashMap::new(),
                fences: HashMap::new(),
                connections: HashMap::new(),
            })
            .collect();
        Self {
            clock: 1_000 * NS_PER_MS,
            nodes,
            log: Vec::new(),
            cancel_at: None,
            switch: None,
            rng: 0x9E37_79B9_7F4A_7C15,
            net: None,
            in_flight: BTreeSet::new(),
        }
    }

    /// Nodes with the given behaviours behind `net`: every command and every
    /// reply takes its own random time, FIFO per node.
    pub fn with_network(behaviors: &[Behavior], net: Network) -> Self {
        let mut sim = Self::new(behaviors);
        let mut rng = Rng::new(net.seed);
        for node in &mut sim.nodes {
            node.expiry_skew_ppm = rng.up_to(net.max_expiry_skew_ppm);
        }
        sim.rng = rng.next_u64() | 1;
        sim.net = Some((net, rng));
        sim
    }

    pub fn count_ops(&self, kind: Kind) -> usize {
        self.log.iter().filter(|s| s.kind == kind).count()
    }

    /// Who holds `key` on node `i` now.
    pub fn holder(&mut self, i: usize, key: &str) -> Option<&str> {
        self.deliver();
        let now = self.clock;
        self.nodes[i]
            .keys
            .get(key)
            .filter(|(_, exp)| *exp > now)
            .map(|(t, _)| t.as_str())
    }

    /// Plants `key` = `token` on node `i` until `ttl_ms` from now.
    pub fn plant(&mut self, i: usize, key: &str, token: &str, ttl_ms: u64) {
        self.deliver();
        let exp = self.clock + ttl_ms * NS_PER_MS;
        self.nodes[i]
            .keys
            .insert(key.to_owned(), (token.to_owned(), exp));
    }

    /// Sets node `i`'s fence counter for `key` to `value`.
    pub fn plant_fence(&mut self, i: usize, key: &str, value: u64) {
        self.deliver();
        self.nodes[i].fences.insert(key.to_owned(), value);
    }

    /// Restarts node `i` now, after applying what reached it: with all its
    /// data (`appendfsync always`), or empty (no persistence).
    pub fn restart(&mut self, i: usize, persisted: bool) {
        self.deliver();
        if !persisted {
            self.nodes[i].keys.clear();
            self.nodes[i].fences.clear();
        }
    }

    /// Moves the clock on until every command in flight has reached its
    /// node, and applies them.
    pub fn settle(&mut self) {
        if let Some(&(last, _)) = self.in_flight.last() {
            self.clock = self.clock.max(last);
        }
        self.deliver();
    }

    /// Applies, in arrival order, every command that has reached its node.
    fn deliver(&mut self) {
        while let Some(&(at, id)) = self.in_flight.first() {
            if at > self.clock {
                break;
            }
            self.in_flight.pop_first();
            let sent = &self.log[id];
            let node = &mut self.nodes[sent.node as usize];
            let reply = redis_apply(node, at, &sent.op());
            let holder_after = node.keys.get(&sent.key).map(|(t, _)| t.clone());
            let sent = &mut self.log[id];
            sent.arrived = true;
            sent.holder_after = holder_after;
            sent.reply.get_or_insert(reply);
        }
    }

    /// (out, back) delays for one command to `node`.
    fn delays(&mut self, node: usize) -> (u64, u64) {
        match &mut self.net {
            None => {
                let l = self.nodes[node].latency_ns;
                (l / 2, l - l / 2)
            }
            Some((net, rng)) => {
                let mut one_way = || {
                    let max = if rng.one_in(net.slow_one_in) {
                        net.slow_ns
                    } else {
                        net.fast_ns
                    };
                    rng.up_to(max)
                };
                (one_way(), one_way())
            }
        }
    }

    /// Sends `op` to `node` now, on behalf of `from`.
    pub fn send_one(&mut self, from: Sender, node: u32, op: &Op<'_>) -> SimPending {
        self.deliver();
        let now = self.clock;
        if let Some((at, _)) = &self.switch
            && *at <= now
            && let Some((_, behaviors)) = self.switch.take()
        {
            for (n, b) in self.nodes.iter_mut().zip(behaviors) {
                n.behavior = b;
            }
        }
        let (out, back) = self.delays(node as usize);
        let timeout = self.net.as_ref().and_then(|(net, _)| net.node_timeout_ns);
        let id = self.log.len();
        let n = &mut self.nodes[node as usize];
        let (last_arrival, last_reply) = n.connections.entry(from.client).or_default();
        let arrives_at = (now + out).max(*last_arrival);
        *last_arrival = arrives_at;
        let answers = !matches!(n.behavior, Behavior::Hang | Behavior::RedisThenHang);
        let answered_at = answers.then(|| {
            *last_reply = (arrives_at + back).max(*last_reply);
            *last_reply
        });
        let mut reply = match n.behavior {
            Behavior::Grant if op.fenced() => Some(Reply::Fence(1)),
            Behavior::Grant => Some(Reply::Done),
            Behavior::Refuse => Some(Reply::Refused),
            Behavior::Fail | Behavior::RedisThenFail => {
                Some(Reply::Failed(NodeError::Connection("simulated".into())))
            }
            // Known when the command reaches the node.
            Behavior::Redis => None,
            Behavior::Hang | Behavior::RedisThenHang => None,
        };
        let ready_at = match (answered_at, timeout) {
            (Some(at), Some(t)) if at <= now + t => Some(at),
            (Some(at), None) => Some(at),
            (_, Some(t)) => {
                reply = Some(Reply::Failed(NodeError::Timeout));
                Some(now + t)
            }
            (None, None) => None,
        };
        let keeps_keys = n.behavior.keeps_keys();
        let (kind, key, token, ttl_ms, fence) = match *op {
            Op::SetIfAbsent {
                key, token, ttl_ms, ..
            } => (Kind::Set, key, token, ttl_ms, 0),
            Op::DeleteIfToken { key, token } => (Kind::Delete, key, token, 0, 0),
            Op::ExtendIfToken { key, token, ttl_ms } => (Kind::Extend, key, token, ttl_ms, 0),
            Op::SetIfAbsentFenced { key, token, ttl_ms } => {
                (Kind::FencedSet, key, token, ttl_ms, 0)
            }
            Op::RaiseFence { key, fence } => (Kind::RaiseFence, key, "", 0, fence),
        };
        self.log.push(Sent {
            from,
            node,
            kind,
            key: key.to_owned(),
            token: token.to_owned(),
            ttl_ms,
            fence,
            fresh: matches!(op, Op::SetIfAbsent { fresh: true, .. }),
            sent_at: now,
            arrives_at,
            ready_at,
            reply,
            arrived: !keeps_keys,
            holder_after: None,
        });
        if keeps_keys {
            self.in_flight.insert((arrives_at, id));
        }
        SimPending { id, ready_at }
    }

    /// The reply to `p`, if it is back.
    pub fn poll(&mut self, p: &SimPending) -> Option<Reply> {
        self.deliver();
        match p.ready_at {
            Some(t) if t <= self.clock => {
                let reply = self.log[p.id].reply.clone();
                Some(reply.expect("a reply that is back is known"))
            }
            _ => None,
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic, which is what a simulation wants.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// The fence floor of a node whose wall clock reads `now + offset` (ns):
/// that clock rounded down to the whole second, in microseconds, as
/// `lua/set-if-absent-fenced.lua` computes it from `TIME`.
fn fence_floor(now: u64, offset_ns: i64) -> u64 {
    let wall_ns = now.saturating_add_signed(offset_ns);
    wall_ns / 1_000_000_000 * 1_000_000
}

fn redis_apply(node: &mut SimNode, now: u64, op: &Op<'_>) -> Reply {
    let skew_ppm = node.expiry_skew_ppm;
    let floor = fence_floor(now, node.clock_offset_ns);
    let (keys, fences) = (&mut node.keys, &mut node.fences);
    keys.retain(|_, (_, exp)| *exp > now);
    // A node whose clock runs fast expires its keys early.
    let lifetime = |ttl_ms: u64| {
        let ns = ttl_ms * NS_PER_MS;
        ns - ns / 1_000_000 * skew_ppm
    };
    match *op {
        // lua/set-if-absent.lua: free, or already this token (TTL anew);
        // fresh, `SET NX PX`: free only.
        Op::SetIfAbsent {
            key,
            token,
            ttl_ms,
            fresh,
        } => {
            if keys.get(key).is_some_and(|(t, _)| fresh || t != token) {
                Reply::Refused
            } else {
                keys.insert(key.into(), (token.into(), now + lifetime(ttl_ms)));
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
        // lua/extend-if-token.lua: never shortens.
        Op::ExtendIfToken { key, token, ttl_ms } => match keys.get_mut(key) {
            Some((t, exp)) if t == token => {
                *exp = (*exp).max(now + lifetime(ttl_ms));
                Reply::Done
            }
            _ => Reply::Refused,
        },
        // lua/set-if-absent-fenced.lua: the compare-and-set, and on a grant
        // the counter to max(counter + 1, floor).
        Op::SetIfAbsentFenced { key, token, ttl_ms } => {
            if keys.get(key).is_some_and(|(t, _)| t != token) {
                return Reply::Refused;
            }
            keys.insert(key.into(), (token.into(), now + lifetime(ttl_ms)));
            let counter = fences.entry(key.into()).or_default();
            *counter = (*counter + 1).max(floor);
            Reply::Fence(*counter)
        }
        // lua/raise-fence.lua: never lowers.
        Op::RaiseFence { key, fence } => {
            let counter = fences.entry(key.into()).or_default();
            *counter = (*counter).max(fence);
            Reply::Fence(*counter)
        }
    }
}

/// A round's requests still unanswered, by node.
pub type SimRound = Vec<(u32, SimPending)>;

/// When `need` replies of `round` are back, or all that ever come if fewer
/// do (`None`: none ever does). Honours the hint exactly, so that a hint
/// larger than the engine may give delays its decisions in the tests.
fn next_ready(round: Option<(&mut SimRound, u32)>) -> Option<u64> {
    let (round, need) = round?;
    let mut at: Vec<u64> = round.iter().filter_map(|(_, p)| p.ready_at).collect();
    at.sort_unstable();
    let k = (need.max(1) as usize).min(at.len());
    at.get(k.checked_sub(1)?).copied()
}

/// Moves the answered requests of `round` to `into`.
fn take_from(sim: &mut Sim, round: &mut SimRound, into: &mut Vec<(u32, Reply)>) {
    round.retain(|(node, p)| match sim.poll(p) {
        Some(reply) => {
            into.push((*node, reply));
            false
        }
        None => true,
    });
}

impl Nodes for Sim {
    type Round = SimRound;

    fn count(&self) -> u32 {
        self.nodes.len() as u32
    }

    fn now_ns(&mut self) -> u64 {
        self.clock
    }

    fn random_u64(&mut self) -> u64 {
        self.next_random()
    }

    fn send(&mut self, to: &[u32], op: &Op<'_>) -> SimRound {
        (to.iter())
            .map(|&node| (node, self.send_one(Sender::default(), node, op)))
            .collect()
    }

    fn take(&mut self, round: &mut SimRound, into: &mut Vec<(u32, Reply)>) {
        take_from(self, round, into);
    }

    fn wait(&mut self, round: Option<(&mut SimRound, u32)>, until_ns: u64) -> Wake {
        let next = next_ready(round);
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

/// Several clients on one simulated cluster and one virtual clock.
///
/// Each client runs on its own thread, but only one runs at a time: when the
/// running client waits, the client with the earliest wake-up instant runs
/// next (ties: the lowest index), and the clock jumps there. A run is as
/// deterministic as the single-client simulation.
pub struct Stage {
    state: Mutex<StageState>,
    turn_changed: Condvar,
}

struct StageState {
    sim: Sim,
    /// When each waiting client wants to run; `None` while it runs or after
    /// it finished.
    wake: Vec<Option<u64>>,
    turn: Option<usize>,
    /// The client that panicked first: the others must stop instead of
    /// waiting forever, and its panic is the one to report.
    panicked: Option<usize>,
}

/// One client of a [`Stage`]; the engine's [`Nodes`].
pub struct Client<'a> {
    pub id: usize,
    /// Tags this client's commands; the client counts its calls here.
    pub call: usize,
    stage: &'a Stage,
}

impl Stage {
    /// Runs `client` once per entry of `starts`, each from its start instant,
    /// and returns the simulation and what each client returned.
    pub fn run<T: Send>(
        sim: Sim,
        starts: &[u64],
        client: impl Fn(&mut Client<'_>) -> T + Sync,
    ) -> (Sim, Vec<T>) {
        let stage = Stage {
            state: Mutex::new(StageState {
                sim,
                wake: starts.iter().map(|&s| Some(s)).collect(),
                turn: None,
                panicked: None,
            }),
            turn_changed: Condvar::new(),
        };
        let results = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..starts.len())
                .map(|id| {
                    let (stage, client) = (&stage, &client);
                    scope.spawn(move || {
                        let _abort = AbortOnPanic(stage, id);
                        drop(stage.wait_turn(stage.lock(), id));
                        let out = client(&mut Client { id, call: 0, stage });
                        let mut st = stage.lock();
                        stage.hand_over(&mut st);
                        out
                    })
                })
                .collect();
            stage.hand_over(&mut stage.lock());
            let joined: Vec<_> = threads.into_iter().map(|t| t.join()).collect();
            if let Some(first) = stage.lock().panicked {
                let Some(Err(e)) = joined.into_iter().nth(first) else {
                    unreachable!("client {first} panicked")
                };
                std::panic::resume_unwind(e);
            }
            joined.into_iter().flatten().collect()
        });
        let state = stage
            .state
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        (state.sim, results)
    }

    fn lock(&self) -> MutexGuard<'_, StageState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives the turn to the client that wakes first.
    fn hand_over(&self, st: &mut StageState) {
        let next = (st.wake.iter().enumerate())
            .filter_map(|(i, w)| w.map(|w| (w, i)))
            .min();
        st.turn = next.map(|(at, i)| {
            st.sim.clock = st.sim.clock.max(at);
            st.wake[i] = None;
            i
        });
        self.turn_changed.notify_all();
    }

    fn wait_turn<'s>(
        &'s self,
        mut st: MutexGuard<'s, StageState>,
        id: usize,
    ) -> MutexGuard<'s, StageState> {
        loop {
            assert!(st.panicked.is_none(), "another client panicked");
            if st.turn == Some(id) {
                return st;
            }
            st = self
                .turn_changed
                .wait(st)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

struct AbortOnPanic<'a>(&'a Stage, usize);

impl Drop for AbortOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.lock().panicked.get_or_insert(self.1);
            self.0.turn_changed.notify_all();
        }
    }
}

impl Nodes for Client<'_> {
    type Round = SimRound;

    fn count(&self) -> u32 {
        self.stage.lock().sim.nodes.len() as u32
    }

    fn now_ns(&mut self) -> u64 {
        self.stage.lock().sim.clock
    }

    fn random_u64(&mut self) -> u64 {
        self.stage.lock().sim.next_random()
    }

    fn send(&mut self, to: &[u32], op: &Op<'_>) -> SimRound {
        let from = Sender {
            client: self.id,
            call: self.call,
        };
        let mut st = self.stage.lock();
        (to.iter())
            .map(|&node| (node, st.sim.send_one(from, node, op)))
            .collect()
    }

    fn take(&mut self, round: &mut SimRound, into: &mut Vec<(u32, Reply)>) {
        take_from(&mut self.stage.lock().sim, round, into);
    }

    /// Cancellation is not simulated here.
    fn wait(&mut self, round: Option<(&mut SimRound, u32)>, until_ns: u64) -> Wake {
        let next = next_ready(round);
        let wake = next.map_or(until_ns, |t| t.min(until_ns));
        let mut st = self.stage.lock();
        st.wake[self.id] = Some(wake);
        self.stage.hand_over(&mut st);
        drop(self.stage.wait_turn(st, self.id));
        if next.is_some_and(|t| t <= until_ns) {
            Wake::Progress
        } else {
            Wake::Deadline
        }
    }
}
