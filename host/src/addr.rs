//! Node URLs: parsed and checked up front, printable without secrets.
//!
//! A quorum member is one Redis process (`redis://host:port`) or one Redis
//! Cluster (`redis+cluster://host1:port1,host2:port2`: seed addresses of
//! one cluster, any of its nodes; the slot map is read from them).

use std::fmt;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::error::Error;

/// One quorum member's address, parsed from a `redis://` or `rediss://` URL
/// (one Redis process), or a `redis+cluster://` or `rediss+cluster://` URL
/// (one Redis Cluster, by its seed addresses).
///
/// `Display` and `Debug` show `host:port` (with `rediss://`, the username and
/// a non-zero database when present; a cluster as
/// `cluster(host1:port1,host2:port2)`) and never the password.
#[derive(Clone)]
pub struct NodeAddr {
    /// The address, or a cluster's first seed.
    info: ConnectionInfo,
    /// A cluster's seeds, first included; empty for a single process.
    seeds: Vec<ConnectionInfo>,
    shown: String,
}

impl NodeAddr {
    /// Parses `redis://[user[:password]@]host[:port][/db]` or `rediss://...`
    /// (TLS). Other schemes, Unix sockets and malformed URLs are refused with
    /// [`Error::Config`], whose text never contains the password.
    ///
    /// `redis+cluster://[user[:password]@]host1:port1[,host2:port2...]` (or
    /// `rediss+cluster://`) is one Redis Cluster: every seed is a node of that
    /// one cluster, with the one user and password; no database (a cluster
    /// has only database 0).
    pub fn parse(url: &str) -> Result<Self, Error> {
        let scheme = url.split_once("://").map(|(s, _)| s);
        if let Some(s @ ("redis+cluster" | "rediss+cluster")) = scheme {
            return Self::parse_cluster(url, s);
        }
        if !matches!(scheme, Some("redis") | Some("rediss")) {
            return Err(Error::Config(format!(
                "node URL must start with redis://, rediss://, redis+cluster:// or \
                 rediss+cluster://, got {:?}",
                redact_url(url)
            )));
        }
        let info = url.into_connection_info().map_err(|e| {
            Error::Config(format!(
                "bad node URL {:?}: {}",
                redact_url(url),
                e.detail().unwrap_or("cannot parse")
            ))
        })?;
        Self::from_info(info)
    }

    fn parse_cluster(url: &str, scheme: &str) -> Result<Self, Error> {
        let bad = |why: &str| {
            Error::Config(format!(
                "bad cluster node URL {:?}: {why}; the form is \
                 redis+cluster://[user[:password]@]host1:port1[,host2:port2...]",
                redact_url(url)
            ))
        };
        let rest = &url[scheme.len() + 3..];
        let (userinfo, hosts) = match rest.rfind('@') {
            Some(at) => (&rest[..=at], &rest[at + 1..]),
            None => ("", rest),
        };
        if hosts.contains(['/', '?', '#']) {
            return Err(bad(
                "no database, path or options (a cluster has database 0 only)",
            ));
        }
        let single = scheme.trim_end_matches("+cluster");
        let mut seeds = Vec::new();
        let mut shown = Vec::new();
        for host in hosts.split(',') {
            if host.is_empty() {
                return Err(bad("an empty seed address"));
            }
            let seed = Self::parse(&format!("{single}://{userinfo}{host}"))
                .map_err(|e| bad(&format!("seed {host:?}: {e}")))?;
            if seeds
                .iter()
                .any(|s: &ConnectionInfo| identity_of(s) == seed.identity())
            {
                return Err(bad(&format!("seed {seed} is listed twice")));
            }
            shown.push(seed.shown.clone());
            seeds.push(seed.info);
        }
        Ok(Self {
            info: seeds[0].clone(),
            seeds,
            shown: format!("cluster({})", shown.join(",")),
        })
    }

    /// Wraps a connection info, refusing Unix sockets (Redlock's nodes are
    /// independent hosts).
    pub fn from_info(info: ConnectionInfo) -> Result<Self, Error> {
        let (tls, host, port) = match info.addr() {
            ConnectionAddr::Tcp(host, port) => (false, host.clone(), *port),
            ConnectionAddr::TcpTls { host, port, .. } => (true, host.clone(), *port),
            other => {
                return Err(Error::Config(format!(
                    "unsupported node address {other}: use redis:// or rediss://"
                )));
            }
        };
        let redis = info.redis_settings();
        let mut shown = String::new();
        if tls {
            shown.push_str("rediss://");
        }
        if let Some(user) = redis.username() {
            shown.push_str(user);
            shown.push('@');
        }
        if host.contains(':') {
            shown.push_str(&format!("[{host}]:{port}"));
        } else {
            shown.push_str(&format!("{host}:{port}"));
        }
        if redis.db() != 0 {
            shown.push_str(&format!("/{}", redis.db()));
        }
        Ok(Self {
            info,
            seeds: Vec::new(),
            shown,
        })
    }

    /// What identifies a server for duplicate detection: host and port
    /// (two databases of one server are one server).
    pub(crate) fn identity(&self) -> (String, u16) {
        identity_of(&self.info)
    }

