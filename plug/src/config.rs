//! The plug's environment (`wasi:cli/environment`).
//!
//! Node addresses: `REDLOCK_NODES`, comma-separated, the same variable and
//! URL form as the `redlock` command-line runner:
//! `redis://[user[:password]@]host[:port][/db]` or plain `host:port`.
//!
//! `rediss://` (TLS) is refused with a clear message: WASI 0.2 has no TLS.
//! Empty entries are skipped (a trailing comma is harmless), as the CLI does.
//! A bad entry does not hide the good ones: it keeps its place (node indices
//! stay stable) and every request to it fails with the parse error, which
//! never repeats the entry's text (it may hold a password: a comma inside a
//! password must be written `%2C`, or the entry is split there). A second
//! entry for the same host, port and database is refused the same way, so
//! no server counts twice towards a quorum.
//!
//! The per-node timeout: `REDLOCK_NODE_TIMEOUT_MS`, whole milliseconds,
//! 1 ..= 60000, default 50 (see [`crate::defaults::NODE_TIMEOUT_MS`]). A value
//! that does not parse fails every request with the reason, rather than
//! running with a timeout nobody chose.

use std::fmt;
use std::net::IpAddr;

use crate::defaults::{MAX_NODE_TIMEOUT_MS, NODE_TIMEOUT_MS};

/// The environment variable that lists the nodes.
pub const NODES_VAR: &str = "REDLOCK_NODES";

/// The environment variable that sets the per-node timeout, in ms.
pub const NODE_TIMEOUT_VAR: &str = "REDLOCK_NODE_TIMEOUT_MS";

/// The per-node timeout in ms from the variable's value (`None` when
/// unset; blank means unset too).
pub fn parse_node_timeout(value: Option<&str>) -> Result<u64, String> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(NODE_TIMEOUT_MS);
    };
    match v.parse::<u64>() {
        Ok(ms @ 1..=MAX_NODE_TIMEOUT_MS) => Ok(ms),
        _ => {
            let shown: String = v.chars().take(24).collect();
            Err(format!(
                "{NODE_TIMEOUT_VAR}={shown:?}: expected whole milliseconds, 1 ..= {MAX_NODE_TIMEOUT_MS}"
            ))
        }
    }
}

/// Most nodes accepted; more is certainly a configuration mistake.
pub const MAX_NODES: usize = 64;

/// Where a node's host is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// A name to resolve with `wasi:sockets/ip-name-lookup`.
    Name(String),
}

/// One node.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: Host,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl fmt::Display for Endpoint {
    /// `host:port`, never the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
            Host::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

/// Parses the whole list. One entry per comma; blanks around entries and
/// empty entries are ignored.
pub fn parse_nodes(list: &str) -> Vec<Result<Endpoint, String>> {
    let entries: Vec<&str> = list.split(',').filter(|e| !e.trim().is_empty()).collect();
    if entries.len() > MAX_NODES {
        let err = format!(
            "{NODES_VAR} lists {} nodes; at most {MAX_NODES}",
            entries.len()
        );
        return vec![Err(err); MAX_NODES];
    }
    // A Redis Cluster member spans several entries (its seeds follow it
    // without a scheme): taking those as nodes of their own would count one
    // cluster's shards as independent members. Refuse the whole list.
    if entries.iter().any(|e| is_cluster(e)) {
        let err = format!(
            "{NODES_VAR} names a Redis Cluster member (redis+cluster://): the portable \
             component supports single-process members only; use the wasmtime host \
             (redlock-wasm, the redlock CLI) for cluster members"
        );
        return vec![Err(err); entries.len()];
    }
    let mut nodes: Vec<Result<Endpoint, String>> = entries.into_iter().map(parse_node).collect();
    for i in 0..nodes.len() {
        let dup = match &nodes[i] {
            Ok(e) => nodes[..i].iter().position(|earlier| {
                earlier
                    .as_ref()
                    .is_ok_and(|o| (&o.host, o.port, o.db) == (&e.host, e.port, e.db))
            }),
            Err(_) => None,
        };
        if let Some(j) = dup {
            nodes[i] = Err(format!("same server and database as node {j}"));
        }
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        if let Err(e) = n {
            *e = format!("{NODES_VAR} entry {i}: {e}");
        }
    }
    nodes
}

