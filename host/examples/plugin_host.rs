//! A sandboxed plugin host: a wasmtime embedder that runs a plugin component
//! written against the `redlock` interface only.
//!
//! The test fixtures (`tests/fixtures`, a dev-dependency) compose the example
//! plugin (`examples/plugin/`) with the shipped lock core; that component imports
//! `redlock:core/redis-node` and WASI. This embedder links `redis-node` with
//! [`redlock_wasm::add_to_linker`] (real Redis nodes) and WASI with nothing
//! granted: no network, no files, no environment, no arguments. The plugin
//! gets locks, a clock and nothing else.
//!
//! ```text
//! REDLOCK_NODES=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003 \
//!     cargo run -p redlock-wasm --example plugin_host -- nightly-report 5 100
//! ```

use std::time::Duration;

use anyhow::{Context, bail};
use redlock_wasm::{ProcessClock, RedisNode, RedisNodeCtx};
use wasmtime::component::{Component, ComponentType, InstancePre, Lift, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// The composed plugin (plugin + lock core), built by the test fixtures.
pub const PLUGIN_WASM: &[u8] = redlock_fixtures::PLUGIN_EXAMPLE_WASM;

/// The interface the plugin exports.
const JOB: &str = "redlock:plugin-example/job@0.1.0";

/// `job.report` from the plugin's WIT.
#[derive(ComponentType, Lift, Debug, Clone, PartialEq, Eq)]
#[component(record)]
pub struct Report {
    pub key: String,
    pub steps: u32,
    pub extensions: u32,
    #[component(name = "started-at")]
    pub started_at: u64,
    #[component(name = "finished-at")]
    pub finished_at: u64,
}

/// What one plugin instance may touch.
struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    nodes: RedisNodeCtx,
    limits: StoreLimits,
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Runs plugin instances; cheap to share between tasks.
pub struct PluginHost {
    engine: Engine,
    pre: InstancePre<Sandbox>,
    nodes: RedisNodeCtx,
}

impl PluginHost {
    /// Compiles and links `wasm` once; each [`run`](Self::run) instantiates it.
    pub fn new(wasm: &[u8], nodes: RedisNodeCtx) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let component = Component::new(&engine, wasm)
            .map_err(anyhow::Error::from)
            .context("compiling the plugin")?;
        let mut linker = Linker::new(&engine);
        // WASI is linked because the component imports it (Rust's std does),
        // but the context below grants nothing: sockets fail with
        // access-denied, there are no preopened directories.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        redlock_wasm::add_to_linker(&mut linker, |s: &mut Sandbox| {
            RedisNode::new(&s.nodes, &mut s.table)
        })?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("the plugin imports something this host does not give")?;
        Ok(Self { engine, pre, nodes })
    }

    /// Runs the plugin's `job.run` in a fresh sandbox; at most `timeout` of
    /// wall-clock time (the plugin is interrupted at the next epoch past it).
    pub async fn run(
        &self,
        job: &str,
        steps: u32,
        step_ms: u32,
        timeout: Duration,
    ) -> anyhow::Result<Result<Report, String>> {
        let wasi = WasiCtxBuilder::new()
            // One clock for every instance, so reports compare across runs.
            .monotonic_clock(ProcessClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let sandbox = Sandbox {
            wasi,
            table: ResourceTable::new(),
            nodes: self.nodes.clone(),
            limits: StoreLimitsBuilder::new()
                .memory_size(32 << 20)
                .instances(16)
                .build(),
        };
        let mut store = Store::new(&self.engine, sandbox);
        store.limiter(|s| &mut s.limits);
        // Yield to the runtime every epoch; the ticker below makes epochs.
        store.epoch_deadline_async_yield_and_update(1);
        let ticker = tokio::spawn({
            let engine = self.engine.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    engine.increment_epoch();
                }
            }
        });
        let result = tokio::time::timeout(timeout, async {
            let instance = self.pre.instantiate_async(&mut store).await?;
            let job_idx = instance
                .get_export_index(&mut store, None, JOB)
                .with_context(|| format!("the plugin does not export {JOB}"))?;
            let run_idx = instance
                .get_export_index(&mut store, Some(&job_idx), "run")
                .with_context(|| format!("{JOB} has no `run`"))?;
            let run = instance.get_typed_func::<(&str, u32, u32), (Result<Report, String>,)>(
                &mut store, &run_idx,
            )?;
            let (out,) = run.call_async(&mut store, (job, steps, step_ms)).await?;
            anyhow::Ok(out)
        })
        .await;
        ticker.abort();
        match result {
            Ok(r) => r,
            Err(_) => bail!("the plugin did not finish within {timeout:?}"),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: plugin_host JOB [STEPS] [STEP_MS]   (nodes from REDLOCK_NODES)";
    let job = args.next().context(usage)?;
    let steps = args.next().map_or(Ok(3), |s| s.parse()).context(usage)?;
    let step_ms = args.next().map_or(Ok(100), |s| s.parse()).context(usage)?;
    let urls = std::env::var("REDLOCK_NODES").context(
        "set REDLOCK_NODES=redis://HOST:PORT,... (for local nodes: `redlock demo` starts some)",
    )?;
    let mut nodes = RedisNodeCtx::builder();
    for url in urls.split(',').filter(|u| !u.trim().is_empty()) {
        nodes = nodes.node(url.trim());
    }
    let host = PluginHost::new(PLUGIN_WASM, nodes.build()?)?;
    match host
        .run(&job, steps, step_ms, Duration::from_secs(60))
        .await?
    {
        Ok(r) => {
            println!(
                "{}: {} steps in {:.1} ms, {} extensions",
                r.key,
                r.steps,
                (r.finished_at - r.started_at) as f64 / 1e6,
                r.extensions
            );
            Ok(())
        }
        Err(e) => bail!("plugin: {e}"),
    }
}
