//! The host side of a `pending-reply`: where a request's reply lands, and
//! the pollables the guest waits on.
//!
//! A request goes out when the guest makes it (its node's lane sends it, in
//! the order made), not when the guest polls it; dropping the resource
//! unfinished changes nothing for the request, which the lane sees to its
//! end. So an operation that returns at quorum leaves nothing to spawn.

use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio_util::sync::CancellationToken;
use wasmtime_wasi::p2::Pollable;

use crate::bindings::node::Reply;

/// Where one request's reply lands, once: the node's answer, a failure, or
/// a timeout, whichever comes first.
#[derive(Default)]
pub(crate) struct Slot {
    reply: OnceLock<Reply>,
    waker: AtomicWaker,
}

impl Slot {
    /// Sets the reply unless one was set; true if this one was.
    pub(super) fn resolve(&self, reply: Reply) -> bool {
        let first = self.reply.set(reply).is_ok();
        if first {
            self.waker.wake();
        }
        first
    }

    pub(super) fn is_resolved(&self) -> bool {
        self.reply.get().is_some()
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_resolved() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.is_resolved() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A `pending-reply` resource.
pub struct PendingReply(State);

enum State {
    /// Answered when made (an in-memory node, or a request refused before
    /// any I/O).
    Ready(Reply),
    /// On its way: its lane resolves the slot.
    Waiting(Arc<Slot>),
}

impl PendingReply {
    pub(super) fn ready(reply: Reply) -> Self {
        Self(State::Ready(reply))
    }

    pub(super) fn waiting(slot: Arc<Slot>) -> Self {
        Self(State::Waiting(slot))
    }

    pub(super) fn reply(&self) -> Option<&Reply> {
        match &self.0 {
            State::Ready(r) => Some(r),
            State::Waiting(slot) => slot.reply.get(),
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for PendingReply {
    async fn ready(&mut self) {
        if let State::Waiting(slot) = &self.0 {
            std::future::poll_fn(|cx| slot.poll(cx)).await;
        }
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
