//! Running the lock core: one engine and one compiled component per process,
//! a pool of warm instances, and the sandbox around every call.
//!
//! The guest gets no filesystem, environment, arguments, stdio or sockets:
//! only clocks, randomness, `wasi:io/poll` and `redis-node`. Its memory is
//! capped by [`StoreLimits`]; a runaway guest is bounded in wall-clock time
//! (epoch interruption makes it yield, a timeout drops it). A call that trapped
//! or was dropped throws its store away, so it cannot affect later calls; a
//! call that returned normally puts its instance back for reuse, since the
//! core keeps no state between calls.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimits, StoreLimitsBuilder,
};
use wasmtime_wasi::{HostMonotonicClock, WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{LockCore, LockCorePre};
use crate::error::Error;
use crate::node::{RedisNode, RedisNodeCtx};

/// The lock core (`guest/`), compiled to a `wasm32-wasip2` component. It
/// ships with the crate (`core/redlock-core.wasm`), rebuilt by
/// `./scripts/build-core`; CI checks that the sources give these bytes.
pub const CORE_WASM: &[u8] = include_bytes!("../core/redlock-core.wasm");

/// The portable component: the lock core composed with the wasi:sockets
/// `redis-node` plug (`plug/`). It imports only standard WASI 0.2 and exports
/// `redlock:core/redlock`, for the wasmtime CLI, jco, wasmtime-py and other
/// WASI hosts (`core/redlock-portable.wasm` in the crate).
pub const PORTABLE_WASM: &[u8] = include_bytes!("../core/redlock-portable.wasm");

/// Most instances alive at once per process (pool slots). Callers beyond it
/// wait for a slot rather than fail.
pub const MAX_INSTANCES: usize = 256;

/// Default cap on a guest's linear memory. The core needs well under 2 MiB.
pub const DEFAULT_MEMORY_LIMIT: usize = 16 << 20;

/// Most live resources (fan-outs, pollables) one call may hold. A call
/// needs 4 at a time: a fan-out, its pollable, a timer and a cancellation.
const MAX_RESOURCES: usize = 4096;

/// Idle warm instances kept per process (per lock core) for reuse.
const MAX_IDLE: usize = 64;

/// How often the epoch ticks; a busy guest yields to the executor this often.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The process-wide runtime: engine, compiled core, instance-pre.
pub(crate) struct Runtime {
    engine: Engine,
    pre: LockCorePre<HostState>,
    slots: Arc<Semaphore>,
    /// Idle warm instances, shared by every manager of this runtime.
    idle: Mutex<Vec<Warm>>,
}

/// Per-store data: WASI (no capabilities but clocks and random), the resource
/// table shared by WASI and `redis-node`, and the sandbox limits.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    nodes: RedisNodeCtx,
    cancel: Option<CancellationToken>,
    limits: StoreLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A `wasi:clocks/monotonic-clock` shared by every instance in the process:
/// nanoseconds since the first use, on a clock that keeps counting while
/// the machine is suspended (`CLOCK_BOOTTIME` on Linux), as Redis's
/// wall-clock expiry does. wasmtime-wasi's default clock starts at zero per
/// context and stops during suspend, so instants (a lock's `expires-at`)
/// from two stores would not compare, and a lock would look valid after a
/// suspend that outlasted it. Embedders that run several instances want
/// this one (`WasiCtxBuilder::monotonic_clock(ProcessClock)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessClock;

/// Nanoseconds on the suspend-aware clock since an arbitrary origin.
pub(crate) fn boot_ns() -> u64 {
    #[cfg(target_os = "linux")]
    const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
    // Elsewhere CLOCK_MONOTONIC (which on macOS already counts sleep).
    #[cfg(not(target_os = "linux"))]
    const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass; it cannot
    // fail for this clock id.
    unsafe { libc::clock_gettime(CLOCK, &mut ts) };
    let ns = (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64);
    #[cfg(test)]
    let ns = ns + SUSPENDED_NS.load(Ordering::SeqCst);
    ns
}

/// Time the unit tests pretend the machine spent suspended: the boot clock
/// moved, the monotonic clock (and `Instant`) did not.
#[cfg(test)]
pub(crate) static SUSPENDED_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn process_epoch() -> u64 {
    static EPOCH: OnceLock<u64> = OnceLock::new();
    *EPOCH.get_or_init(boot_ns)
}

impl HostMonotonicClock for ProcessClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        now_ns()
    }
}

