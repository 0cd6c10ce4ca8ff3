//! Local `redis-server` processes on free loopback ports, each in its own
//! temp dir, stopped on drop: the nodes of `redlock demo` and of the tests.
//!
//! `REDIS_SERVER_BIN` picks the binary (default: `redis-server` on `PATH`).
//! [`proxy`] puts a fault-injecting TCP proxy in front of a node.

pub mod proxy;

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to install redis-server, for error messages.
pub const INSTALL_HINT: &str = "install it with `sudo apt-get install -y redis-server` \
     (Debian/Ubuntu) or run ./scripts/setup; or point REDIS_SERVER_BIN at a redis-server binary";

/// Why a local node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// The binary is not installed.
    #[error("`{0}` was not found: {INSTALL_HINT}")]
    NotInstalled(String),
    /// It started but never answered, or exited.
    #[error("redis-server did not start: {0}")]
    Start(String),
    /// Anything else from the OS.
    #[error("redis-server: {0}")]
    Io(#[from] io::Error),
}

/// The redis-server binary to run.
pub fn binary() -> String {
    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into())
}

/// True when the binary can be run.
pub fn available() -> bool {
    Command::new(binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One local `redis-server`, killed when dropped.
pub struct LocalNode {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl LocalNode {
    /// Starts a server without persistence on a free port.
    pub fn start() -> Result<Self, LocalError> {
        Self::start_with(&[])
    }

    /// Starts a server with extra config arguments (`--name value` pairs).
    /// Retries on another port if the chosen one was taken meanwhile.
    pub fn start_with(args: &[&str]) -> Result<Self, LocalError> {
        let mut last = String::new();
        for _ in 0..5 {
            let mut node = LocalNode {
                child: None,
                port: free_port()?,
                dir: tempfile::Builder::new().prefix("redlock-node-").tempdir()?,
                args: args.iter().map(|s| s.to_string()).collect(),
            };
            match node.spawn() {
                Ok(()) => return Ok(node),
                Err(LocalError::Start(why)) => last = why,
                Err(e) => return Err(e),
            }
        }
        Err(LocalError::Start(last))
    }

    fn spawn(&mut self) -> Result<(), LocalError> {
        let mut cmd = Command::new(binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => LocalError::NotInstalled(binary()),
            _ => LocalError::Io(e),
        })?);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                return Err(LocalError::Start(format!(
                    "port {}: exited with {status}: {}",
                    self.port,
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )));
            }
            if self.answers() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        Err(LocalError::Start(format!(
            "port {}: no answer to PING within 10 s",
            self.port
        )))
    }

    fn answers(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True until killed.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts on the same port, data dir and arguments.
    pub fn restart(&mut self) -> Result<(), LocalError> {
        self.kill();
        self.spawn()
    }

    /// SIGSTOP: the kernel still accepts connections; nothing answers.
    pub fn pause(&self) -> io::Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// SIGCONT.
    pub fn resume(&self) -> io::Result<()> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, sig: libc::c_int) -> io::Result<()> {
        let pid = self.pid().ok_or_else(|| io::Error::other("not running"))?;
        crate::signal::send(pid, sig)
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL; resume anyway so nothing
        // lingers stopped if the kill fails.
        let _ = self.resume();
        self.kill();
    }
}

/// N local nodes.
pub struct LocalCluster {
    /// The nodes, in index order.
    pub nodes: Vec<LocalNode>,
}

impl LocalCluster {
    /// Starts `n` nodes.
    pub fn start(n: usize) -> Result<Self, LocalError> {
        Ok(LocalCluster {
            nodes: (0..n)
                .map(|_| LocalNode::start())
                .collect::<Result<_, _>>()?,
        })
    }

    /// Their URLs, in index order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(LocalNode::url).collect()
    }
}

mod redis_cluster;
pub use redis_cluster::{LocalRedisCluster, cli_available};
