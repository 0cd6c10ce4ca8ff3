//! In-process nodes that keep keys in memory with their TTLs, with Redis's
//! semantics for the commands (the Lua scripts', fence counters included).
//! They exclude only within this process: for measuring the lock core and
//! the host without Redis, and for tests of code that takes locks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::KeyState;
use super::command::Command;
use crate::bindings::node::{NodeError, Reply};

/// An in-memory node's keys (value and expiry) and fence counters (by lock
/// key, with no expiry, as `lua/set-if-absent-fenced.lua` keeps them).
#[derive(Default)]
pub(super) struct Memory(Mutex<State>);

#[derive(Default)]
struct State {
    keys: HashMap<Arc<str>, (Arc<str>, Instant)>,
    fences: HashMap<Arc<str>, u64>,
}

/// The fence floor: the wall clock rounded down to the whole second, in
/// microseconds since 1970, as the fenced script reads it from `TIME`.
fn fence_floor() -> u64 {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    secs.saturating_mul(1_000_000)
}

/// Lua's numbers are exact below it: the scripts refuse to go beyond.
const MAX_FENCE: u64 = (1 << 53) - 1;

impl Memory {
    /// Runs `cmd` at once.
    pub(super) fn apply(&self, cmd: &Command) -> Reply {
        let now = Instant::now();
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let State { keys, fences } = &mut *state;
        let key = cmd.key();
        if keys.get(key).is_some_and(|(_, expires)| *expires <= now) {
            keys.remove(key);
        }
        match cmd {
            Command::SetIfAbsent {
                key,
                token,
                ttl_ms,
                fresh,
            } => {
                // Fresh: `SET NX PX`, refused whoever holds the key.
                if keys.get(key).is_some_and(|(t, _)| *fresh || t != token) {
                    return Reply::Refused;
                }
                let expires = now + Duration::from_millis(*ttl_ms);
                keys.insert(key.clone(), (token.clone(), expires));
                Reply::Done
            }
            Command::DeleteIfToken { key, token } => {
                if keys.get(key).is_some_and(|(t, _)| t == token) {
                    keys.remove(key);
                    Reply::Done
                } else {
                    Reply::Refused
                }
            }
            Command::ExtendIfToken { key, token, ttl_ms } => match keys.get_mut(key) {
                Some((t, expires)) if t == token => {
                    *expires = (*expires).max(now + Duration::from_millis(*ttl_ms));
                    Reply::Done
                }
                _ => Reply::Refused,
            },
            Command::SetIfAbsentFenced { key, token, ttl_ms } => {
                let counter = fences.get(key).copied().unwrap_or(0);
                let fence = counter.saturating_add(1).max(fence_floor());
                if fence > MAX_FENCE {
                    return Reply::Failed(NodeError::Redis(format!(
                        "ERR fence counter {key}:fence would pass 2^53 - 1"
                    )));
                }
                if keys.get(key).is_some_and(|(t, _)| t != token) {
                    return Reply::Refused;
                }
                let expires = now + Duration::from_millis(*ttl_ms);
                keys.insert(key.clone(), (token.clone(), expires));
                fences.insert(key.clone(), fence);
                Reply::Fence(fence)
            }
            Command::RaiseFence { key, fence } => {
                let counter = fences.entry(key.clone()).or_default();
                *counter = (*counter).max(*fence);
                Reply::Fence(*counter)
            }
        }
    }

    /// What the node holds for `key`.
    pub(super) fn inspect(&self, key: &str) -> KeyState {
        let now = Instant::now();
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let live = state.keys.get(key).filter(|(_, exp)| *exp > now);
        KeyState {
            holder: live.map(|(t, _)| t.to_string()),
            ttl: live.map(|(_, exp)| *exp - now),
        }
    }
}
