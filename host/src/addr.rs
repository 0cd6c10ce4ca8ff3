//! Node URLs: parsed and checked up front, printable without secrets.

use std::fmt;

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::error::Error;

/// One Redis node's address, parsed from a `redis://` or `rediss://` URL.
///
/// `Display` and `Debug` show `host:port` (with `rediss://`, the username and
/// a non-zero database when present) and never the password.
#[derive(Clone)]
pub struct NodeAddr {
    info: ConnectionInfo,
    shown: String,
}

impl NodeAddr {
    /// Parses `redis://[user[:password]@]host[:port][/db]` or `rediss://...`
    /// (TLS). Other schemes, Unix sockets and malformed URLs are refused with
    /// [`Error::Config`], whose text never contains the password.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let scheme = url.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("redis") | Some("rediss")) {
            return Err(Error::Config(format!(
                "node URL must start with redis:// or rediss://, got {:?}",
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
        Ok(Self { info, shown })
    }

    /// What identifies a server for duplicate detection: host and port
    /// (two databases of one server are one server).
    pub(crate) fn identity(&self) -> (String, u16) {
        let (host, port) = match self.info.addr() {
            ConnectionAddr::Tcp(h, p)
            | ConnectionAddr::TcpTls {
                host: h, port: p, ..
            } => (h.to_ascii_lowercase(), *p),
            _ => (String::new(), 0),
        };
        (host, port)
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
    fn identity_ignores_credentials() {
        let a = NodeAddr::parse("redis://a:x@HOST:1").unwrap();
        let b = NodeAddr::parse("redis://b:y@host:1").unwrap();
        assert_eq!(a.identity(), b.identity());
    }
}
