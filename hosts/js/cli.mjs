// A small command line over redlock.mjs, printing JSON, for scripts and for
// the repository's tests (the Python host's cli.py prints the same shapes):
//   node cli.mjs acquire KEY TTL_MS [BUDGET_MS] [--fence]
//                                                 -> {"key","token","validity_ms","expires_at","fence"}
//     fence: the lock's fencing token with --fence, else null.
//   node cli.mjs release KEY TOKEN [BUDGET_MS]    -> {"released":true}
//   node cli.mjs cycle KEY N [WITNESS_FILE]       -> {"pairs":N,"p50_ms":...,"p99_ms":...}
//     N acquire + release pairs in one instance; with WITNESS_FILE, each holder
//     reads the number in it, pauses 2 ms, writes it + 1 (an overlap loses one).
//   node cli.mjs bench PREFIX N [WARMUP]          -> {"pairs":N,"p50_ms":...,"p99_ms":...,"cpu_us_per_pair":...}
//     redlock-bench's work on every host: WARMUP pairs (default 100), then N
//     acquire + release pairs, each on a new key PREFIX:i; CPU is this process's.
// Errors: {"error":{"type":"RedlockError","native":true,"kind":...,"message":...,"nodes":[...]}}
// on stdout (native: it is an instance of JavaScript's Error), exit code 1.
import { readFileSync, writeFileSync } from 'node:fs';
import { acquire, release, RedlockError } from './redlock.mjs';

const args = process.argv.slice(2);
const fenced = args.includes('--fence');
const [cmd, key, arg, budget = '2000'] = args.filter((a) => a !== '--fence');
const print = (v) => console.log(JSON.stringify(v));
try {
  if (cmd === 'acquire') {
    const l = acquire(key, { ttlMs: Number(arg), fence: fenced || undefined }, Number(budget));
    print({ key: l.key, token: l.token, validity_ms: Number(l.validityMs), expires_at: Number(l.expiresAt),
      fence: l.fence === undefined ? null : Number(l.fence) });
  } else if (cmd === 'release') {
    release({ key, token: arg, validityMs: 0n, expiresAt: 0n }, Number(budget));
    print({ released: true });
  } else if (cmd === 'cycle') {
    const witness = process.argv[5];
    const pause = new Int32Array(new SharedArrayBuffer(4));
    const times = [];
    for (let i = 0; i < Number(arg); i++) {
      const t = performance.now();
      const l = acquire(key, { ttlMs: 5000, retryDelayMs: 5, retryJitterMs: 10 }, 10000);
      if (witness) {
        const n = Number(readFileSync(witness, 'utf8') || '0');
        Atomics.wait(pause, 0, 0, 2);
        writeFileSync(witness, String(n + 1));
      }
      release(l, 1000);
      times.push(performance.now() - t);
    }
    times.sort((a, b) => a - b);
    const at = (q) => times[Math.min(times.length - 1, Math.floor(q * times.length))];
    print({ pairs: times.length, p50_ms: at(0.5), p99_ms: at(0.99) });
  } else if (cmd === 'bench') {
    const warmup = Number(process.argv[5] ?? 100);
    const pair = (k) => release(acquire(k, { ttlMs: 10000 }, 2000), 1000);
    for (let i = 0; i < warmup; i++) pair(`${key}:warm:${i}`);
    const times = [];
    const cpu = process.cpuUsage();
    for (let i = 0; i < Number(arg); i++) {
      const t = performance.now();
      pair(`${key}:${i}`);
      times.push(performance.now() - t);
    }
    const { user, system } = process.cpuUsage(cpu);
    times.sort((a, b) => a - b);
    const at = (q) => times[Math.min(times.length - 1, Math.floor(q * times.length))];
    print({ pairs: times.length, p50_ms: at(0.5), p99_ms: at(0.99), cpu_us_per_pair: (user + system) / times.length });
  } else {
    console.error('usage: node cli.mjs acquire KEY TTL_MS [BUDGET_MS] | release KEY TOKEN [BUDGET_MS] | cycle KEY N [WITNESS_FILE] | bench PREFIX N [WARMUP]');
    process.exit(2);
  }
} catch (e) {
  if (!(e instanceof RedlockError)) throw e;
  print({ error: { type: e.constructor.name, native: e instanceof Error, kind: e.kind, message: e.message,
    nodes: (e.nodes ?? []).map(({ node, outcome, detail }) => ({ node, outcome, detail: detail ?? null })) } });
  process.exit(1);
}
