//! In-process nodes that keep keys in memory with their TTLs, with Redis's
//! semantics for the three commands. They exclude only within this process:
//! for measuring the lock core and the host without Redis, and for tests of
//! code that takes locks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::KeyState;
use super::command::Command;
use crate::bindings::node::Reply;

/// An in-memory node's keys: value and expiry.
#[derive(Default)]
pub(super) struct Memory(Mutex<HashMap<String, (String, Instant)>>);

impl Memory {
    /// Runs `cmd` at once.
    pub(super) fn apply(&self, cmd: &Command) -> Reply {
        let now = Instant::now();
        let mut keys = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = cmd.key();
        if keys.get(key).is_some_and(|(_, expires)| *expires <= now) {
            keys.remove(key);
        }
        match cmd {
            Command::SetIfAbsent { key, token, ttl_ms } => {
                if keys.get(key).is_some_and(|(t, _)| t != token) {
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
        }
    }

    /// What the node holds for `key`.
    pub(super) fn inspect(&self, key: &str) -> KeyState {
        let now = Instant::now();
        let keys = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let live = keys.get(key).filter(|(_, exp)| *exp > now);
        KeyState {
            holder: live.map(|(t, _)| t.clone()),
            ttl: live.map(|(_, exp)| *exp - now),
        }
    }
}
