//! A node's lane: every request to one node goes through it, in the order
//! the guest made them.
//!
//! A driver task per node and context takes requests from an unbounded
//! queue (the guest's call only enqueues, so the order is fixed when the
//! request is made), connects when needed, and writes whatever has queued
//! up as one pipeline: concurrent calls' commands to a node share a write
//! and a round trip. At most `limit` round trips per node are unanswered at
//! once (the Go library's semaphore of 10, counted in round trips per node):
//! requests made meanwhile wait, in order, and leave together in the next
//! write. On a cluster member a round trip carries one command. A request's
//! node timeout starts when it is made, waiting included; one timer per lane
//! ends the oldest request that outlived it.
//!
//! Order is what keeps a cleanup delete behind the SET it cleans up after:
//! both go out on the node's one connection in the order made, also while
//! the connection is being made or the limit is reached. What remains: a
//! connection that breaks with commands on it; a delete is then resent on
//! the next connection, a SET never is.
//!
//! A Redis Cluster member's lane keeps the same order per key rather than
//! per connection: its commands go out one by one on the cluster connection
//! (which routes each by its key's slot, to whichever shard holds it, and
//! follows MOVED/ASK), and a command waits until the one before it on the
//! same key has its answer. Commands on distinct keys go out at once, to
//! all shards in parallel. Redirections, retries and reconnections inside
//! the cluster connection therefore never reorder a SET and its cleanup
//! delete. Suspicion is per process: a cluster member is never suspect as a
//! whole, since one slow shard says nothing of the others.
//!
//! A node whose last [`SUSPECT_AFTER`] requests all timed out is suspect
//! for a cooldown: SETs and extends to it fail at once, without I/O, so a
//! silent node (paused, blackholed, dropping replies) costs an attempt
//! nothing instead of the node timeout. Deletes still go out; the first
//! request after the cooldown is a probe, and any reply in time ends it.
//!
//! A node that refuses connections (a dead process, a closed port) is not
//! asked either, deletes included, for a back-off that starts at [`REFUSED_BACKOFF`] and
//! doubles with each refusal in a row up to the cooldown: without it every
//! request is a connect attempt (a socket, a refusal, an error carried back
//! through the driver). The first request after the back-off connects
//! again; a connection made ends it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use redis::aio::ConnectionLike;
use redis::{RedisError, Value};
use tokio::sync::{Notify, mpsc};

use super::command::{Command, Scripts, breaks_connection, classify};
use super::conn::{Conn, Server};
use super::pending::Slot;
use crate::bindings::node::{NodeError, Reply};

/// Timeouts in a row after which a node is suspect.
pub const SUSPECT_AFTER: u32 = 3;

/// How long a node that refused a connection is not asked, the first time:
/// 25 ms, doubling with each refusal in a row, at most the cooldown.
pub const REFUSED_BACKOFF: Duration = Duration::from_millis(25);

/// Why a node is not asked.
const WHY_TIMEOUTS: u8 = 0;
const WHY_REFUSED: u8 = 1;

/// What the lanes of one context share.
pub(super) struct Settings {
    pub(super) timeout: Duration,
    pub(super) limit: usize,
    pub(super) scripts: Scripts,
    pub(super) work: Work,
}

