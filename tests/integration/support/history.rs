//! A history of what each client believed, and a checker for it (Jepsen's
//! lock tests are the model).
//!
//! For each successful acquire or extend a client records the window in
//! which it believed it held the lock: from the moment the call returned to
//! the end of validity (measured from before its first request), cut at the
//! moment it called release. Two windows of different tokens on one key that
//! overlap are a violation of mutual exclusion.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// One belief: `client` held `key` with `token` during `[from, to)`.
#[derive(Debug, Clone)]
pub struct Window {
    pub key: String,
    pub token: String,
    pub client: usize,
    pub from: Instant,
    pub to: Instant,
}

/// Two windows of different tokens that overlap.
#[derive(Debug, Clone)]
pub struct Overlap {
    pub first: Window,
    pub second: Window,
}

/// All clients' windows, appended concurrently.
#[derive(Default)]
pub struct History {
    windows: Mutex<Vec<Window>>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client` believed it held `key` from `from` to `to`.
    pub fn hold(&self, client: usize, key: &str, token: &str, from: Instant, to: Instant) {
        if to > from {
            self.windows.lock().unwrap().push(Window {
                key: key.into(),
                token: token.into(),
                client,
                from,
                to,
            });
        }
    }

    /// Cuts every window of `token` at `at` (the client called release).
    pub fn release(&self, token: &str, at: Instant) {
        for w in self.windows.lock().unwrap().iter_mut() {
            if w.token == token && w.to > at {
                w.to = at.max(w.from);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.windows.lock().unwrap().len()
    }

    pub fn windows(&self) -> Vec<Window> {
        self.windows.lock().unwrap().clone()
    }

    /// Every overlap between windows of different tokens on the same key.
    pub fn overlaps(&self) -> Vec<Overlap> {
        check(self.windows())
    }
}

/// The checker: per key, sorted by start, each window against the windows
/// that start before it ends.
pub fn check(windows: Vec<Window>) -> Vec<Overlap> {
    let mut by_key: HashMap<String, Vec<Window>> = HashMap::new();
    for w in windows {
        by_key.entry(w.key.clone()).or_default().push(w);
    }
    let mut found = Vec::new();
    for (_, mut ws) in by_key {
        ws.sort_by_key(|w| w.from);
        for i in 0..ws.len() {
            for j in i + 1..ws.len() {
                if ws[j].from >= ws[i].to {
                    break;
                }
                if ws[j].token != ws[i].token {
                    found.push(Overlap {
                        first: ws[i].clone(),
                        second: ws[j].clone(),
                    });
                }
            }
        }
    }
    found
}

/// One successful fenced acquire: when its call started and returned, and
/// its fence.
#[derive(Debug, Clone, Copy)]
pub struct Fenced {
    pub client: usize,
    pub start: Instant,
    pub returned: Instant,
    pub fence: u64,
}

/// Two fenced acquires out of order: `first` returned before `second`
/// started, and its fence is not lower (docs/FENCING.md).
#[derive(Debug, Clone, Copy)]
pub struct FenceViolation {
    pub first: Fenced,
    pub second: Fenced,
}

/// The fence checker: for each acquire, the highest fence among those that
/// returned before it started must be lower than its own. Reports each
/// acquire that breaks it once, against that highest one. O(n log n), so it
/// also runs over a soak's history.
pub fn fence_violations(history: &[Fenced]) -> Vec<FenceViolation> {
    let mut by_return = history.to_vec();
    by_return.sort_by_key(|f| f.returned);
    let mut by_start = history.to_vec();
    by_start.sort_by_key(|f| f.start);
    let mut found = Vec::new();
    let mut highest: Option<Fenced> = None;
    let mut next = by_return.iter().peekable();
    for b in by_start {
        while let Some(a) = next.next_if(|a| a.returned < b.start) {
            if highest.is_none_or(|h| a.fence > h.fence) {
                highest = Some(*a);
            }
        }
        if let Some(a) = highest
            && a.fence >= b.fence
        {
            found.push(FenceViolation {
                first: a,
                second: b,
            });
        }
    }
    found
}
