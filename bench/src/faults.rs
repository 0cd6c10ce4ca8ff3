//! One node of five made faulty, for the fault rows. The contenders connect
//! while every node is healthy and are warmed; then the fault starts, so a
//! paused or blackholed node holds connections that are already open, as
//! when a node stops answering in the middle of a service's life.
//!
//! The fault proxy runs on a runtime thread of its own: a client that blocks
//! its thread (or a Node.js child this thread waits for) cannot stop it.

use std::time::Duration;

use anyhow::Result;
use redlock_wasm::local::proxy::{Mode, Proxy};
use redlock_wasm::local::{LocalCluster, free_port};

/// What is wrong with the last node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Its replies are delayed by 50 ms (proxy).
    Slow,
    /// Its redis-server is stopped with SIGSTOP: the kernel still accepts
    /// and buffers, nothing answers.
    Paused,
    /// A proxy in front of it swallows every byte, both ways.
    Blackholed,
    /// Nothing listens on its port.
    Dead,
}

impl Fault {
    pub const ALL: [Fault; 4] = [Fault::Slow, Fault::Paused, Fault::Blackholed, Fault::Dead];

    /// The name used in metric keys.
    pub fn key(self) -> &'static str {
        match self {
            Fault::Slow => "slow",
            Fault::Paused => "paused",
            Fault::Blackholed => "blackholed",
            Fault::Dead => "dead",
        }
    }

    /// The column heading in the report.
    pub fn heading(self) -> &'static str {
        match self {
            Fault::Slow => "one slow (50 ms)",
            Fault::Paused => "one paused (SIGSTOP)",
            Fault::Blackholed => "one blackholed",
            Fault::Dead => "one dead",
        }
    }
}

/// The slow node's delay.
pub const SLOW: Duration = Duration::from_millis(50);

/// One fault case: the URLs the contenders use, and what makes the fault.
pub struct Site {
    fault: Fault,
    urls: Vec<String>,
    proxy: Option<(tokio::runtime::Runtime, Proxy)>,
}

impl Site {
    /// Ready for the contenders to connect; the fault is not on yet.
    pub async fn prepare(fault: Fault, cluster: &LocalCluster) -> Result<Site> {
        let mut urls = cluster.urls();
        let last = cluster.nodes.len() - 1;
        let mut proxy = None;
        match fault {
            Fault::Slow | Fault::Blackholed => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()?;
                let p = rt.spawn(Proxy::start(cluster.nodes[last].port())).await??;
                urls[last] = p.url();
                proxy = Some((rt, p));
            }
            Fault::Dead => urls[last] = format!("redis://127.0.0.1:{}", free_port()?),
            Fault::Paused => {}
        }
        Ok(Site { fault, urls, proxy })
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Starts the fault.
    pub fn inject(&self, cluster: &LocalCluster) -> Result<()> {
        let last = cluster.nodes.len() - 1;
        match (self.fault, &self.proxy) {
            (Fault::Slow, Some((_, p))) => p.set(Mode::Delay(SLOW)),
            (Fault::Blackholed, Some((_, p))) => p.set(Mode::Blackhole),
            (Fault::Paused, _) => cluster.nodes[last].pause()?,
            _ => {}
        }
        Ok(())
    }

    /// Ends the fault (the proxy goes with the site).
    pub fn heal(&self, cluster: &LocalCluster) -> Result<()> {
        if self.fault == Fault::Paused {
            cluster.nodes[cluster.nodes.len() - 1].resume()?;
        }
        Ok(())
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some((rt, proxy)) = self.proxy.take() {
            drop(proxy);
            // Ends its connections' tasks too; blocking is not allowed here.
            rt.shutdown_background();
        }
    }
}
