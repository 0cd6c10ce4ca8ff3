//! The Redlock commands (the three of the lock, two more for fences): their
//! wire form (EVALSHA of a Lua script, or EVAL where the server refused to
//! load scripts), what their replies mean, and how redis-rs errors become
//! what the guest sees. The one place host errors are converted.

use std::sync::Arc;

use redis::{RedisError, Script, Value};

use crate::bindings::node::{NodeError, Reply};

/// Compare-and-delete: deletes the key only while it holds our token. The
/// same script file serves the wasi:sockets plug (`plug/`).
pub(super) const DELETE_IF_TOKEN: &str = include_str!("../../lua/delete-if-token.lua");

/// Compare-and-extend: a TTL at least the new one, only while the key holds
/// our token.
pub(super) const EXTEND_IF_TOKEN: &str = include_str!("../../lua/extend-if-token.lua");

/// Compare-and-set: set when free, or refresh when it already holds our
/// token (a retry finding its own earlier SET counts as granted).
pub(super) const SET_IF_ABSENT: &str = include_str!("../../lua/set-if-absent.lua");

/// Compare-and-set that, when it grants, also raises the key's fence
/// counter and answers with it (docs/FENCING.md).
pub(super) const SET_IF_ABSENT_FENCED: &str = include_str!("../../lua/set-if-absent-fenced.lua");

/// Commits a fence: the counter to at least the fence, never lower.
pub(super) const RAISE_FENCE: &str = include_str!("../../lua/raise-fence.lua");

/// The key of a lock key's fence counter (both as stored in Redis, prefix
/// included): `<key>:fence`. A lock key with a Redis Cluster hash tag
/// (`{invoice:42}`) shares its slot with its counter. The plug
/// (`plug/src/wire.rs`) follows the same rule.
pub(crate) fn fence_key(key: &str) -> String {
    format!("{key}:fence")
}

/// The fence counter's key on a Redis Cluster member, where it must share
/// the lock key's hash slot so that the fenced script stays on one shard:
/// `<key>:fence` when the key has a hash tag (the counter has the same
/// tag), `{<key>}:fence` otherwise (its tag is the whole key, so it hashes
/// as the key does). `None` for a key with a `}` and no hash tag (or an
/// empty key), which no suffix or tag can pair with its counter.
pub(crate) fn cluster_fence_key(key: &str) -> Option<String> {
    if hash_tag(key).is_some() {
        Some(fence_key(key))
    } else if key.contains('}') || key.is_empty() {
        None
    } else {
        Some(format!("{{{key}}}:fence"))
    }
}

