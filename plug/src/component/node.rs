//! One node: where it is (a name's cached address), whether it is down, and
//! its connection.

use std::rc::Rc;

use super::conn::{Conn, Slot};
use super::exports::redlock::core::redis_node::NodeError;
use super::wasi::sockets::ip_name_lookup::{self, ResolveAddressStream};
use super::wasi::sockets::network::{
    ErrorCode, IpAddress, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress, Network,
};
use crate::config::{Endpoint, Host};
use crate::names::{NameCache, Target};
use crate::timing::Timing;
use crate::wire::{self, Command};

/// A node given by name, and its lookup.
struct Name {
    cache: NameCache<IpSocketAddress>,
    /// The running lookup. Dropped when it ends.
    lookup: Option<ResolveAddressStream>,
}

/// One configured node.
pub struct Node {
    endpoint: Result<Endpoint, String>,
    /// Set for a node given by name.
    name: Option<Name>,
    conn: Option<Conn>,
    /// The last failed connect and when it was seen.
    down: Option<(NodeError, u64)>,
}

impl Node {
    /// A node from its `REDLOCK_NODES` entry (or why the entry is bad).
    pub fn new(endpoint: Result<Endpoint, String>) -> Node {
        let name = match &endpoint {
            Ok(Endpoint {
                host: Host::Name(_),
                ..
            }) => Some(Name {
                cache: NameCache::default(),
                lookup: None,
            }),
            _ => None,
        };
        Node {
            endpoint,
            name,
            conn: None,
            down: None,
        }
    }

    /// Makes every step this node's lookup and connection allow now. Without
    /// `read`, only writes, and only when there is something to write (no
    /// WASI call otherwise): commands queued behind a connect go out while
    /// the instance runs, even when nobody waits for their replies.
    pub fn pump(&mut self, network: &Network, now: u64, read: bool) {
        let Ok(endpoint) = &self.endpoint else {
            return;
        };
        if !read && !self.conn.as_ref().is_some_and(Conn::has_unsent) {
            return;
        }
        if let Some(name) = &mut self.name {
            name.advance(network, endpoint, now);
        }
        if let Some(conn) = &mut self.conn {
            if conn.resolving() {
                match self.name.as_ref().map(|n| n.cache.target()) {
                    Some(Target::Addr(addr)) => conn.connect(network, addr),
                    Some(Target::Fail(why)) => conn.break_with(resolve_error(endpoint, &why)),
                    Some(Target::Wait) | None => {}
                }
            }
            conn.pump(read, now);
        }
        self.note_connection(now);
    }

    /// Learns from the connection: a failed connect marks the node down (and
    /// asks for a new lookup of its name); a connect that worked, up.
    fn note_connection(&mut self, now: u64) {
        let Some(conn) = &self.conn else {
            return;
        };
        if let Some(e) = conn.connect_error() {
            self.down = Some((e.clone(), now));
            if let Some(name) = &mut self.name {
                name.cache.connect_failed();
            }
            self.conn = None;
        } else if conn.open() {
            self.down = None;
        }
    }

    /// Queues `command` on this node, due by `deadline`: its reply slot,
    /// and whether it went on a connection that was open already (one that
    /// may have died unnoticed). Fails at once when the node is down (a
    /// connect failed less than [`crate::defaults::DOWN_MEMORY_NS`] ago),
    /// its name does not resolve, or its entry is bad.
    pub fn send(
        &mut self,
        network: &Network,
        command: Command,
        now: u64,
        deadline: u64,
        timing: &Timing,
    ) -> Result<(Rc<Slot>, bool), NodeError> {
        let endpoint = self.endpoint.clone().map_err(NodeError::Other)?;
        // The server may have closed the connection since the last call
        // (its `timeout`, a restart, a proxy), and replies nobody waited for
        // may be pending (so the oldest request may look overdue when it is
        // not): one step finds out and takes them.
        self.pump(network, now, true);
        if let Some(conn) = &mut self.conn {
            if conn.stale(now, timing) {
                conn.break_with(NodeError::Timeout);
            }
            if conn.broken().is_some() {
                self.conn = None;
            }
        }
        let down = self
            .down
            .as_ref()
            .filter(|(_, at)| timing.down_fresh(now.saturating_sub(*at)))
            .map(|(e, _)| e.clone());
        if self.conn.is_none() {
            let conn = self.open(network, &endpoint, now)?;
            self.conn = Some(conn);
        }
        let Some(conn) = &mut self.conn else {
            unreachable!("set above")
        };
        if let Some(e) = down
            && !conn.open()
        {
            // The connection is a new try at a node that was down a moment
            // ago: it connects in the background, this request fails now.
            return Err(e);
        }
        let reused = conn.open();
        Ok((conn.push(command, now, deadline), reused))
    }

