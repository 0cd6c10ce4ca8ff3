"""redlock-wasm for Python: the portable lock component on the `wasmtime` package.

The component (`host/core/redlock-portable.wasm`, shipped in the repository
and rebuilt by `./scripts/build-core`) is the lock core composed with the
wasi:sockets `redis-node` plug: it talks to Redis itself, so this module only
instantiates it with WASI (the node list in its environment, the network
allowed) and converts values.

    from redlock_wasm import Redlock, RedlockError
    locks = Redlock(["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"])
    lock = locks.acquire("nightly-report", ttl_ms=30_000, budget_ms=2_000)  # fence=True: lock.fence
    try:
        ...  # the critical section; check locks.is_valid(lock) before each write
    finally:
        locks.release(lock)

Every failure is raised as `RedlockError` (an `Exception`) whose `kind` is the
WIT error case: "deadline-needed", "unable-to-acquire", "unable-to-release",
"invalid-argument", "lock-lost" or "cancelled"; `nodes` says what each node did.

One `Redlock` is one component instance: calls on it are synchronous and not
thread-safe (use one per thread).
"""

from __future__ import annotations

import importlib.metadata
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from wasmtime import Engine, Store, WasiConfig, _ffi
from wasmtime.component import Component, Linker, Record, Variant

INTERFACE = "redlock:core/redlock@0.2.0"
DEFAULT_WASM = Path(__file__).resolve().parents[2] / "host/core/redlock-portable.wasm"


@dataclass(frozen=True)
class Lock:
    """A held lock. `expires_at` is in nanoseconds on the component's monotonic
    clock, whose zero is when its `Redlock` was created: compare it with
    `Redlock.now()`, or call `Redlock.is_valid(lock)`."""

    key: str
    token: str
    validity_ms: int
    expires_at: int
    # The fencing token when acquired with fence=True (docs/FENCING.md): higher
    # than that of every earlier holder of the key. Send it with every write to
    # the resource the lock protects, which refuses lower ones. None otherwise.
    fence: Optional[int] = None


@dataclass(frozen=True)
class NodeOutcome:
    node: int
    outcome: str  # "done", "refused", "failed", "no-reply"
    detail: Optional[str] = None  # for "failed": e.g. "connection: connect to ...: connection-refused"


class RedlockError(Exception):
    """A lock operation failed; `kind` names the WIT error case."""

    def __init__(self, kind: str, detail: Optional[str] = None, attempts: Optional[int] = None,
                 deadline_passed: Optional[bool] = None, nodes: tuple[NodeOutcome, ...] = ()):
        self.kind = kind
        self.detail = detail
        self.attempts = attempts
        self.deadline_passed = deadline_passed
        self.nodes = nodes
        if nodes:
            said = ", ".join(
                f"node {n.node} {n.outcome}" + (f" ({n.detail})" if n.detail else "") for n in nodes)
            message = f"{kind} after {attempts} attempt(s)" + (
                ", deadline passed" if deadline_passed else "") + f": {said}"
        else:
            message = f"{kind}: {detail}" if detail else kind
        super().__init__(message)


