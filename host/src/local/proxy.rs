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
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut m_up = mode.clone();
    let mut mode = mode;
    let mut m_reset = mode.clone();
    let up = async move {
        // Client to server: commands.
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            loop {
                let m = *m_up.borrow_and_update();
                match m {
                    Mode::Hold => {
                        if m_up.changed().await.is_err() {
                            return;
                        }
                    }
                    Mode::Blackhole => break,
                    Mode::Reset => return,
                    _ => {
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    };
    let down = async move {
        // Server to client: replies.
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            loop {
                let m = *mode.borrow_and_update();
                match m {
                    Mode::Hold => {
                        if mode.changed().await.is_err() {
                            return;
                        }
                    }
                    Mode::Blackhole | Mode::DropReply => break,
                    Mode::Reset => return,
                    Mode::Delay(d) => {
                        tokio::time::sleep(d).await;
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        break;
                    }
                    Mode::Jitter(lo, hi) => {
                        let span = hi.saturating_sub(lo).as_micros() as u64;
                        let extra = if span == 0 { 0 } else { random() % span };
                        tokio::time::sleep(lo + Duration::from_micros(extra)).await;
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        break;
                    }
                    Mode::Pass => {
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        break;
                    }
                }
            }
        }
    };
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