    /// Every server this address names: one, or a cluster's seeds. Two
    /// members that share one are not independent.
    pub(crate) fn identities(&self) -> Vec<(String, u16)> {
        if self.seeds.is_empty() {
            vec![self.identity()]
        } else {
            self.seeds.iter().map(identity_of).collect()
        }
    }

    /// A cluster's seed addresses, password included: for connecting only.
    /// Empty for a single process.
    pub(crate) fn seeds(&self) -> &[ConnectionInfo] {
        &self.seeds
    }

    /// One node of this cluster at `host:port` (as its `CLUSTER NODES`
    /// announces it), with the seeds' user, password and TLS settings: a
    /// single-process address, for checking that node alone.
    pub(crate) fn cluster_node(&self, host: &str, port: u16) -> Result<NodeAddr, Error> {
        let addr = match self.info.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        Self::from_info(self.info.clone().set_addr(addr))
    }

    /// True for a Redis Cluster member (`redis+cluster://`).
    pub fn is_cluster(&self) -> bool {
        !self.seeds.is_empty()
    }

    /// The connection info, password included: for connecting only.
    pub(crate) fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// True for `rediss://`.
    pub fn is_tls(&self) -> bool {
        matches!(self.info.addr(), ConnectionAddr::TcpTls { .. })
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeAddr({})", self.shown)
    }
}

/// Splits a comma-separated list of node URLs (`REDLOCK_NODES`): one URL per
/// comma, except that a piece without a scheme right after a
/// `redis+cluster://` URL (or one of its seeds) is a further seed of that
/// cluster: `redis://a,redis+cluster://b:1,c:2,redis://d` is three members.
/// Blank pieces are skipped.
pub fn split_node_list(list: &str) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    let mut in_cluster = false;
    for piece in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match urls.last_mut() {
            Some(last) if in_cluster && !piece.contains("://") => {
                last.push(',');
                last.push_str(piece);
            }
            _ => {
                in_cluster =
                    piece.starts_with("redis+cluster://") || piece.starts_with("rediss+cluster://");
                urls.push(piece.to_owned());
            }
        }
    }
    urls
}

fn identity_of(info: &ConnectionInfo) -> (String, u16) {
    match info.addr() {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => (h.to_ascii_lowercase(), *p),
        _ => (String::new(), 0),
    }
}

/// A URL with any `user:password@` part replaced, for error messages.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        (_, Some(at)) => format!("***@{}", &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_no_password() {
        let a = NodeAddr::parse("redis://alice:s3cret@127.0.0.1:7000/2").unwrap();
        assert_eq!(a.to_string(), "alice@127.0.0.1:7000/2");
        assert!(!format!("{a:?}").contains("s3cret"));
        let a = NodeAddr::parse("rediss://:s3cret@localhost").unwrap();
        assert_eq!(a.to_string(), "rediss://localhost:6379");
        assert!(a.is_tls());
    }

    #[test]
    fn refuses_other_schemes_without_leaking() {
        for bad in [
            "http://u:s3cret@h",
            "u:s3cret@h:6379",
            "redis+unix:///tmp/x",
            "unix:///tmp/x",
        ] {
            let e = NodeAddr::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("s3cret"), "{e}");
        }
        let e = NodeAddr::parse("redis://u:s3cret@host:notaport")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn cluster_urls_parse_and_hide_the_password() {
        let a = NodeAddr::parse("redis+cluster://u:s3cret@127.0.0.1:7000,localhost:7001").unwrap();
        assert!(a.is_cluster());
        assert_eq!(a.to_string(), "cluster(u@127.0.0.1:7000,u@localhost:7001)");
        assert_eq!(a.seeds().len(), 2);
        assert_eq!(a.seeds()[1].redis_settings().password(), Some("s3cret"));
        assert!(!format!("{a:?}").contains("s3cret"));
        let t = NodeAddr::parse("rediss+cluster://h:1").unwrap();
        assert!(t.is_tls() && t.is_cluster());
        assert!(!NodeAddr::parse("redis://h:1").unwrap().is_cluster());
        for bad in [
            "redis+cluster://",
            "redis+cluster://u:s3cret@h:1,,h:2",
            "redis+cluster://u:s3cret@h:1,h:1",
            "redis+cluster://u:s3cret@h:1/2",
            "redis+cluster://u:s3cret@h:x",
        ] {
            let e = NodeAddr::parse(bad).unwrap_err().to_string();
            assert!(e.contains("cluster") && !e.contains("s3cret"), "{bad}: {e}");
        }
    }

    #[test]
    fn node_lists_keep_a_clusters_seeds_together() {
        assert_eq!(
            split_node_list(" redis://a, redis+cluster://b:1,c:2 ,redis://d,,"),
            ["redis://a", "redis+cluster://b:1,c:2", "redis://d"]
        );
        // Without a cluster before it, a piece with no scheme stays a node
        // of its own (and is refused when parsed).
        assert_eq!(split_node_list("redis://a,b:2"), ["redis://a", "b:2"]);
    }

    #[test]
    fn identity_ignores_credentials() {
        let a = NodeAddr::parse("redis://a:x@HOST:1").unwrap();
        let b = NodeAddr::parse("redis://b:y@host:1").unwrap();
        assert_eq!(a.identity(), b.identity());
    }
}