class Redlock:
    """The lock, with `nodes` (redis:// URLs) or REDLOCK_NODES from the environment.

    `node_timeout_ms` is the per-node timeout (default: REDLOCK_NODE_TIMEOUT_MS from the
    environment, else the component's 50 ms): a node that has not answered by then counts
    as failed (`timeout`) for that request."""

    def __init__(self, nodes: Optional[list[str]] = None, wasm: Optional[os.PathLike] = None,
                 node_timeout_ms: Optional[int] = None):
        version = importlib.metadata.version("wasmtime")
        if int(version.split(".")[0]) >= 48:
            raise RuntimeError(
                f"wasmtime {version} (PyPI) cannot grant the component TCP: from 48 on TCP "
                "must be allowed explicitly and the package has no way to; install "
                "wasmtime==47.0.1 (hosts/python/requirements.txt)")
        urls = ",".join(nodes) if nodes is not None else os.environ.get("REDLOCK_NODES", "")
        path = Path(wasm) if wasm is not None else DEFAULT_WASM
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: run ./scripts/build-core in the repository")
        engine = Engine()
        linker = Linker(engine)
        linker.add_wasip2()
        self._store = Store(engine)
        # The component's monotonic clock starts at zero when its WASI context
        # is made, just after this reading: `now()` is never behind it.
        self._epoch_ns = time.monotonic_ns()
        wasi = WasiConfig()
        env = [("REDLOCK_NODES", urls)]
        timeout = str(node_timeout_ms) if node_timeout_ms is not None else os.environ.get("REDLOCK_NODE_TIMEOUT_MS")
        if timeout is not None:
            env.append(("REDLOCK_NODE_TIMEOUT_MS", timeout))
        wasi.env = env
        # The component opens TCP connections to the nodes: grant the network
        # (the package has no Python wrapper for this call).
        _ffi.wasi_config_inherit_network(wasi.ptr())
        self._store.set_wasi(wasi)
        instance = linker.instantiate(self._store, Component.from_file(engine, str(path)))
        iface = instance.get_export_index(self._store, INTERFACE)
        if iface is None:
            raise RuntimeError(f"{path} does not export {INTERFACE}")

        def func(name: str):
            return instance.get_func(self._store, instance.get_export_index(self._store, name, iface))

        self._acquire, self._release, self._extend = func("acquire"), func("release"), func("extend")

    def now(self) -> int:
        """Now on the component's monotonic clock, in ns: the time base of
        `Lock.expires_at`. Never behind the component's own reading, so a
        comparison errs towards "expired". Like the clock it follows
        (CLOCK_MONOTONIC on Linux), it does not count time the machine spends
        suspended: after a suspend, treat held locks as lost."""
        return time.monotonic_ns() - self._epoch_ns

    def is_valid(self, lock: Lock) -> bool:
        """True while `lock` has validity left."""
        return self.now() < lock.expires_at

    def acquire(self, key: str, ttl_ms: int, budget_ms: Optional[int], *, retry_count: Optional[int] = None,
                retry_delay_ms: Optional[int] = None, retry_jitter_ms: Optional[int] = None,
                fence: bool = False) -> Lock:
        """Takes the lock on `key` within `budget_ms` (required, like the Go original's context deadline).
        With `fence=True` the lock carries a fencing token (`Lock.fence`)."""
        options = _record({"ttl-ms": ttl_ms, "retry-count": retry_count,
                           "retry-delay-ms": retry_delay_ms, "retry-jitter-ms": retry_jitter_ms,
                           "fence": fence or None})
        return _lock(self._call(self._acquire, key, options, budget_ms))

    def release(self, lock: Lock, budget_ms: Optional[int] = 1000) -> None:
        """Deletes the key wherever it still holds the lock's token."""
        self._call(self._release, _wit_lock(lock), budget_ms)

    def extend(self, lock: Lock, ttl_ms: int, budget_ms: Optional[int]) -> Lock:
        """A new TTL for a lock still held on a quorum (with the same fence); raises kind "lock-lost" otherwise."""
        return _lock(self._call(self._extend, _wit_lock(lock), ttl_ms, budget_ms))

    def _call(self, f, *args):
        try:
            out = f(self._store, *args)
        finally:
            f.post_return(self._store)
        if isinstance(out, Variant):  # result::err: the WIT `error` variant
            raise _error(out)
        return out


def _record(fields: dict) -> Record:
    r = Record()
    for name, value in fields.items():
        setattr(r, name, value)
    return r


def _wit_lock(lock: Lock) -> Record:
    return _record({"key": lock.key, "token": lock.token, "validity-ms": lock.validity_ms,
                    "expires-at": lock.expires_at, "fence": lock.fence})


def _lock(r: Record) -> Lock:
    return Lock(key=r.key, token=r.token, validity_ms=getattr(r, "validity-ms"),
                expires_at=getattr(r, "expires-at"), fence=r.fence)


def _error(v: Variant) -> RedlockError:
    if isinstance(v.payload, Record):
        nodes = []
        for n in v.payload.nodes:
            o = n.outcome
            tag = o.tag if isinstance(o, Variant) else str(o)
            detail = None
            if isinstance(o, Variant) and isinstance(o.payload, Variant):
                e = o.payload
                detail = e.tag + (f": {e.payload}" if e.payload is not None else "")
            nodes.append(NodeOutcome(node=n.node, outcome=tag, detail=detail))
        return RedlockError(v.tag, attempts=v.payload.attempts,
                            deadline_passed=getattr(v.payload, "deadline-passed"), nodes=tuple(nodes))
    return RedlockError(v.tag, detail=v.payload if isinstance(v.payload, str) else None)