/// A key's Redis Cluster hash tag: what lies between its first `{` and the
/// first `}` after it, when that is not empty.
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let len = key[open + 1..].find('}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// A key's Redis Cluster hash slot (0-16383): CRC16 (XMODEM) of its hash
/// tag, or of the whole key, modulo 16384, as the cluster computes it.
pub fn key_slot(key: &str) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    let mut crc: u16 = 0;
    for &b in hashed.as_bytes() {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc & 0x3FFF
}

/// The scripts' SHA1 digests, computed once per context.
pub(super) struct Scripts {
    set: String,
    delete: String,
    extend: String,
    set_fenced: String,
    raise_fence: String,
}

impl Scripts {
    /// The scripts' text, in the order loaded.
    pub(super) fn texts() -> [&'static str; 5] {
        [
            SET_IF_ABSENT,
            DELETE_IF_TOKEN,
            EXTEND_IF_TOKEN,
            SET_IF_ABSENT_FENCED,
            RAISE_FENCE,
        ]
    }

    pub(super) fn new() -> Self {
        let sha = |text| Script::new(text).get_hash().to_owned();
        Self {
            set: sha(SET_IF_ABSENT),
            delete: sha(DELETE_IF_TOKEN),
            extend: sha(EXTEND_IF_TOKEN),
            set_fenced: sha(SET_IF_ABSENT_FENCED),
            raise_fence: sha(RAISE_FENCE),
        }
    }
}

/// One of the Redlock operations, with the key as stored in Redis.
pub(crate) enum Command {
    /// `fresh`: no earlier request carried the token, so the key cannot
    /// hold it: a plain `SET key token NX PX ttl_ms` instead of the script.
    SetIfAbsent {
        key: Arc<str>,
        token: Arc<str>,
        ttl_ms: u64,
        fresh: bool,
    },
    DeleteIfToken {
        key: Arc<str>,
        token: Arc<str>,
    },
    ExtendIfToken {
        key: Arc<str>,
        token: Arc<str>,
        ttl_ms: u64,
    },
    /// `key` is the lock key; the counter is [`fence_key`] of it.
    SetIfAbsentFenced {
        key: Arc<str>,
        token: Arc<str>,
        ttl_ms: u64,
    },
    /// `key` is the lock key; the counter is [`fence_key`] of it.
    RaiseFence {
        key: Arc<str>,
        fence: u64,
    },
}

impl Command {
    /// Whether sending it again on a new connection is harmless: a
    /// compare-and-delete or compare-and-extend, never a SET (it could
    /// land after the cleanup delete that the new connection carries).
    pub(super) fn may_resend(&self) -> bool {
        !matches!(
            self,
            Command::SetIfAbsent { .. } | Command::SetIfAbsentFenced { .. }
        )
    }

    /// Whether it takes or keeps a key (a SET or an extend), as opposed to
    /// giving one back: what a node that stopped answering is not asked.
    pub(super) fn claims(&self) -> bool {
        !matches!(self, Command::DeleteIfToken { .. })
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            Command::SetIfAbsent { .. } => "set-if-absent",
            Command::DeleteIfToken { .. } => "delete-if-token",
            Command::ExtendIfToken { .. } => "extend-if-token",
            Command::SetIfAbsentFenced { .. } => "set-if-absent-fenced",
            Command::RaiseFence { .. } => "raise-fence",
        }
    }

    /// The lock key it is about.
    pub(super) fn key(&self) -> &str {
        match self {
            Command::SetIfAbsent { key, .. }
            | Command::DeleteIfToken { key, .. }
            | Command::ExtendIfToken { key, .. }
            | Command::SetIfAbsentFenced { key, .. }
            | Command::RaiseFence { key, .. } => key,
        }
    }

    /// On a cluster member: whether every key it touches shares one slot
    /// (only the fenced commands touch two); the reason when not.
    pub(super) fn fits_one_slot(&self) -> Result<(), String> {
        if self.fenced() && cluster_fence_key(self.key()).is_none() {
            return Err(format!(
                "key {:?} is empty or contains '}}' without a hash tag: on a Redis Cluster member its \
                 fence counter cannot share its slot; give the key a hash tag ({{...}}) or \
                 leave out the '}}'",
                self.key()
            ));
        }
        Ok(())
    }

    /// True for the commands whose reply is a fence counter.
    fn fenced(&self) -> bool {
        matches!(
            self,
            Command::SetIfAbsentFenced { .. } | Command::RaiseFence { .. }
        )
    }

    /// Appends the command to `pipe`: EVALSHA of its script once the
    /// connection loaded the scripts, the script's text otherwise. On a
    /// `cluster` member the fence counter is [`cluster_fence_key`].
    pub(super) fn pack(
        &self,
        pipe: &mut redis::Pipeline,
        scripts: &Scripts,
        loaded: bool,
        cluster: bool,
    ) {
        let fence = |key: &str| match cluster {
            // `fits_one_slot` refused the keys without one before.
            true => cluster_fence_key(key).unwrap_or_else(|| fence_key(key)),
            false => fence_key(key),
        };
        let (sha, text) = match self {
            Command::SetIfAbsent { .. } => (&scripts.set, SET_IF_ABSENT),
            Command::DeleteIfToken { .. } => (&scripts.delete, DELETE_IF_TOKEN),
            Command::ExtendIfToken { .. } => (&scripts.extend, EXTEND_IF_TOKEN),
            Command::SetIfAbsentFenced { .. } => (&scripts.set_fenced, SET_IF_ABSENT_FENCED),
            Command::RaiseFence { .. } => (&scripts.raise_fence, RAISE_FENCE),
        };
        if let Command::SetIfAbsent {
            key,
            token,
            ttl_ms,
            fresh: true,
        } = self
        {
            let mut cmd = redis::Cmd::with_capacity(6, 3 + key.len() + token.len() + 2 + 2 + 20);
            cmd.arg("SET")
                .arg(&**key)
                .arg(&**token)
                .arg("NX")
                .arg("PX")
                .arg(*ttl_ms);
            pipe.add_command(cmd);
            return;
        }
        // Sized once: a command's buffers never grow while it is built.
        let (name, script) = match loaded {
            true => ("EVALSHA", sha.as_str()),
            false => ("EVAL", text),
        };
        let (keys, words) = match self {
            Command::SetIfAbsent { key, token, .. } | Command::ExtendIfToken { key, token, .. } => {
                (1, key.len() + token.len() + 20)
            }
            Command::DeleteIfToken { key, token } => (1, key.len() + token.len()),
            Command::SetIfAbsentFenced { key, token, .. } => {
                (2, 2 * key.len() + 8 + token.len() + 20)
            }
            Command::RaiseFence { key, .. } => (1, key.len() + 8 + 20),
        };
        let mut cmd = redis::Cmd::with_capacity(7, name.len() + script.len() + 1 + words);
        cmd.arg(name).arg(script).arg(keys);
        match self {
            Command::SetIfAbsent {
                key, token, ttl_ms, ..
            }
            | Command::ExtendIfToken { key, token, ttl_ms } => {
                cmd.arg(&**key).arg(&**token).arg(*ttl_ms);
            }
            Command::DeleteIfToken { key, token } => {
                cmd.arg(&**key).arg(&**token);
            }
            Command::SetIfAbsentFenced { key, token, ttl_ms } => {
                cmd.arg(&**key).arg(fence(key)).arg(&**token).arg(*ttl_ms);
            }
            Command::RaiseFence { key, fence: value } => {
                cmd.arg(fence(key)).arg(*value);
            }
        }
        pipe.add_command(cmd);
    }

    /// What a reply means. `None` for NOSCRIPT: the server forgot the
    /// scripts (SCRIPT FLUSH), send it again as EVAL.
    pub(super) fn meaning(&self, value: Value) -> Option<Reply> {
        Some(match value {
            // A fence counter: at least the node's clock in µs, never 0.
            Value::Int(v) if v > 0 && self.fenced() => Reply::Fence(v as u64),
            Value::Okay | Value::Int(1) if !self.fenced() => Reply::Done,
            Value::SimpleString(s) if s == "OK" && !self.fenced() => Reply::Done,
            Value::Nil | Value::Int(0) => Reply::Refused,
            Value::ServerError(e) if e.code() == "NOSCRIPT" => return None,
            Value::ServerError(e) => Reply::Failed(NodeError::Redis(match e.details() {
                Some(d) => format!("{} {d}", e.code()),
                None => e.code().to_owned(),
            })),
            other => Reply::Failed(NodeError::Other(format!(
                "unexpected reply to {}: {other:?}",
                self.name()
            ))),
        })
    }
}