impl Settings {
    /// How long a suspect node is not asked: ten node timeouts, at least
    /// 100 ms and at most 1 s (500 ms by default).
    fn cooldown(&self) -> Duration {
        (self.timeout * 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

/// Requests made and not yet answered or timed out, over all lanes: what
/// `settle` waits for.
#[derive(Default)]
pub(super) struct Work {
    open: AtomicUsize,
    done: Notify,
}

impl Work {
    fn begin(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.done.notify_waiters();
        }
    }

    /// Returns once nothing is open.
    pub(super) async fn idle(&self) {
        loop {
            let notified = self.done.notified();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One request on its way to the driver.
struct Job {
    cmd: Command,
    slot: Slot,
}

/// A node's lane, as the context holds it.
pub(super) struct Lane {
    pub(super) server: Arc<Server>,
    settings: Arc<Settings>,
    /// The driver's queue; replaced when the driver is gone (its runtime
    /// shut down), so a context outlives the runtime it was first used on.
    queue: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    /// Until when the node is suspect, in nanoseconds after [`epoch`]; 0
    /// when it is not.
    suspect_until: Arc<AtomicU64>,
    /// Why: [`WHY_TIMEOUTS`] or [`WHY_REFUSED`].
    suspect_why: Arc<AtomicU8>,
}

impl Lane {
    pub(super) fn new(server: Server, settings: Arc<Settings>) -> Self {
        Self {
            server: Arc::new(server),
            settings,
            queue: Mutex::new(None),
            suspect_until: Arc::new(AtomicU64::new(0)),
            suspect_why: Arc::new(AtomicU8::new(WHY_TIMEOUTS)),
        }
    }

    /// Sends `cmd` behind every request made before it on this node; its
    /// reply lands in `slot`.
    pub(super) fn send(&self, cmd: Command, slot: Slot) {
        if let Some(reply) = self.server.refusal() {
            slot.resolve(reply);
            return;
        }
        if self.server.cluster.is_some()
            && let Err(why) = cmd.fits_one_slot()
        {
            let reply = Reply::Failed(NodeError::Other(why));
            crate::metrics::node_reply(&self.server.addr, cmd.name(), &reply);
            slot.resolve(reply);
            return;
        }
        // A silent node may hold keys, so deletes still go to it; one that
        // refuses connections takes no delete either.
        let until = self.suspect_until.load(Ordering::Relaxed);
        if until != 0 && since_epoch(Instant::now()) < until {
            let refused = self.suspect_why.load(Ordering::Relaxed) == WHY_REFUSED;
            if cmd.claims() || refused {
                let why = if refused {
                    "not asked: it refused the last connection; a connection is tried again \
                     after a back-off"
                        .to_owned()
                } else {
                    format!(
                        "not asked: its last {SUSPECT_AFTER} requests got no reply within the \
                         node timeout ({:?}); it is asked again after {:?}",
                        self.settings.timeout,
                        self.settings.cooldown()
                    )
                };
                let reply = Reply::Failed(NodeError::Other(why));
                crate::metrics::node_reply(&self.server.addr, cmd.name(), &reply);
                slot.resolve(reply);
                return;
            }
        }
        let mut job = Job { cmd, slot };
        self.settings.work.begin();
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = queue.as_ref() {
            match tx.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => job = back,
            }
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.settings.work.end();
            job.slot.resolve(Reply::Failed(NodeError::Other(
                "the redis-node capability needs a tokio runtime".into(),
            )));
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = tx.send(job);
        *queue = Some(tx);
        let driver = Driver {
            server: self.server.clone(),
            settings: self.settings.clone(),
            suspect_until: self.suspect_until.clone(),
            suspect_why: self.suspect_why.clone(),
            refusals_in_a_row: 0,
            queue: rx,
            deadlines: VecDeque::new(),
            unresolved: 0,
            unsent: Vec::new(),
            reload_scripts: false,
            timeouts_in_a_row: 0,
            busy: HashMap::new(),
            sent: FuturesUnordered::new(),
        };
        rt.spawn(driver.run());
    }
}

/// Nanoseconds since a process-wide instant, never 0.
fn since_epoch(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(t.saturating_duration_since(epoch).as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A request the driver took from the queue.
struct Admitted {
    cmd: Command,
    slot: Slot,
    /// Already sent once on a connection that broke.
    resent: bool,
    /// Send as EVAL with the script's text (a cluster shard answered
    /// NOSCRIPT).
    eval: bool,
}

/// What a written pipeline gives back: its connection, its requests and
/// their replies.
type Answer = (Conn, Vec<Admitted>, Result<Vec<Value>, RedisError>);

struct Driver {
    server: Arc<Server>,
    settings: Arc<Settings>,
    suspect_until: Arc<AtomicU64>,
    suspect_why: Arc<AtomicU8>,
    /// Connects refused in a row: the back-off doubles with each.
    refusals_in_a_row: u32,
    queue: mpsc::UnboundedReceiver<Job>,
    /// Admitted requests in the order admitted, with their deadlines; some
    /// may be answered already (taken off when they reach the front).
    deadlines: VecDeque<(Instant, Slot, &'static str)>,
    /// Admitted and neither answered nor timed out: counts against the limit.
    unresolved: usize,
    /// Admitted and waiting for a connection.
    unsent: Vec<Admitted>,
    /// The server forgot the scripts (NOSCRIPT): load them again in front
    /// of the next pipeline.
    reload_scripts: bool,
    timeouts_in_a_row: u32,
    /// Cluster members only: the keys with a command on its way, each with
    /// the commands waiting behind it, in order.
    busy: HashMap<String, VecDeque<Admitted>>,
    /// Cluster members only: commands on their way, one per busy key.
    sent: FuturesUnordered<futures::future::BoxFuture<'static, Answer>>,
}

impl Driver {
    async fn run(mut self) {
        let mut inflight = FuturesOrdered::new();
        let mut connecting: Option<futures::future::BoxFuture<'static, Result<Conn, RedisError>>> =
            None;
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        let mut open = true;
        loop {
            if !self.unsent.is_empty() {
                match self.server.current() {
                    // Known only once connected: one server behind two
                    // names never counts twice.
                    Some(_) if let Some(refusal) = self.server.refusal() => {
                        for job in std::mem::take(&mut self.unsent) {
                            self.finish(&job, refusal.clone(), false);
                        }
                    }
                    Some(conn) if self.server.cluster.is_some() => self.dispatch(&conn),
                    Some(conn) if inflight.len() < self.settings.limit => {
                        self.drop_expired_claims();
                        if !self.unsent.is_empty() {
                            inflight.push_back(self.write(conn));
                        }
                    }
                    // `limit` round trips unanswered: the next write waits.
                    Some(_) => {}
                    None if connecting.is_none() => {
                        let (server, timeout) = (self.server.clone(), self.settings.timeout);
                        connecting = Some(Box::pin(async move {
                            let r = server.connection(timeout).await;
                            if let Err(e) = &r {
                                tracing::debug!(node = %server.addr, error = %e, "connect failed");
                            }
                            r
                        }));
                    }
                    None => {}
                }
            }
            if !open && self.unresolved == 0 && self.unsent.is_empty() && self.busy.is_empty() {
                // The context is gone and every request has its reply;
                // late replies of timed-out ones are not waited for.
                return;
            }
            let next_deadline = self.next_deadline();
            // Re-arming a timer costs a trip through tokio's timer wheel:
            // only when the oldest deadline changed.
            if let Some(at) = next_deadline
                && timer.deadline() != at.into()
            {
                timer.as_mut().reset(at.into());
            }
            tokio::select! {
                biased;
                Some(answer) = inflight.next(), if !inflight.is_empty() => self.answered(answer),
                Some(answer) = self.sent.next(), if !self.sent.is_empty() => self.answered_one(answer),
                r = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                    connecting = None;
                    match r {
                        Ok(_) => self.refusals_in_a_row = 0,
                        Err(e) => self.connect_failed(&e),
                    }
                }
                () = &mut timer, if next_deadline.is_some() => self.expire(),
                job = self.queue.recv(), if open => {
                    match job {
                        Some(job) => {
                            // One clock read for the requests that came together.
                            let deadline = Instant::now() + self.settings.timeout;
                            self.admit(job, deadline);
                            while let Ok(job) = self.queue.try_recv() {
                                self.admit(job, deadline);
                            }
                        }
                        None => open = false,
                    }
                }
            }
        }
    }

    /// Takes a request from the queue; it times out at `deadline`.
    fn admit(&mut self, job: Job, deadline: Instant) {
        self.deadlines
            .push_back((deadline, job.slot.clone(), job.cmd.name()));
        self.unresolved += 1;
        self.unsent.push(Admitted {
            cmd: job.cmd,
            slot: job.slot,
            resent: false,
            eval: false,
        });
    }

    /// Cluster members: sends each unsent command whose key has none on its
    /// way, while fewer than `limit` are on their way; queues the others
    /// behind the one on their key, or leaves them unsent, in order.
    fn dispatch(&mut self, conn: &Conn) {
        self.drop_expired_claims();
        let mut left = Vec::new();
        for job in std::mem::take(&mut self.unsent) {
            if let Some(waiting) = self.busy.get_mut(job.cmd.key()) {
                waiting.push_back(job);
            } else if self.sent.len() < self.settings.limit && left.is_empty() {
                self.busy.insert(job.cmd.key().to_owned(), VecDeque::new());
                self.send_one(conn.clone(), job);
            } else {
                left.push(job);
            }
        }
        self.unsent = left;
    }

    /// Cluster members: one command on the cluster connection, routed by
    /// its key's slot.
    fn send_one(&mut self, conn: Conn, job: Admitted) {
        let mut pipe = redis::pipe();
        job.cmd.pack(
            &mut pipe,
            &self.settings.scripts,
            conn.scripts_loaded && !job.eval,
            true,
        );
        self.sent.push(Box::pin(async move {
            let mut c = conn.conn.clone();
            let r = match pipe.cmd_iter().next() {
                Some(cmd) => c.req_packed_command(cmd).await.map(|v| vec![v]),
                None => Ok(Vec::new()),
            };
            (conn, vec![job], r)
        }));
    }

    /// Cluster members: a command's answer; then the next one on its key.
    fn answered_one(&mut self, (conn, jobs, result): Answer) {
        for mut job in jobs {
            // A cleanup delete still runs after its request timed out; a
            // SET or extend that timed out is not sent again.
            let wanted = !job.slot.is_resolved() || !job.cmd.claims();
            let retry = match &result {
                Ok(values) => match values.first().cloned().map(|v| job.cmd.meaning(v)) {
                    Some(Some(reply)) => {
                        self.finish(&job, reply, true);
                        false
                    }
                    // NOSCRIPT: this shard lacks the script (a new master);
                    // EVAL carries its text and caches it there.
                    Some(None) if !job.eval && wanted => true,
                    Some(None) | None => {
                        self.finish(
                            &job,
                            Reply::Failed(NodeError::Other("no reply to EVAL".into())),
                            false,
                        );
                        false
                    }
                },
                Err(e) => {
                    // A redis-rs error carrying a NOSCRIPT from the server.
                    if e.code() == Some("NOSCRIPT") && !job.eval && wanted {
                        true
                    } else {
                        self.finish(&job, Reply::Failed(classify(e)), false);
                        false
                    }
                }
            };
            if retry {
                job.eval = true;
                self.send_one(conn.clone(), job);
                continue;
            }
            let key = job.cmd.key().to_owned();
            let next = self.busy.get_mut(&key).and_then(VecDeque::pop_front);
            match next {
                Some(next) => self.send_one(conn.clone(), next),
                None => {
                    self.busy.remove(&key);
                }
            }
        }
    }

    /// Forgets the unsent SETs and extends that timed out while they waited
    /// (their callers counted them as failed); a delete always goes. Only
    /// when something is about to be sent: the queue is scanned once per
    /// write, not at every wake-up.
    fn drop_expired_claims(&mut self) {
        self.unsent
            .retain(|job| !(job.cmd.claims() && job.slot.is_resolved()));
    }

    /// Writes every unsent request as one pipeline on `conn`.
    fn write(&mut self, conn: Conn) -> impl Future<Output = Answer> + Send + 'static + use<> {
        let jobs = std::mem::take(&mut self.unsent);
        let mut pipe = redis::Pipeline::with_capacity(jobs.len() + Scripts::texts().len());
        let mut skip = 0;
        if std::mem::take(&mut self.reload_scripts) {
            for text in Scripts::texts() {
                pipe.cmd("SCRIPT").arg("LOAD").arg(text);
            }
            skip = Scripts::texts().len();
        }
        for job in &jobs {
            job.cmd.pack(
                &mut pipe,
                &self.settings.scripts,
                conn.scripts_loaded,
                false,
            );
        }
        let count = jobs.len() + skip;
        async move {
            let mut c = conn.conn.clone();
            let r = c
                .req_packed_commands(&pipe, 0, count)
                .await
                .map(|mut values| values.split_off(skip.min(values.len())));
            (conn, jobs, r)
        }
    }

    fn answered(&mut self, (conn, jobs, result): Answer) {
        self.server.check(&conn, &result);
        match result {
            Ok(values) => {
                let mut values = values.into_iter();
                for job in jobs {
                    let Some(value) = values.next() else {
                        self.finish(
                            &job,
                            Reply::Failed(NodeError::Other("missing reply".into())),
                            false,
                        );
                        continue;
                    };
                    if job.slot.is_resolved() {
                        continue;
                    }
                    match job.cmd.meaning(value) {
                        Some(reply) => self.finish(&job, reply, true),
                        None => {
                            // NOSCRIPT: the server forgot the scripts.
                            // Load them again and send this one behind.
                            self.reload_scripts = true;
                            self.unsent.push(job);
                        }
                    }
                }
            }
            Err(e) => {
                let resend = breaks_connection(&e);
                for mut job in jobs {
                    if job.slot.is_resolved() {
                        continue;
                    }
                    if resend && job.cmd.may_resend() && !job.resent {
                        // The connection died (a restarted node): a
                        // compare-and-delete or -extend runs once more on
                        // a new one; running twice is harmless.
                        job.resent = true;
                        self.unsent.push(job);
                    } else {
                        self.finish(&job, Reply::Failed(classify(&e)), false);
                    }
                }
            }
        }
    }

    fn connect_failed(&mut self, e: &RedisError) {
        for job in std::mem::take(&mut self.unsent) {
            self.finish(&job, Reply::Failed(classify(e)), false);
        }
        if e.is_connection_refusal() && self.server.cluster.is_none() {
            let backoff = REFUSED_BACKOFF
                .saturating_mul(1 << self.refusals_in_a_row.min(16))
                .min(self.settings.cooldown());
            self.refusals_in_a_row = self.refusals_in_a_row.saturating_add(1);
            self.suspect_why.store(WHY_REFUSED, Ordering::Relaxed);
            let until = since_epoch(Instant::now() + backoff);
            self.suspect_until.store(until, Ordering::Relaxed);
        }
    }

    /// Resolves a request's slot, once. A reply in time ends a suspicion.
    fn finish(&mut self, job: &Admitted, reply: Reply, answered: bool) {
        if job.slot.is_resolved() {
            return;
        }
        crate::metrics::node_reply(&self.server.addr, job.cmd.name(), &reply);
        if let Reply::Failed(e) = &reply {
            tracing::debug!(node = %self.server.addr, op = job.cmd.name(), error = ?e, "node failed");
        }
        if answered {
            self.timeouts_in_a_row = 0;
            self.suspect_until.store(0, Ordering::Relaxed);
        }
        if job.slot.resolve(reply) {
            self.unresolved -= 1;
            self.settings.work.end();
        }
    }

    /// The oldest unanswered request's deadline.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some((_, slot, _)) = self.deadlines.front() {
            if !slot.is_resolved() {
                break;
            }
            self.deadlines.pop_front();
        }
        self.deadlines.front().map(|(at, _, _)| *at)
    }

    /// Times out every request whose deadline passed.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some((at, slot, op)) = self.deadlines.front() {
            if *at > now {
                break;
            }
            if !slot.is_resolved() {
                tracing::debug!(node = %self.server.addr, op, "node timed out");
                let reply = Reply::Failed(NodeError::Timeout);
                crate::metrics::node_reply(&self.server.addr, op, &reply);
                if slot.resolve(reply) {
                    self.unresolved -= 1;
                    self.settings.work.end();
                    self.timeouts_in_a_row += 1;
                }
            }
            self.deadlines.pop_front();
        }
        if self.timeouts_in_a_row >= SUSPECT_AFTER && self.server.cluster.is_none() {
            let until = since_epoch(now + self.settings.cooldown());
            self.suspect_why.store(WHY_TIMEOUTS, Ordering::Relaxed);
            self.suspect_until.store(until, Ordering::Relaxed);
        }
    }
}

impl Drop for Driver {
    /// The runtime shut down under the driver: nobody waits any more, but
    /// `settle` counts the requests, so each gets a reply.
    fn drop(&mut self) {
        let gone = || Reply::Failed(NodeError::Other("the node's driver stopped".into()));
        for (_, slot, _) in self.deadlines.drain(..) {
            if slot.resolve(gone()) {
                self.settings.work.end();
            }
        }
        while let Ok(job) = self.queue.try_recv() {
            if job.slot.resolve(gone()) {
                self.settings.work.end();
            }
        }
    }
}
