"""A small command line over redlock_wasm, printing JSON, for scripts and the tests.

    python cli.py acquire KEY TTL_MS [BUDGET_MS]   -> {"key", "token", "validity_ms", "expires_at"}
    python cli.py release KEY TOKEN [BUDGET_MS]    -> {"released": true}

Nodes from REDLOCK_NODES. Errors: {"error": {"type": "RedlockError", "native": true,
"kind", "message", "nodes"}} on stdout (native: it is a Python Exception), exit code 1.
The JavaScript host's cli.mjs prints the same shapes.
"""

import dataclasses
import json
import sys

from redlock_wasm import Lock, Redlock, RedlockError


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("acquire", "release"):
        print(__doc__, file=sys.stderr)
        return 2
    cmd, key, arg = argv[:3]
    try:
        budget = int(argv[3]) if len(argv) > 3 else 2000
        number = int(arg) if cmd == "acquire" else 0
    except ValueError:
        print(f"not a number: {argv[3] if len(argv) > 3 else arg}", file=sys.stderr)
        return 2
    try:
        locks = Redlock()
        if cmd == "acquire":
            out = dataclasses.asdict(locks.acquire(key, ttl_ms=number, budget_ms=budget))
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