/// Whether an entry starts a Redis Cluster member (`redis+cluster://` or
/// `rediss+cluster://`, any case).
fn is_cluster(entry: &str) -> bool {
    let scheme = entry.trim().split_once("://").map_or("", |(s, _)| s);
    scheme.eq_ignore_ascii_case("redis+cluster") || scheme.eq_ignore_ascii_case("rediss+cluster")
}

/// Parses one entry. Errors never repeat the entry's text.
pub fn parse_node(entry: &str) -> Result<Endpoint, String> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err("empty node address".into());
    }
    let rest = if let Some(rest) = entry.strip_prefix("redis://") {
        rest
    } else if entry.starts_with("rediss://") {
        return Err(
            "rediss:// (TLS) is not available over WASI 0.2 sockets; use the wasmtime host for TLS"
                .into(),
        );
    } else if let Some((scheme, _)) = entry.split_once("://") {
        let scheme: String = scheme.chars().take(16).collect();
        return Err(format!(
            "unsupported scheme {scheme:?}: use redis://host:port"
        ));
    } else {
        entry
    };
    let bad = || {
        "malformed node address: expected redis://[user[:password]@]host[:port][/db] \
         (write a comma in a password as %2C)"
            .to_owned()
    };
    let (userinfo, hostpart) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (authority, db) = match hostpart.split_once('/') {
        Some((a, "")) => (a, 0),
        Some((a, d)) => (a, d.parse::<u32>().map_err(|_| bad())?),
        None => (hostpart, 0),
    };
    let (host, port) = split_host_port(authority).ok_or_else(bad)?;
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => {
            let (user, pass) = match u.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => (u, None),
            };
            let user = percent_decode(user).ok_or_else(bad)?;
            let pass = match pass {
                Some(p) => Some(percent_decode(p).ok_or_else(bad)?),
                None => None,
            };
            // `redis://:secret@host`: a password without a user name;
            // `redis://user@host`: a user name only, so no AUTH (as redis-rs).
            let user = (!user.is_empty()).then_some(user);
            (user, pass)
        }
    };
    Ok(Endpoint {
        host,
        port,
        username,
        password,
        db,
    })
}

fn split_host_port(s: &str) -> Option<(Host, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (Host::Ip(IpAddr::V6(ip.parse().ok()?)), port)
    } else {
        let (h, p) = match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if h.is_empty() || h.contains(':') {
            return None;
        }
        let host = match h.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) if valid_name(h) => Host::Name(h.to_ascii_lowercase()),
            Err(_) => return None,
        };
        (host, p)
    };
    let port = match port {
        None => 6379,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return None,
            Ok(p) => p,
        },
    };
    Some((host, port))
}

