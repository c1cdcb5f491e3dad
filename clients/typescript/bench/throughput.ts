// The client benchmark's workload for this client (run by `cargo bench --bench clients`, which
// prints it as ratios to the Rust client against the same gateway in the same run). Phases of
// `seconds` each on one connection, every call a closed loop: one caller sending one
// transaction at a time (its latency), then 16 and 32 callers (requests in flight), then 16
// callers sending batches of 16. The transaction: a private counter +1 (never below 0) with an
// idempotency key, on one of 10,000 players. Prints one JSON line.
//
//   node dist/bench/throughput.js <gateway host:port> <token> [seconds]
import { Client, Transaction } from "../src/index.js";

const [address, token, secondsArg] = process.argv.slice(2);
if (!address || !token) {
  console.error("usage: node dist/bench/throughput.js <gateway host:port> <token> [seconds]");
  process.exit(2);
}
const seconds = Number(secondsArg ?? "2");
const PLAYERS = 10_000;
const prefix = `bench-ts-${process.pid}`;

function transaction(): Transaction {
  const n = Math.floor(Math.random() * PLAYERS);
  return new Transaction(`${prefix}-${n}`).increment("gold", 1, "private", { min: 0 });
}

async function phase(
  client: Client,
  callers: number,
  batch: number,
  latencies: number[] | undefined,
): Promise<number> {
  const until = performance.now() + seconds * 1000;
  let done = 0;
  const caller = async () => {
    while (performance.now() < until) {
      const started = performance.now();
      if (batch === 1) {
        await client.execute(transaction());
      } else {
        const results = await client.executeBatch(Array.from({ length: batch }, transaction));
        if (results.some((r) => !r.ok)) throw new Error("a transaction failed");
      }
      latencies?.push(performance.now() - started);
      done += batch;
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: callers }, caller));
  return done / ((performance.now() - started) / 1000);
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

const client = await Client.connect({ address, token, requestDeadlineMs: 30_000, clientName: "bench-ts" });
// Warm-up: connections, JIT, the gateway's pools.
await phase(client, 8, 1, undefined);
const latencies: number[] = [];
const singleTps = await phase(client, 1, 1, latencies);
latencies.sort((a, b) => a - b);
const figures = {
  client: "typescript",
  single_p50_us: Math.round(percentile(latencies, 50) * 1000),
  single_p99_us: Math.round(percentile(latencies, 99) * 1000),
  single_tps: singleTps,
  inflight16_tps: await phase(client, 16, 1, undefined),
  inflight32_tps: await phase(client, 32, 1, undefined),
  batch16_tps: await phase(client, 16, 16, undefined),
};
client.close();
console.log(JSON.stringify(figures));
