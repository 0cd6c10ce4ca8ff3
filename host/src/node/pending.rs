//! The host side of a `fan-out`: where one round's replies land, and the
//! pollable the guest waits on.
//!
//! A request goes out when the guest makes it (its node's lane sends it, in
//! the order made), not when the guest polls it; dropping the fan-out
//! unfinished changes nothing for its requests, which the lanes see to
//! their end. So an operation that returns at quorum leaves nothing to
//! spawn.
//!
//! One allocation per round, not per request: the round's reply cells and
//! its waker live together, and each request's [`Slot`] is a reference to
//! the round and an index into it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio_util::sync::CancellationToken;
use wasmtime_wasi::p2::Pollable;

use crate::bindings::node::{NodeReply, Reply};

/// What a round's requests share.
struct Shared {
    /// Per request, its reply once it lands: the node's answer, a failure,
    /// or a timeout, whichever comes first.
    replies: Box<[OnceLock<Reply>]>,
    /// How many replies landed (each request's first).
    landed: AtomicU32,
    waker: AtomicWaker,
}

/// Where one request's reply lands: its round and its place in it.
#[derive(Clone)]
pub(crate) struct Slot {
    shared: Arc<Shared>,
    at: usize,
}

impl Slot {
    /// Sets the reply unless one was set; true if this one was.
    pub(super) fn resolve(&self, reply: Reply) -> bool {
        let first = self.shared.replies[self.at].set(reply).is_ok();
        if first {
            self.shared.landed.fetch_add(1, Ordering::SeqCst);
            self.shared.waker.wake();
        }
        first
    }

    pub(super) fn is_resolved(&self) -> bool {
        self.shared.replies[self.at].get().is_some()
    }
}

/// A `fan-out` resource: one operation's requests to several nodes.
pub struct FanOut {
    shared: Arc<Shared>,
    /// Per request, its node; `None` once `take` returned its reply.
    nodes: Vec<Option<u32>>,
    /// How many replies `take` returned.
    taken: u32,
    /// How many untaken replies make the pollable ready (`subscribe`).
    want: u32,
}

impl FanOut {
    /// A round to `nodes` (in the order of its slots); nothing sent yet.
    pub(super) fn new(nodes: &[u32]) -> Self {
        Self {
            shared: Arc::new(Shared {
                replies: nodes.iter().map(|_| OnceLock::new()).collect(),
                landed: AtomicU32::new(0),
                waker: AtomicWaker::new(),
            }),
            nodes: nodes.iter().copied().map(Some).collect(),
            taken: 0,
            want: 1,
        }
    }

    /// The slot of the request at `at` (the order of `new`'s nodes).
    pub(super) fn slot(&self, at: usize) -> Slot {
        Slot {
            shared: self.shared.clone(),
            at,
        }
    }

    /// Makes the pollable wait for `replies` untaken replies (at least 1).
    pub(super) fn want(&mut self, replies: u32) {
        self.want = replies.max(1);
    }

    /// The replies that landed since the last call, each once.
    pub(super) fn take(&mut self) -> Vec<NodeReply> {
        let mut out = Vec::new();
        for (node, cell) in self.nodes.iter_mut().zip(self.shared.replies.iter()) {
            if let (Some(n), Some(reply)) = (*node, cell.get()) {
                out.push(NodeReply {
                    node: n,
                    reply: reply.clone(),
                });
                *node = None;
                self.taken += 1;
            }
        }
        out
    }

    /// Enough untaken replies landed: `want`, or every one still to come.
    fn enough(&self) -> bool {
        // `landed` counts a reply just after it is set, so it may lag
        // behind what `take` saw; never ahead.
        let untaken = self
            .shared
            .landed
            .load(Ordering::SeqCst)
            .saturating_sub(self.taken);
        let to_come = self.nodes.len() as u32 - self.taken;
        untaken >= self.want.min(to_come).max(1)
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.enough() {
            return Poll::Ready(());
        }
        self.shared.waker.register(cx.waker());
        if self.enough() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for FanOut {
    async fn ready(&mut self) {
        std::future::poll_fn(|cx| self.poll(cx)).await;
    }
}

/// Becomes ready when the operation's cancellation token fires.
pub(super) struct Cancellation(pub(super) CancellationToken);

#[wasmtime_wasi::async_trait]
impl Pollable for Cancellation {
    async fn ready(&mut self) {
        self.0.cancelled().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_returns_each_reply_once_and_clears_readiness() {
        let mut f = FanOut::new(&[0, 3, 4]);
        let (a, b) = (f.slot(0), f.slot(2));
        assert!(f.take().is_empty());
        assert!(!f.enough());
        assert!(a.resolve(Reply::Done));
        assert!(!a.resolve(Reply::Refused), "the first reply stays");
        assert!(f.enough());
        let got = f.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].node, 0);
        assert!(matches!(got[0].reply, Reply::Done));
        assert!(!f.enough());
        assert!(f.take().is_empty(), "each reply once");
        assert!(b.resolve(Reply::Refused));
        let got = f.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].node, 4);
        assert!(b.is_resolved() && a.is_resolved() && !f.slot(1).is_resolved());
    }

    /// The pollable is not ready for fewer replies than the caller wants,
    /// unless no more can come.
    #[test]
    fn the_pollable_waits_for_the_replies_wanted() {
        let mut f = FanOut::new(&[0, 1, 2, 3, 4]);
        f.want(3);
        f.slot(4).resolve(Reply::Done);
        f.slot(1).resolve(Reply::Refused);
        assert!(!f.enough(), "2 of the 3 wanted");
        f.slot(0).resolve(Reply::Done);
        assert!(f.enough());
        assert_eq!(f.take().len(), 3);
        assert!(!f.enough());
        f.slot(2).resolve(Reply::Done);
        assert!(!f.enough(), "still wants 3 of the 2 left: waits for both");
        f.slot(3).resolve(Reply::Done);
        assert!(f.enough(), "every reply still to come is in");
        assert_eq!(f.take().len(), 2);
    }
}
