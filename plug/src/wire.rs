//! What the plug sends for each `redis-node` operation, what it expects
//! back, and which commands may go out twice.
//!
//! The one place that knows the SET forms: the compare-and-set script
//! `lua/set-if-absent.lua`, as the Rust host runs it (a retry that finds its
//! own token is granted), and for an acquire's first attempt, whose token no
//! node can hold yet, a plain `SET NX PX`. To change them, change
//! [`set_if_absent`], [`set_if_absent_fresh`] and their [`Expect`]. The fenced forms run `lua/set-if-absent-fenced.lua` and
//! `lua/raise-fence.lua` on the counter [`fence_key`], as the Rust host
//! does (docs/FENCING.md); a raise may be resent (it never lowers a
//! counter), a fenced SET never is.
//!
//! Resending. A request on a connection that was open before it turns out
//! dead when the server closed that connection in between (its `timeout`, a
//! restart, a proxy) - or when the connection died after the server ran the
//! command. The plug cannot tell which, so it sends again only what is
//! harmless to run twice *and* harmless to run late: the compare-and-delete
//! and compare-and-extend scripts (they act on our token only). A SET is
//! never sent twice: landing on a new connection, it could run after the
//! cleanup delete that the lock core sends once the attempt failed, and
//! leave a key nobody holds until its TTL. A SET that met a dead connection
//! fails its node (`failed(connection ...)`), which the core already treats
//! as "may or may not have run".
//!
//! Ordering. Per node, one instance's commands are applied in the order it
//! sent them as long as they share a connection: one connection per node,
//! pipelined, replies matched in order. The plug moves to a new connection
//! only when the old one broke, or when its oldest request has waited past
//! the staleness limit (a hung node); commands still unanswered on a
//! replaced connection may be applied after later ones on the new one if
//! the node wakes up, so a SET stuck there can outlive its cleanup until
//! its TTL. A SET still unsent when its request times out is dropped, never
//! sent late.

use std::rc::Rc;

use crate::resp::{self, Expect};

const SET_IF_ABSENT: &str = include_str!("../../host/lua/set-if-absent.lua");
const DELETE_IF_TOKEN: &str = include_str!("../../host/lua/delete-if-token.lua");
const EXTEND_IF_TOKEN: &str = include_str!("../../host/lua/extend-if-token.lua");
const SET_IF_ABSENT_FENCED: &str = include_str!("../../host/lua/set-if-absent-fenced.lua");
const RAISE_FENCE: &str = include_str!("../../host/lua/raise-fence.lua");

/// The key of a lock key's fence counter: `<key>:fence`, as the Rust host
/// names it (`host/src/node/command.rs`, `fence_key`).
pub fn fence_key(key: &str) -> String {
    format!("{key}:fence")
}

/// Which operation a command carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `set-if-absent`.
    SetIfAbsent,
    /// `delete-if-token`.
    DeleteIfToken,
    /// `extend-if-token`.
    ExtendIfToken,
    /// `set-if-absent-fenced`.
    SetIfAbsentFenced,
    /// `raise-fence`.
    RaiseFence,
    /// Connection set-up (`AUTH`, `SELECT`).
    Setup,
}

impl Kind {
    /// True when the command may be sent once more, on a new connection,
    /// after the one it went out on died before answering.
    pub fn may_resend(self) -> bool {
        matches!(
            self,
            Kind::DeleteIfToken | Kind::ExtendIfToken | Kind::RaiseFence
        )
    }

    /// True when the command is dropped, unsent, once its request has timed
    /// out: its caller has counted it as failed and may have cleaned up
    /// after it already.
    pub fn dropped_when_late(self) -> bool {
        matches!(self, Kind::SetIfAbsent | Kind::SetIfAbsentFenced)
    }
}

/// One encoded command.
#[derive(Debug, Clone)]
pub struct Command {
    /// The RESP bytes.
    pub bytes: Rc<[u8]>,
    /// What the reply should be.
    pub expect: Expect,
    /// What it does.
    pub kind: Kind,
}

fn command(args: &[&[u8]], expect: Expect, kind: Kind) -> Command {
    let mut out = Vec::new();
    resp::encode(&mut out, args);
    Command {
        bytes: out.into(),
        expect,
        kind,
    }
}

/// `SET key token NX PX ttl`, for a token no earlier request carried (see
/// `set-if-absent-fresh` in the WIT): `+OK` when the key was free, nil when
/// anything holds it. One command where the script is an EVAL.
pub fn set_if_absent_fresh(key: &str, token: &str, ttl_ms: u64) -> Command {
    let ttl = ttl_ms.to_string();
    let args: [&[u8]; 6] = [
        b"SET",
        key.as_bytes(),
        token.as_bytes(),
        b"NX",
        b"PX",
        ttl.as_bytes(),
    ];
    command(&args, Expect::OkOrNil, Kind::SetIfAbsent)
}

/// The compare-and-set script, as the Rust host sends it: 1 when the key
/// was free or already ours (set, TTL anew), 0 when anything else holds it.
pub fn set_if_absent(key: &str, token: &str, ttl_ms: u64) -> Command {
    let ttl = ttl_ms.to_string();
    let args: [&[u8]; 6] = [
        b"EVAL",
        SET_IF_ABSENT.as_bytes(),
        b"1",
        key.as_bytes(),
        token.as_bytes(),
        ttl.as_bytes(),
    ];
    command(&args, Expect::OneOrZero, Kind::SetIfAbsent)
}

