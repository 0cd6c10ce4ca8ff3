//! A fault-injecting TCP proxy to put in front of a node, switchable at run
//! time: for the fault tests and the slow-node benchmark.
//!
//! Modes: pass; delay replies (fixed or jittered); hold (accept, never
//! answer, resume later); blackhole (swallow everything); reset (RST every
//! connection); drop-reply (forward commands, drop the answers).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Pass,
    /// Delay every reply chunk by this much.
    Delay(Duration),
    /// Delay every reply chunk by a random time in this range.
    Jitter(Duration, Duration),
    /// Accept, forward nothing, answer nothing; traffic resumes on `Pass`.
    Hold,
    /// Accept and swallow everything, forever for the bytes it swallowed.
    Blackhole,
    /// Reset every connection, existing and new.
    Reset,
    /// Forward commands to the node; drop its replies.
    DropReply,
}

/// A running proxy in front of one node; stops when dropped. Needs a tokio
/// runtime.
pub struct Proxy {
    port: u16,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
    target: Arc<Mutex<u16>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`.
    pub async fn start(target: u16) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, rx) = watch::channel(Mode::Pass);
        let target = Arc::new(Mutex::new(target));
        let t = target.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let rx = rx.clone();
                let to = *t.lock().unwrap_or_else(|e| e.into_inner());
                tokio::spawn(connection(client, to, rx));
            }
        });
        Ok(Proxy {
            port,
            mode,
            task,
            target,
        })
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Switches the mode for existing and new connections.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Points new connections at another node port.
    pub fn retarget(&self, port: u16) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = port;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connection(client: TcpStream, target: u16, mode: watch::Receiver<Mode>) {
    let _ = client.set_nodelay(true);
    // Every close of the client side is an RST: a reset looks like one.
    // Linger 0 resets at once; it never blocks the thread.
    #[allow(deprecated)]
    let _ = client.set_linger(Some(Duration::ZERO));
    if *mode.borrow() == Mode::Reset {
        reset(client);
        return;
    }
    let server = match TcpStream::connect(("127.0.0.1", target)).await {
        Ok(s) => s,
        Err(_) => {
            reset(client);
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let mut m_reset = mode.clone();
    let up = pump(cr, sw, mode.clone(), Direction::Commands);
    let down = pump(sr, cw, mode, Direction::Replies);
    // A switch to Reset ends both directions at once; dropping the client
    // halves sends the RST.
    let reset_now = async move {
        while *m_reset.borrow_and_update() != Mode::Reset {
            if m_reset.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = reset_now => {}
    }
}

/// Which way a pump copies: the delay, jitter and drop modes act on replies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Commands,
    Replies,
}

/// Copies chunks from `from` to `to` as the current mode says, until either
/// side closes or the mode is `Reset`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    direction: Direction,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Wait out `Hold`; then forward, delayed or not, or swallow.
        let pause = loop {
            let m = *mode.borrow_and_update();
            let replies = direction == Direction::Replies;
            match m {
                Mode::Hold => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
                Mode::Reset => return,
                Mode::Blackhole => break None,
                Mode::DropReply if replies => break None,
                Mode::Delay(d) if replies => break Some(d),
                Mode::Jitter(lo, hi) if replies => {
                    let span = hi.saturating_sub(lo).as_micros() as u64;
                    let extra = if span == 0 { 0 } else { random() % span };
                    break Some(lo + Duration::from_micros(extra));
                }
                _ => break Some(Duration::ZERO),
            }
        };
        let Some(pause) = pause else { continue };
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Good-enough randomness for jitter, without a dependency.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::Instant::now().elapsed().as_nanos());
    h.finish()
}

/// Closes with RST instead of FIN.
fn reset(s: TcpStream) {
    #[allow(deprecated)]
    let _ = s.set_linger(Some(Duration::ZERO));
    drop(s);
}
