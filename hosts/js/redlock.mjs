// redlock-wasm for Node.js: the composed lock component (lock core + the
// wasi:sockets redis-node plug), transpiled by jco, run on the
// @bytecodealliance/preview2-shim WASI implementation.
//
// Nodes come from the REDLOCK_NODES environment variable, read when this
// module is first imported: redis://host:port,redis://host:port,...
// The per-node timeout from REDLOCK_NODE_TIMEOUT_MS (ms, default 50): a node
// that has not answered by then counts as failed ('timeout') for that request.
//
// Every failure is thrown as a RedlockError (a subclass of Error) whose
// `kind` is the WIT error case: 'deadline-needed', 'unable-to-acquire',
// 'unable-to-release', 'invalid-argument', 'lock-lost' or 'cancelled'.

let core;
try {
  ({ redlock: core } = await import('./generated/redlock/redlock.js'));
} catch (e) {
  if (e.code !== 'ERR_MODULE_NOT_FOUND') throw e;
  throw new Error(
    'the transpiled component is missing: run `cargo build -p redlock-wasm` ' +
      'in the repository, then `npm run build` in hosts/js', { cause: e });
}

/** A lock operation failed; `kind` names the WIT error case. */
export class RedlockError extends Error {
  constructor(payload) {
    const { tag: kind, val } = payload;
    super(describe(kind, val));
    this.name = 'RedlockError';
    this.kind = kind;
    if (val && typeof val === 'object') {
      this.attempts = val.attempts;
      this.deadlinePassed = val.deadlinePassed;
      this.nodes = val.nodes.map(({ node, outcome }) => ({
        node,
        outcome: outcome.tag,
        detail: outcome.val ? `${outcome.val.tag}${outcome.val.val ? `: ${outcome.val.val}` : ''}` : undefined,
      }));
    } else if (typeof val === 'string') {
      this.detail = val;
    }
  }
}

function describe(kind, val) {
  if (typeof val === 'string') return `${kind}: ${val}`;
  if (!val) return kind;
  const nodes = val.nodes
    .map(({ node, outcome }) => `node ${node} ${outcome.tag}${outcome.val ? ` (${outcome.val.tag}${outcome.val.val ? `: ${outcome.val.val}` : ''})` : ''}`)
    .join(', ');
  return `${kind} after ${val.attempts} attempt(s)${val.deadlinePassed ? ', deadline passed' : ''}: ${nodes}`;
}

function call(f) {
  try {
    return f();
  } catch (e) {
    // jco throws a ComponentError carrying the WIT error as `payload`.
    if (e && e.payload && typeof e.payload.tag === 'string') throw new RedlockError(e.payload);
    throw e;
  }
}

const u64 = (name, v) => {
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'bigint') return v;
  if (!Number.isSafeInteger(v) || v < 0) throw new TypeError(`${name} must be a non-negative integer`);
  return BigInt(v);
};

/**
 * Takes the lock on `key` for `ttlMs`, within `budgetMs` (required, like a
 * context deadline in the Go original). Returns { key, token, validityMs,
 * expiresAt, fence } (the last three as BigInt). With `fence: true` the lock
 * carries a fencing token (docs/FENCING.md): higher than that of every
 * earlier holder of the key. Send it with every write to the resource the
 * lock protects, and have the resource refuse lower ones. Without it,
 * `fence` is undefined.
 */
export function acquire(key, { ttlMs, retryCount, retryDelayMs, retryJitterMs, fence } = {}, budgetMs) {
  if (fence !== undefined && typeof fence !== 'boolean') throw new TypeError('fence must be a boolean');
  const options = { ttlMs: u64('ttlMs', ttlMs ?? 0), retryCount, retryDelayMs, retryJitterMs, fence };
  return call(() => core.acquire(key, options, u64('budgetMs', budgetMs)));
}

/**
 * Now on the component's monotonic clock, in nanoseconds (BigInt): the time
 * base of a lock's `expiresAt`. Under Node.js that clock is
 * `process.hrtime.bigint()` (CLOCK_MONOTONIC on Linux, which does not count
 * time the machine spends suspended: after a suspend, treat held locks as
 * lost).
 */
export function now() {
  return process.hrtime.bigint();
}

/** True while `lock` has validity left (`now() < lock.expiresAt`). */
export function isValid(lock) {
  return now() < lock.expiresAt;
}

/** Releases `lock` (deletes the key where it still holds the token). */
export function release(lock, budgetMs) {
  return call(() => core.release(lock, u64('budgetMs', budgetMs)));
}

/** Extends `lock` to a new TTL; returns the new lock (with the same fence). */
export function extend(lock, ttlMs, budgetMs) {
  return call(() => core.extend(lock, u64('ttlMs', ttlMs), u64('budgetMs', budgetMs)));
}
