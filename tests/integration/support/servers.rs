//! Hostile TCP servers that are not Redis: one that answers garbage, one
//! that never answers, one that resets the connection mid-reply.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the fake server behaves.
#[derive(Debug, Clone, Copy)]
pub enum Hostile {
    /// Answers every read with bytes that are not RESP.
    Garbage,
    /// Accepts and reads forever, never writes.
    Silent,
    /// Reads a command, writes half a reply, then resets.
    ResetMidReply,
    /// Answers with a bulk string header announcing about 1 GB, then bytes.
    Oversized,
}

/// A running fake server; stops when dropped.
pub struct FakeServer {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl FakeServer {
    pub async fn start(kind: Hostile) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        match kind {
                            Hostile::Garbage => {
                                if s.write_all(b"\x00\xffNOT RESP AT ALL\r\n").await.is_err() {
                                    return;
                                }
                            }
                            Hostile::Silent => {}
                            Hostile::Oversized => {
                                let mut reply = b"$999999999\r\n".to_vec();
                                reply.extend(std::iter::repeat_n(b'x', 1 << 16));
                                if s.write_all(&reply).await.is_err() {
                                    return;
                                }
                            }
                            Hostile::ResetMidReply => {
                                let _ = s.write_all(b"$10\r\nabc").await;
                                #[allow(deprecated)]
                                let _ = s.set_linger(Some(Duration::ZERO));
                                return;
                            }
                        }
                    }
                });
            }
        });
        FakeServer { port, task }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
