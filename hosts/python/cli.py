"""A small command line over redlock_wasm, printing JSON, for scripts and the tests.

    python cli.py acquire KEY TTL_MS [BUDGET_MS] [--fence]
                                                   -> {"key", "token", "validity_ms", "expires_at", "fence"}
      fence: the lock's fencing token with --fence, else null.
    python cli.py release KEY TOKEN [BUDGET_MS]    -> {"released": true}
    python cli.py cycle KEY N [WITNESS_FILE]       -> {"pairs": N, "p50_ms": ..., "p99_ms": ...}
      N acquire + release pairs in one instance; with WITNESS_FILE, each holder
      reads the number in it, pauses 2 ms, writes it + 1 (an overlap loses one).
    python cli.py bench PREFIX N [WARMUP]          -> {"pairs": N, "p50_ms": ..., "p99_ms": ..., "cpu_us_per_pair": ...}
      redlock-bench's work on every host: WARMUP pairs (default 100), then N
      acquire + release pairs, each on a new key PREFIX:i; CPU is this process's.

Nodes from REDLOCK_NODES; the per-node timeout from REDLOCK_NODE_TIMEOUT_MS (ms, default 50). Errors: {"error": {"type": "RedlockError", "native": true,
"kind", "message", "nodes"}} on stdout (native: it is a Python Exception), exit code 1.
The JavaScript host's cli.mjs prints the same shapes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time

from redlock_wasm import Lock, Redlock, RedlockError


def cycle(locks: Redlock, key: str, n: int, witness: str | None) -> dict:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        lock = locks.acquire(key, ttl_ms=5000, budget_ms=10_000, retry_delay_ms=5, retry_jitter_ms=10)
        if witness:
            with open(witness) as f:
                count = int(f.read() or "0")
            time.sleep(0.002)
            with open(witness, "w") as f:
                f.write(str(count + 1))
        locks.release(lock)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    at = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return {"pairs": len(times), "p50_ms": at(0.5), "p99_ms": at(0.99)}


def bench(locks: Redlock, prefix: str, n: int, warmup: int) -> dict:
    def pair(key: str) -> None:
        locks.release(locks.acquire(key, ttl_ms=10_000, budget_ms=2000), budget_ms=1000)

    for i in range(warmup):
        pair(f"{prefix}:warm:{i}")
    times = []
    cpu = time.process_time()
    for i in range(n):
        start = time.perf_counter()
        pair(f"{prefix}:{i}")
        times.append((time.perf_counter() - start) * 1000)
    cpu_us = (time.process_time() - cpu) * 1e6
    times.sort()
    at = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return {"pairs": len(times), "p50_ms": at(0.5), "p99_ms": at(0.99), "cpu_us_per_pair": cpu_us / max(1, len(times))}


def main(argv: list[str]) -> int:
    fenced = "--fence" in argv
    argv = [a for a in argv if a != "--fence"]
    if len(argv) < 3 or argv[0] not in ("acquire", "release", "cycle", "bench"):
        print(__doc__, file=sys.stderr)
        return 2
    cmd, key, arg = argv[:3]
    try:
        budget = int(argv[3]) if len(argv) > 3 and cmd not in ("cycle", "bench") else 2000
        warmup = int(argv[3]) if len(argv) > 3 and cmd == "bench" else 100
        number = int(arg) if cmd != "release" else 0
    except ValueError:
        print(f"not a number: {argv[3] if len(argv) > 3 else arg}", file=sys.stderr)
        return 2
    try:
        locks = Redlock()
        if cmd == "bench":
            out = bench(locks, key, number, warmup)
        elif cmd == "cycle":
            out = cycle(locks, key, number, argv[3] if len(argv) > 3 else None)
        elif cmd == "acquire":
            out = dataclasses.asdict(locks.acquire(key, ttl_ms=number, budget_ms=budget, fence=fenced))
        else:
            locks.release(Lock(key=key, token=arg, validity_ms=0, expires_at=0), budget_ms=budget)
            out = {"released": True}
    except RedlockError as e:
        print(json.dumps({"error": {
            "type": type(e).__name__, "native": isinstance(e, Exception), "kind": e.kind,
            "message": str(e), "nodes": [dataclasses.asdict(n) for n in e.nodes]}}))
        return 1
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
