// A small command line over redlock.mjs, printing JSON, for scripts and for
// the repository's tests:
//   node cli.mjs acquire KEY TTL_MS [BUDGET_MS]   -> {"key","token","validityMs",...}
//   node cli.mjs release KEY TOKEN [BUDGET_MS]    -> {"released":true}
// Errors: {"error":{"name":"RedlockError","kind":...,"message":...}} on
// stdout, exit code 1.
import { acquire, release, RedlockError } from './redlock.mjs';

const json = (v) => JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? Number(x) : x));
const [cmd, key, arg, budget = '2000'] = process.argv.slice(2);
try {
  if (cmd === 'acquire') {
    console.log(json(acquire(key, { ttlMs: Number(arg) }, Number(budget))));
  } else if (cmd === 'release') {
    release({ key, token: arg, validityMs: 0n, expiresAt: 0n }, Number(budget));
    console.log(json({ released: true }));
  } else {
    console.error('usage: node cli.mjs acquire KEY TTL_MS [BUDGET_MS] | release KEY TOKEN [BUDGET_MS]');
    process.exit(2);
  }
} catch (e) {
  const error = { name: e.name, isError: e instanceof Error, isRedlockError: e instanceof RedlockError,
    kind: e.kind, message: e.message, nodes: e.nodes };
  console.log(json({ error }));
  process.exit(1);
}
