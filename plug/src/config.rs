//! Node addresses: `REDLOCK_NODES`, comma-separated, the same variable and
//! URL form as the `redlock` command-line runner:
//! `redis://[user[:password]@]host[:port][/db]` or plain `host:port`.
//!
//! `rediss://` (TLS) is refused with a clear message: WASI 0.2 has no TLS.
//! A bad entry does not hide the good ones: it keeps its place (node indices
//! stay stable) and every request to it fails with the parse error.

use std::fmt;
use std::net::IpAddr;

/// The environment variable that lists the nodes.
pub const NODES_VAR: &str = "REDLOCK_NODES";

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

/// Parses the whole list. One entry per comma; blanks around entries are
/// ignored, empty entries are errors (they usually mean a typo).
pub fn parse_nodes(list: &str) -> Vec<Result<Endpoint, String>> {
    if list.trim().is_empty() {
        return Vec::new();
    }
    let mut nodes: Vec<Result<Endpoint, String>> = list.split(',').map(parse_node).collect();
    if nodes.len() > MAX_NODES {
        let err = format!(
            "{NODES_VAR} lists {} nodes; at most {MAX_NODES}",
            nodes.len()
        );
        nodes.truncate(MAX_NODES);
        nodes.iter_mut().for_each(|n| *n = Err(err.clone()));
    }
    nodes
}

/// Parses one entry. Errors never contain the password.
pub fn parse_node(entry: &str) -> Result<Endpoint, String> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(format!("empty entry in {NODES_VAR}"));
    }
    let rest = if let Some(rest) = entry.strip_prefix("redis://") {
        rest
    } else if entry.starts_with("rediss://") {
        return Err(
            "rediss:// (TLS) is not available over WASI 0.2 sockets; use the wasmtime host for TLS"
                .into(),
        );
    } else if entry.contains("://") {
        return Err(format!(
            "unsupported scheme in {:?}: use redis://host:port",
            redact(entry)
        ));
    } else {
        entry
    };
    let bad = || format!("malformed node address {:?}", redact(entry));
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
            // `redis://:secret@host` is a password without a user name.
            let user = (!user.is_empty()).then_some(user);
            match (user, pass) {
                (Some(u), None) => (None, Some(u)),
                (u, p) => (u, p),
            }
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

/// The entry with any `user:password@` part replaced.
fn redact(entry: &str) -> String {
    match (entry.find("://"), entry.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***@{}", &entry[..s + 3], &entry[at + 1..]),
        (None, Some(at)) => format!("***@{}", &entry[at + 1..]),
        _ => entry.to_owned(),
    }
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
        ] {
            let err = parse_node(bad).expect_err(bad);
            assert!(!err.contains("hunter2"), "{bad}: {err}");
        }
        assert!(parse_node("rediss://x").unwrap_err().contains("TLS"));
    }

    #[test]
    fn keeps_positions_and_limits_the_count() {
        let nodes = parse_nodes(" 127.0.0.1:1, nope:x ,127.0.0.1:3");
        assert_eq!(nodes.len(), 3);
        assert!(nodes[0].is_ok() && nodes[1].is_err() && nodes[2].is_ok());
        assert!(parse_nodes("  ").is_empty());
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
    fn display_hides_credentials() {
        let e = ok("redis://u:hunter2@[::1]:7");
        assert_eq!(e.to_string(), "[::1]:7");
        assert!(!format!("{e:?}").contains("hunter2"));
    }
}