/// Now, as the guest sees it.
pub(crate) fn now_ns() -> u64 {
    boot_ns().saturating_sub(process_epoch())
}

/// A guest instant as an [`Instant`], seen from now: after a suspend the
/// result has moved closer, as the guest's instant has.
pub(crate) fn instant_from_guest(ns: u64) -> Instant {
    let now = now_ns();
    let instant = Instant::now();
    if ns >= now {
        instant + Duration::from_nanos(ns - now)
    } else {
        instant
            .checked_sub(Duration::from_nanos(now - ns))
            .unwrap_or(instant)
    }
}

/// An [`Instant`] as a guest instant.
pub(crate) fn guest_from_instant(at: Instant) -> u64 {
    let (now, instant) = (now_ns(), Instant::now());
    match at.checked_duration_since(instant) {
        Some(ahead) => now.saturating_add(u64::try_from(ahead.as_nanos()).unwrap_or(u64::MAX)),
        None => now.saturating_sub(
            u64::try_from(instant.duration_since(at).as_nanos()).unwrap_or(u64::MAX),
        ),
    }
}

impl Runtime {
    /// The process-wide runtime for the built-in core, made on first use
    /// (compiling the core, or loading it from wasmtime's on-disk cache).
    pub(crate) fn get() -> Result<&'static Runtime, Error> {
        static RUNTIME: OnceLock<Result<&'static Runtime, String>> = OnceLock::new();
        RUNTIME
            .get_or_init(|| Runtime::for_core(CORE_WASM).map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Core)
    }

    /// The runtime for another build of the lock core (any component of
    /// the `lock-core` world), made once per distinct binary.
    pub(crate) fn for_core(wasm: &[u8]) -> Result<&'static Runtime, Error> {
        static CORES: Mutex<Vec<(Vec<u8>, &'static Runtime)>> = Mutex::new(Vec::new());
        let mut cores = CORES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, rt)) = cores.iter().find(|(w, _)| w.as_slice() == wasm) {
            return Ok(rt);
        }
        let rt: &'static Runtime = Box::leak(Box::new(
            Runtime::new(wasm).map_err(|e| Error::Core(format!("load the lock core: {e:#}")))?,
        ));
        cores.push((wasm.to_vec(), rt));
        Ok(rt)
    }

    fn engine() -> anyhow::Result<Engine> {
        static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
        ENGINE
            .get_or_init(|| Runtime::new_engine().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }

    fn new_engine() -> anyhow::Result<Engine> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_INSTANCES as u32)
            .total_core_instances(4 * MAX_INSTANCES as u32)
            .total_memories(2 * MAX_INSTANCES as u32)
            .total_tables(4 * MAX_INSTANCES as u32)
            .max_memory_size(256 << 20)
            .max_unused_warm_slots(MAX_IDLE as u32);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // A compiled core is cached on disk (keyed by the wasm, wasmtime's
        // version and this config), so a CLI start skips Cranelift.
        if let Ok(cache) = Cache::new(CacheConfig::new()) {
            config.cache(Some(cache));
        }
        let engine = Engine::new(&config)?;
        start_epoch_ticker(&engine);
        Ok(engine)
    }

    fn new(wasm: &[u8]) -> anyhow::Result<Runtime> {
        let engine = Runtime::engine()?;
        let component = Component::new(&engine, wasm)?;
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        crate::node::add_to_linker(&mut linker, |s: &mut HostState| {
            RedisNode::new(&s.nodes, &mut s.table).with_cancellation(s.cancel.as_ref())
        })?;
        let pre = LockCorePre::new(linker.instantiate_pre(&component)?)?;
        Ok(Runtime {
            engine,
            pre,
            slots: Arc::new(Semaphore::new(MAX_INSTANCES)),
            idle: Mutex::new(Vec::new()),
        })
    }
}

fn start_epoch_ticker(engine: &Engine) {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("redlock-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the epoch ticker thread");
}

/// Why a checkout gave no instance.
#[derive(Debug)]
pub(crate) enum CheckoutError {
    /// The deadline passed while every instance slot was busy.
    DeadlinePassed,
    /// The caller's cancellation token fired while waiting.
    Cancelled,
    /// The core could not be instantiated.
    Core(Error),
}

