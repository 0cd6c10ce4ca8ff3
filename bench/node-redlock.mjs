// node-redlock (npm `redlock` 5.0.0-beta.2 on ioredis 5.9.3, exact versions
// in bench/package.json and bench/package-lock.json) driven by redlock-bench:
// one JSON request per line on stdin, one JSON answer per line on stdout.
// The Rust side decides what runs when (the order of the contenders, the
// faults); this side only runs the loops, so that node-redlock is measured
// exactly as the Rust contenders are.
//
//   {"op":"open","id":N,"urls":[...],"retry":null|{"count":C,"delay":D,"jitter":J}}
//       a Redlock over one ioredis client per URL; retry null = node-redlock's defaults
//   {"op":"warm","id":N,"secs":S}            JIT warm-up: half 1 client, half 16 clients
//   {"op":"latency","id":N,"tag":T,"iters":I,"max_secs":S|null,"hang_ms":H}
//       -> {"samples_us":[...],"cpu_us":U,"failed":F,"hung":bool}
//   {"op":"throughput","id":N,"tag":T,"clients":C,"secs":S,"one_key":bool}
//       -> {"pairs":P,"secs":S,"cpu_us":U}
//   {"op":"close","id":N}
// Every answer is an object; {"error":"..."} when the request failed.
import { createInterface } from "node:readline";
import Redis from "ioredis";
import Redlock from "redlock";

const TTL = 10000;
const open = new Map();

// CPU time of this whole process (every thread), in microseconds.
function cpuUs() {
  const { user, system } = process.cpuUsage();
  return user + system;
}

function sleep(ms) {
  let timer;
  const done = new Promise((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  return { done, cancel: () => clearTimeout(timer) };
}

// One acquire + release; false when either did not reach a quorum.
async function pair(redlock, key) {
  try {
    const lock = await redlock.acquire([key], TTL);
    await lock.release();
    return true;
  } catch {
    return false;
  }
}

async function openOne({ id, urls, retry }) {
  const clients = urls.map((u) => {
    // maxRetriesPerRequest 0: a command to a node that cannot be reached
    // fails when its connection attempt fails, instead of being queued
    // for later attempts.
    const c = new Redis(u, { maxRetriesPerRequest: 0 });
    c.on("error", () => {}); // a dead node's connection errors are expected
    return c;
  });
  // Wait for the connections that can be made; a dead node never is.
  await Promise.all(
    clients.map((c) => {
      const t = sleep(500);
      return Promise.race([new Promise((r) => c.once("ready", r)), t.done]).finally(t.cancel);
    }),
  );
  const settings = retry
    ? { retryCount: retry.count, retryDelay: retry.delay, retryJitter: retry.jitter }
    : {};
  open.set(id, { clients, redlock: new Redlock(clients, settings) });
  return {};
}

async function warm({ id, secs }) {
  const { redlock } = open.get(id);
  let pairs = 0;
  const half = performance.now() + (secs * 1000) / 2;
  while (performance.now() < half) {
    await pair(redlock, `bench:node:warm:${id}:${pairs++}`);
  }
  const r = await throughput({ id, tag: `warm:${id}`, clients: 16, secs: secs / 2, one_key: false });
  return { pairs: pairs + r.pairs };
}

async function latency({ id, tag, iters, max_secs, hang_ms }) {
  const { redlock } = open.get(id);
  const samples = [];
  let failed = 0;
  let hung = false;
  const start = performance.now();
  const cpu = cpuUs();
  for (let i = 0; i < iters; i++) {
    const t = performance.now();
    const bound = sleep(hang_ms);
    const ok = await Promise.race([pair(redlock, `bench:node:lat:${tag}:${i}`), bound.done.then(() => null)]);
    bound.cancel();
    if (ok === null) {
      hung = true;
      break;
    }
    if (!ok) failed++;
    samples.push((performance.now() - t) * 1000);
    if (max_secs != null && samples.length >= 3 && performance.now() - start > max_secs * 1000) break;
  }
  return { samples_us: samples, cpu_us: cpuUs() - cpu, failed, hung };
}

async function throughput({ id, tag, clients, secs, one_key }) {
  const { redlock } = open.get(id);
  const cpu = cpuUs();
  const start = performance.now();
  const stop = start + secs * 1000;
  let pairs = 0;
  await Promise.all(
    Array.from({ length: clients }, async (_, c) => {
      let i = 0;
      while (performance.now() < stop) {
        const key = one_key ? `bench:node:one:${tag}` : `bench:node:tp:${tag}:${c}:${i++}`;
        if (await pair(redlock, key)) pairs++;
      }
    }),
  );
  return { pairs, secs: (performance.now() - start) / 1000, cpu_us: cpuUs() - cpu };
}

function close({ id }) {
  const o = open.get(id);
  open.delete(id);
  // disconnect, not quit: a paused node would never answer a QUIT.
  for (const c of o?.clients ?? []) c.disconnect();
  return {};
}

const ops = { open: openOne, warm, latency, throughput, close };
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const req = JSON.parse(line);
  let answer;
  try {
    answer = await ops[req.op](req);
  } catch (e) {
    answer = { error: String(e?.stack ?? e) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
}
process.exit(0);