/// The compare-and-delete script: 1 when deleted, 0 when not ours.
pub fn delete_if_token(key: &str, token: &str) -> Command {
    let args: [&[u8]; 5] = [
        b"EVAL",
        DELETE_IF_TOKEN.as_bytes(),
        b"1",
        key.as_bytes(),
        token.as_bytes(),
    ];
    command(&args, Expect::OneOrZero, Kind::DeleteIfToken)
}

/// The compare-and-extend script: 1 when ours (extended), 0 when not.
pub fn extend_if_token(key: &str, token: &str, ttl_ms: u64) -> Command {
    let ttl = ttl_ms.to_string();
    let args: [&[u8]; 6] = [
        b"EVAL",
        EXTEND_IF_TOKEN.as_bytes(),
        b"1",
        key.as_bytes(),
        token.as_bytes(),
        ttl.as_bytes(),
    ];
    command(&args, Expect::OneOrZero, Kind::ExtendIfToken)
}

/// The fenced compare-and-set script: the new fence counter (> 0) when the
/// key was free or already ours, 0 when anything else holds it.
pub fn set_if_absent_fenced(key: &str, token: &str, ttl_ms: u64) -> Command {
    let ttl = ttl_ms.to_string();
    let counter = fence_key(key);
    let args: [&[u8]; 7] = [
        b"EVAL",
        SET_IF_ABSENT_FENCED.as_bytes(),
        b"2",
        key.as_bytes(),
        counter.as_bytes(),
        token.as_bytes(),
        ttl.as_bytes(),
    ];
    command(&args, Expect::Fence, Kind::SetIfAbsentFenced)
}

/// The raise-fence script: the counter after it, at least `fence`.
pub fn raise_fence(key: &str, fence: u64) -> Command {
    let fence = fence.to_string();
    let counter = fence_key(key);
    let args: [&[u8]; 5] = [
        b"EVAL",
        RAISE_FENCE.as_bytes(),
        b"1",
        counter.as_bytes(),
        fence.as_bytes(),
    ];
    command(&args, Expect::Fence, Kind::RaiseFence)
}

/// `AUTH [user] password`.
pub fn auth(user: Option<&str>, password: &str) -> Command {
    let mut args: Vec<&[u8]> = vec![b"AUTH"];
    if let Some(user) = user {
        args.push(user.as_bytes());
    }
    args.push(password.as_bytes());
    command(&args, Expect::Ok, Kind::Setup)
}

/// `SELECT db`.
pub fn select(db: u32) -> Command {
    let db = db.to_string();
    command(&[b"SELECT", db.as_bytes()], Expect::Ok, Kind::Setup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_is_never_sent_twice_and_never_late() {
        for set in [
            set_if_absent("k", "t", 1000),
            set_if_absent_fenced("k", "t", 1000),
        ] {
            assert!(!set.kind.may_resend(), "{:?}", set.kind);
            assert!(set.kind.dropped_when_late(), "{:?}", set.kind);
        }
        for c in [
            delete_if_token("k", "t"),
            extend_if_token("k", "t", 1000),
            raise_fence("k", 7),
        ] {
            assert!(c.kind.may_resend(), "{:?}", c.kind);
            assert!(!c.kind.dropped_when_late(), "{:?}", c.kind);
        }
        for c in [auth(None, "p"), select(2)] {
            assert!(!c.kind.may_resend() && !c.kind.dropped_when_late());
        }
    }

    #[test]
    fn encodes_the_operations() {
        let set = set_if_absent("k", "t", 30);
        assert!(set.bytes.starts_with(b"*6\r\n$4\r\nEVAL\r\n"));
        assert!(
            set.bytes
                .ends_with(b"$1\r\n1\r\n$1\r\nk\r\n$1\r\nt\r\n$2\r\n30\r\n")
        );
        assert_eq!(set.expect, Expect::OneOrZero);
        let del = delete_if_token("k", "t");
        assert!(del.bytes.starts_with(b"*5\r\n$4\r\nEVAL\r\n"));
        assert!(del.bytes.ends_with(b"$1\r\n1\r\n$1\r\nk\r\n$1\r\nt\r\n"));
        assert_eq!(del.expect, Expect::OneOrZero);
        assert!(extend_if_token("k", "t", 9).bytes.ends_with(b"$1\r\n9\r\n"));
        let fenced = set_if_absent_fenced("k", "t", 30);
        assert!(fenced.bytes.starts_with(b"*7\r\n$4\r\nEVAL\r\n"));
        assert!(
            fenced
                .bytes
                .ends_with(b"$1\r\n2\r\n$1\r\nk\r\n$7\r\nk:fence\r\n$1\r\nt\r\n$2\r\n30\r\n")
        );
        assert_eq!(fenced.expect, Expect::Fence);
        let raise = raise_fence("k", 12);
        assert!(raise.bytes.starts_with(b"*5\r\n$4\r\nEVAL\r\n"));
        assert!(
            raise
                .bytes
                .ends_with(b"$1\r\n1\r\n$7\r\nk:fence\r\n$2\r\n12\r\n")
        );
        assert_eq!(raise.expect, Expect::Fence);
        assert_eq!(
            &*auth(Some("u"), "p").bytes,
            b"*3\r\n$4\r\nAUTH\r\n$1\r\nu\r\n$1\r\np\r\n"
        );
        assert_eq!(&*select(3).bytes, b"*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n");
    }
}