/// Maps a redis-rs error to what the guest sees.
pub(super) fn classify(e: &RedisError) -> NodeError {
    if let Some(code) = e.code() {
        let text = match e.detail() {
            Some(d) => format!("{code} {d}"),
            None => code.to_owned(),
        };
        NodeError::Redis(text)
    } else if e.is_timeout() {
        NodeError::Timeout
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        NodeError::Connection(e.to_string())
    } else {
        NodeError::Other(e.to_string())
    }
}

/// Whether the error means the connection is broken (the next request
/// reconnects), as opposed to a server's error reply.
pub(super) fn breaks_connection(e: &RedisError) -> bool {
    e.is_unrecoverable_error() || e.is_io_error() || e.is_connection_dropped()
}

impl From<NodeError> for crate::error::NodeError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Timeout => Self::Timeout,
            NodeError::Connection(s) => Self::Connection(s),
            NodeError::Redis(s) => Self::Redis(s),
            NodeError::Other(s) => Self::Other(s),
        }
    }
}

impl From<&RedisError> for crate::error::NodeError {
    fn from(e: &RedisError) -> Self {
        classify(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_rule() {
        // CRC16/XMODEM's check value: crc("123456789") = 0x31C3.
        assert_eq!(key_slot("123456789"), 0x31C3);
        assert_eq!(key_slot("{123456789}.x"), 0x31C3);
        assert_eq!(key_slot("a{123456789}b{c}"), 0x31C3);
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(key_slot("{}123456789"), key_slot("123456789"));
    }

    #[test]
    fn a_cluster_fence_counter_shares_its_keys_slot() {
        for key in ["invoice:42", "{user:7}:job", "a{b", "app:{t}", "{a}}"] {
            let counter = cluster_fence_key(key).unwrap();
            assert_eq!(key_slot(&counter), key_slot(key), "{key} / {counter}");
        }
        // Tagged keys keep the single-process name.
        assert_eq!(
            cluster_fence_key("{user:7}:job").unwrap(),
            "{user:7}:job:fence"
        );
        assert_eq!(
            cluster_fence_key("invoice:42").unwrap(),
            "{invoice:42}:fence"
        );
        // A '}' with no tag: no counter name shares the slot.
        assert_eq!(cluster_fence_key("a}b"), None);
        assert_eq!(cluster_fence_key("x{}y"), None);
        assert_eq!(cluster_fence_key(""), None);
    }
}