fn valid_name(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hi = (bytes.next()? as char).to_digit(16)?;
            let lo = (bytes.next()? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ok(s: &str) -> Endpoint {
        parse_node(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn accepts_the_cli_forms() {
        let e = ok("redis://127.0.0.1:7000");
        assert_eq!(e.host, Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(
            (e.port, e.db, &e.username, &e.password),
            (7000, 0, &None, &None)
        );
        assert_eq!(ok("127.0.0.1").port, 6379);
        assert_eq!(ok("127.0.0.1:7001").port, 7001);
        let e = ok("redis://[::1]:7002/3");
        assert_eq!(e.host, Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!((e.port, e.db), (7002, 3));
        assert_eq!(
            ok("redis://LocalHost:1").host,
            Host::Name("localhost".into())
        );
        let e = ok("redis://app:p%40ss@127.0.0.1:7003/");
        assert_eq!(e.username.as_deref(), Some("app"));
        assert_eq!(e.password.as_deref(), Some("p@ss"));
        let e = ok("redis://:secret@127.0.0.1");
        assert_eq!((e.username, e.password.as_deref()), (None, Some("secret")));
        let e = ok("redis://app@127.0.0.1");
        assert_eq!((e.username.as_deref(), e.password), (Some("app"), None));
    }

    #[test]
    fn refuses_bad_entries_without_leaking_the_password() {
        for bad in [
            "",
            "redis://",
            "redis://127.0.0.1:0",
            "redis://127.0.0.1:70000",
            "redis://127.0.0.1:x",
            "redis://127.0.0.1/db",
            "redis://[::1",
            "redis://::1:5",
            "redis://bad_host:1",
            "unix:///tmp/redis.sock",
            "rediss://u:hunter2@127.0.0.1",
            "redis://u:hunter2@127.0.0.1:99999",
            "redis://u:hunter2",
            "http://u:hunter2@x",
        ] {
            let err = parse_node(bad).expect_err(bad);
            assert!(!err.contains("hunter2"), "{bad}: {err}");
        }
        // A comma inside a password splits the entry: neither half may
        // show any of it, and the second half is not a server.
        for n in parse_nodes("redis://u:hun,ter2@127.0.0.1") {
            if let Err(e) = n {
                assert!(!e.contains("hun") && !e.contains("ter2"), "{e}");
            }
        }
        let e = ok("redis://u:hun%2Cter2@127.0.0.1");
        assert_eq!(e.password.as_deref(), Some("hun,ter2"));
        assert!(parse_node("rediss://x").unwrap_err().contains("TLS"));
    }

    #[test]
    fn keeps_positions_and_limits_the_count() {
        let nodes = parse_nodes(" 127.0.0.1:1, nope:x ,127.0.0.1:3,");
        assert_eq!(nodes.len(), 3, "a trailing comma adds no node");
        assert!(nodes[0].is_ok() && nodes[1].is_err() && nodes[2].is_ok());
        assert!(nodes[1].as_ref().unwrap_err().contains("entry 1"));
        assert!(parse_nodes("  ").is_empty());
        assert!(parse_nodes(",,").is_empty());
        let many = vec!["127.0.0.1:1"; MAX_NODES + 1].join(",");
        let nodes = parse_nodes(&many);
        assert_eq!(nodes.len(), MAX_NODES);
        assert!(
            nodes
                .iter()
                .all(|n| n.as_ref().is_err_and(|e| e.contains("at most")))
        );
    }

    #[test]
    fn refuses_a_cluster_member_and_its_seeds() {
        let nodes = parse_nodes("redis://a:1, redis+cluster://b:2,c:3,d:4");
        assert_eq!(nodes.len(), 4);
        for n in &nodes {
            let e = n.as_ref().unwrap_err();
            assert!(
                e.contains("Redis Cluster") && e.contains("wasmtime host"),
                "{e}"
            );
        }
        assert!(parse_nodes("REDISS+CLUSTER://x:1")[0].is_err());
    }

    #[test]
    fn refuses_a_server_listed_twice() {
        let nodes = parse_nodes("127.0.0.1:1,redis://127.0.0.1:1/0,127.0.0.1:1/2,[::1]:1");
        assert!(nodes[0].is_ok() && nodes[2].is_ok() && nodes[3].is_ok());
        assert!(
            nodes[1].as_ref().unwrap_err().contains("as node 0"),
            "{nodes:?}"
        );
    }

    #[test]
    fn node_timeout_defaults_to_50_ms_and_refuses_nonsense() {
        assert_eq!(parse_node_timeout(None), Ok(50));
        assert_eq!(parse_node_timeout(Some(" ")), Ok(50));
        assert_eq!(parse_node_timeout(Some("250")), Ok(250));
        assert_eq!(parse_node_timeout(Some(" 1 ")), Ok(1));
        assert_eq!(parse_node_timeout(Some("60000")), Ok(60_000));
        for bad in ["0", "-5", "1.5", "50ms", "60001", "99999999999999999999999"] {
            let e = parse_node_timeout(Some(bad)).expect_err(bad);
            assert!(e.starts_with("REDLOCK_NODE_TIMEOUT_MS="), "{e}");
        }
    }

    #[test]
    fn display_hides_credentials() {
        let e = ok("redis://u:hunter2@[::1]:7");
        assert_eq!(e.to_string(), "[::1]:7");
        assert!(!format!("{e:?}").contains("hunter2"));
    }
}
