// A small command line over redlock.mjs, printing JSON, for scripts and for
// the repository's tests (the Python host's cli.py prints the same shapes):
//   node cli.mjs acquire KEY TTL_MS [BUDGET_MS]   -> {"key","token","validity_ms","expires_at"}
//   node cli.mjs release KEY TOKEN [BUDGET_MS]    -> {"released":true}
// Errors: {"error":{"type":"RedlockError","native":true,"kind":...,"message":...,"nodes":[...]}}
// on stdout (native: it is an instance of JavaScript's Error), exit code 1.
import { acquire, release, RedlockError } from './redlock.mjs';

const [cmd, key, arg, budget = '2000'] = process.argv.slice(2);
const print = (v) => console.log(JSON.stringify(v));
try {
  if (cmd === 'acquire') {
    const l = acquire(key, { ttlMs: Number(arg) }, Number(budget));
    print({ key: l.key, token: l.token, validity_ms: Number(l.validityMs), expires_at: Number(l.expiresAt) });
  } else if (cmd === 'release') {
    release({ key, token: arg, validityMs: 0n, expiresAt: 0n }, Number(budget));
    print({ released: true });
  } else {
    console.error('usage: node cli.mjs acquire KEY TTL_MS [BUDGET_MS] | release KEY TOKEN [BUDGET_MS]');
    process.exit(2);
  }
} catch (e) {
  if (!(e instanceof RedlockError)) throw e;
  print({ error: { type: e.constructor.name, native: e instanceof Error, kind: e.kind, message: e.message,
    nodes: (e.nodes ?? []).map(({ node, outcome, detail }) => ({ node, outcome, detail: detail ?? null })) } });
  process.exit(1);
}
