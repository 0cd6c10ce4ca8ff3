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

use std::sync::atomic::{AtomicBool, Ordering};
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
    /// A reply landed that `take` has not looked at.
    fresh: AtomicBool,
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
            self.shared.fresh.store(true, Ordering::SeqCst);
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
}

impl FanOut {
    /// A round to `nodes` (in the order of its slots); nothing sent yet.
    pub(super) fn new(nodes: &[u32]) -> Self {
        Self {
            shared: Arc::new(Shared {
                replies: nodes.iter().map(|_| OnceLock::new()).collect(),
                fresh: AtomicBool::new(false),
                waker: AtomicWaker::new(),
            }),
            nodes: nodes.iter().copied().map(Some).collect(),
        }
    }

    /// The slot of the request at `at` (the order of `new`'s nodes).
    pub(super) fn slot(&self, at: usize) -> Slot {
        Slot {
            shared: self.shared.clone(),
            at,
        }
    }

    /// The replies that landed since the last call, each once.
    pub(super) fn take(&mut self) -> Vec<NodeReply> {
        // Cleared before looking, so a reply landing meanwhile leaves it set
        // (at worst one wake-up finds nothing new).
        self.shared.fresh.store(false, Ordering::SeqCst);
        let mut out = Vec::new();
        for (node, cell) in self.nodes.iter_mut().zip(self.shared.replies.iter()) {
            if let (Some(n), Some(reply)) = (*node, cell.get()) {
                out.push(NodeReply {
                    node: n,
                    reply: reply.clone(),
                });
                *node = None;
            }
        }
        out
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.fresh.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        self.shared.waker.register(cx.waker());
        if self.shared.fresh.load(Ordering::SeqCst) {
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
        assert!(a.resolve(Reply::Done));
        assert!(!a.resolve(Reply::Refused), "the first reply stays");
        assert!(f.shared.fresh.load(Ordering::SeqCst));
        let got = f.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].node, 0);
        assert!(matches!(got[0].reply, Reply::Done));
        assert!(!f.shared.fresh.load(Ordering::SeqCst));
        assert!(f.take().is_empty(), "each reply once");
        assert!(b.resolve(Reply::Refused));
        let got = f.take();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].node, 4);
        assert!(b.is_resolved() && a.is_resolved() && !f.slot(1).is_resolved());
    }
}