    /// A new connection: waiting for the name's address, or connecting.
    fn open(&mut self, network: &Network, e: &Endpoint, now: u64) -> Result<Conn, NodeError> {
        let mut conn = Conn::new(e.to_string(), now);
        // Set-up commands go first on the wire; their replies are checked
        // like any other and a failure breaks the connection.
        if let Some(password) = &e.password {
            conn.push(wire::auth(e.username.as_deref(), password), now, u64::MAX);
        }
        if e.db != 0 {
            conn.push(wire::select(e.db), now, u64::MAX);
        }
        let target = match (&e.host, &mut self.name) {
            (Host::Ip(ip), _) => Target::Addr(socket_addr(*ip, e.port)),
            (Host::Name(_), Some(name)) => {
                name.advance(network, e, now);
                name.cache.target()
            }
            (Host::Name(_), None) => unreachable!("a name node has a cache"),
        };
        match target {
            Target::Addr(addr) => conn.connect(network, addr),
            Target::Wait => {}
            Target::Fail(why) => return Err(resolve_error(e, &why)),
        }
        if let Some(err) = conn.connect_error() {
            let err = err.clone();
            self.down = Some((err.clone(), now));
            return Err(err);
        }
        Ok(conn)
    }
}

impl Name {
    /// Takes the running lookup's answer, if any; starts one when due.
    fn advance(&mut self, network: &Network, e: &Endpoint, now: u64) {
        if let Some(stream) = &self.lookup {
            let outcome = match stream.resolve_next_address() {
                Ok(Some(ip)) => Ok(socket_addr(ip_addr(ip), e.port)),
                Ok(None) => Err("no address".to_owned()),
                Err(ErrorCode::WouldBlock) if self.cache.expired(now) => {
                    Err("timed out".to_owned())
                }
                Err(ErrorCode::WouldBlock) => return,
                Err(err) => Err(err.name().to_owned()),
            };
            self.lookup = None;
            match outcome {
                Ok(addr) => self.cache.answered(addr, now),
                Err(why) => self.cache.failed(why, now),
            }
        }
        if self.cache.lookup_due(now) {
            let Host::Name(name) = &e.host else {
                return;
            };
            match ip_name_lookup::resolve_addresses(network, name) {
                Ok(stream) => {
                    self.cache.started(now);
                    self.lookup = Some(stream);
                }
                Err(err) => self.cache.failed(err.name().to_owned(), now),
            }
        }
    }
}

fn resolve_error(e: &Endpoint, why: &str) -> NodeError {
    let name = match &e.host {
        Host::Name(n) => n.as_str(),
        Host::Ip(_) => "",
    };
    NodeError::Connection(format!("resolve {name}: {why}"))
}

fn ip_addr(ip: IpAddress) -> std::net::IpAddr {
    match ip {
        IpAddress::Ipv4((a, b, c, d)) => std::net::Ipv4Addr::new(a, b, c, d).into(),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            std::net::Ipv6Addr::new(a, b, c, d, e, f, g, h).into()
        }
    }
}

fn socket_addr(ip: std::net::IpAddr, port: u16) -> IpSocketAddress {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            IpSocketAddress::Ipv4(Ipv4SocketAddress {
                port,
                address: (a, b, c, d),
            })
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            IpSocketAddress::Ipv6(Ipv6SocketAddress {
                port,
                flow_info: 0,
                address: (s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
                scope_id: 0,
            })
        }
    }
}
