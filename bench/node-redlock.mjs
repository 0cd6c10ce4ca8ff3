// node-redlock (npm `redlock` v5 with ioredis) doing what the Rust bench
// does: uncontended acquire + release latency, throughput at several client
// counts on distinct keys, and 16 clients on one key. Prints one JSON line.
// Usage: node node-redlock.mjs '{"urls":[...],"iters":N,"clients":[1,16,64],"secs":S,"tag":"r0"}'
import Redis from "ioredis";
import Redlock from "redlock";

const cfg = JSON.parse(process.argv[2]);
const clients = cfg.urls.map((u) => new Redis(u, { lazyConnect: false, maxRetriesPerRequest: 0 }));
// node-redlock's defaults, with retries off for the uncontended runs.
const single = new Redlock(clients, { retryCount: 0 });
const retrying = new Redlock(clients, {});
const TTL = 10000;

async function pair(redlock, key) {
  try {
    const lock = await redlock.acquire([key], TTL);
    await lock.release();
    return true;
  } catch (e) {
    return false;
  }
}

function pct(v, p) {
  const s = [...v].sort((a, b) => a - b);
  return s[Math.round(((s.length - 1) * p) / 100)];
}

async function throughput(n, secs, oneKey, redlock) {
  const stop = performance.now() + secs * 1000;
  const start = performance.now();
  let done = 0;
  await Promise.all(
    Array.from({ length: n }, async (_, id) => {
      let i = 0;
      while (performance.now() < stop) {
        const key = oneKey ? `bench:node:one:${cfg.tag}` : `bench:node:tp:${cfg.tag}:${id}:${i++}`;
        if (await pair(redlock, key)) done++;
      }
    }),
  );
  return done / ((performance.now() - start) / 1000);
}

for (let i = 0; i < 20; i++) await pair(single, `bench:node:warm:${cfg.tag}:${i}`);
const samples = [];
for (let i = 0; i < cfg.iters; i++) {
  const t = performance.now();
  await pair(single, `bench:node:lat:${cfg.tag}:${i}`);
  samples.push((performance.now() - t) * 1000);
}
const tp = {};
for (const n of cfg.clients) tp[n] = await throughput(n, cfg.secs, false, single);
const contended = await throughput(16, cfg.secs, true, retrying);
console.log(JSON.stringify({ samples_us: samples, p50: pct(samples, 50), p99: pct(samples, 99), throughput: tp, contended }));
await Promise.all(clients.map((c) => c.quit()));