/// Warm instances for one manager: its store settings over the process-wide
/// pool of idle instances.
///
/// Idle instances are shared by every manager of a runtime: an instance
/// keeps no state between calls, so checkout rebinds it to the caller's
/// nodes and cancellation. An idle instance occupies one of the
/// [`MAX_INSTANCES`] slots; it is kept only while slots are free, and when
/// none is free a caller evicts an idle one before it waits. Waiting for a
/// slot counts against the caller's deadline and obeys its cancellation.
pub(crate) struct InstancePool {
    runtime: &'static Runtime,
    nodes: RedisNodeCtx,
    memory_limit: AtomicUsize,
}

/// An instance with its store.
pub(crate) struct Warm {
    pub(crate) store: Store<HostState>,
    pub(crate) core: LockCore,
    memory_limit: usize,
    _slot: OwnedSemaphorePermit,
}

impl InstancePool {
    pub(crate) fn new(runtime: &'static Runtime, nodes: RedisNodeCtx, memory_limit: usize) -> Self {
        Self {
            runtime,
            nodes,
            memory_limit: AtomicUsize::new(memory_limit),
        }
    }

    /// Sets the memory cap for instances this manager uses from now on
    /// (idle instances made with another cap are not reused by it).
    pub(crate) fn set_memory_limit(&self, bytes: usize) {
        self.memory_limit.store(bytes, Ordering::SeqCst);
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        self.runtime.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A warm instance ready for one call, with `cancel` visible to it;
    /// waits for a free slot at most until `deadline`.
    pub(crate) async fn checkout(
        &self,
        cancel: Option<&CancellationToken>,
        deadline: Instant,
    ) -> Result<Warm, CheckoutError> {
        let memory_limit = self.memory_limit.load(Ordering::SeqCst);
        let slots = &self.runtime.slots;
        let slot = loop {
            let reused = {
                let mut idle = self.idle();
                let found = idle.iter().rposition(|w| w.memory_limit == memory_limit);
                found.map(|i| idle.swap_remove(i))
            };
            if let Some(mut warm) = reused {
                let data = warm.store.data_mut();
                data.nodes = self.nodes.clone();
                data.cancel = cancel.cloned();
                return Ok(warm);
            }
            if let Ok(slot) = slots.clone().try_acquire_owned() {
                break slot;
            }
            // Every slot is taken: an idle instance (of another memory cap)
            // gives its slot up before anyone waits.
            let evicted = self.idle().pop();
            if evicted.is_none() {
                let cancelled = async {
                    match cancel {
                        Some(c) => c.cancelled().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    slot = slots.clone().acquire_owned() => {
                        break slot.map_err(|_| CheckoutError::Core(Error::Core("instance slots closed".into())))?;
                    }
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        return Err(CheckoutError::DeadlinePassed);
                    }
                    _ = cancelled => return Err(CheckoutError::Cancelled),
                }
            }
        };
        let mut warm = self
            .instantiate(slot, memory_limit)
            .await
            .map_err(CheckoutError::Core)?;
        warm.store.data_mut().cancel = cancel.cloned();
        Ok(warm)
    }

    /// Returns an instance whose last call finished normally. It is kept
    /// only if it is known clean (the guest dropped every resource it made)
    /// and while instance slots are free: under pressure its slot goes to
    /// whoever waits for one.
    pub(crate) fn checkin(&self, mut warm: Warm) {
        warm.store.data_mut().cancel = None;
        if !warm.store.data().table.is_empty() {
            tracing::debug!("lock core left resources behind; dropping its instance");
            return;
        }
        if self.runtime.slots.available_permits() == 0 {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(warm);
        }
    }

    async fn instantiate(
        &self,
        slot: OwnedSemaphorePermit,
        memory_limit: usize,
    ) -> Result<Warm, Error> {
        let rt = self.runtime;
        let wasi = wasmtime_wasi::WasiCtx::builder()
            .monotonic_clock(ProcessClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_limit)
            .instances(16)
            .tables(16)
            .memories(4)
            .trap_on_grow_failure(true)
            .build();
        let mut table = ResourceTable::new();
        // A guest that makes resources without dropping them traps here
        // instead of growing host memory without bound.
        table.set_max_capacity(MAX_RESOURCES);
        let state = HostState {
            wasi,
            table,
            nodes: self.nodes.clone(),
            cancel: None,
            limits,
        };
        let mut store = Store::new(&rt.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_async_yield_and_update(1);
        let core = rt
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| Error::Core(format!("instantiate: {e:#}")))?;
        Ok(Warm {
            store,
            core,
            memory_limit,
            _slot: slot,
        })
    }
}
