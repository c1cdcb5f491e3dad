"""The client benchmark's workload for this client (run by `cargo bench --bench clients`, which
prints it as ratios to the Rust client against the same gateway in the same run). Phases of
`seconds` each on one connection, every call a closed loop: one caller sending one transaction
at a time (its latency), then 16 and 32 callers (requests in flight), then 16 callers sending
batches of 16. The transaction: a private counter +1 (never below 0) with an idempotency key,
on one of 10,000 players. Prints one JSON line.

    python bench/throughput.py <gateway host:port> <token> [seconds]
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from typing import List, Optional

from colony_client import Client, ColonyError, Transaction

PLAYERS = 10_000
PREFIX = f"bench-py-{os.getpid()}"


def transaction() -> Transaction:
    return Transaction(f"{PREFIX}-{random.randrange(PLAYERS)}").increment("gold", 1, "private", min=0)


async def phase(client: Client, seconds: float, callers: int, batch: int, latencies: Optional[List[float]]) -> float:
    until = time.monotonic() + seconds
    done = 0

    async def caller() -> None:
        nonlocal done
        while time.monotonic() < until:
            started = time.monotonic()
            if batch == 1:
                await client.execute(transaction())
            else:
                results = await client.execute_batch([transaction() for _ in range(batch)])
                if any(isinstance(r, ColonyError) for r in results):
                    raise RuntimeError("a transaction failed")
            if latencies is not None:
                latencies.append(time.monotonic() - started)
            done += batch

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (time.monotonic() - started)


def percentile(ordered: List[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


async def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: python bench/throughput.py <gateway host:port> <token> [seconds]")
    address, token = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
    client = await Client.connect(address, token, request_deadline=30.0, client_name="bench-py")
    # Warm-up: the connection, the gateway's pools.
    await phase(client, seconds, 8, 1, None)
    latencies: List[float] = []
    single_tps = await phase(client, seconds, 1, 1, latencies)
    latencies.sort()
    figures = {
        "client": "python",
        "single_p50_us": round(percentile(latencies, 50) * 1e6),
        "single_p99_us": round(percentile(latencies, 99) * 1e6),
        "single_tps": single_tps,
        "inflight16_tps": await phase(client, seconds, 16, 1, None),
        "inflight32_tps": await phase(client, seconds, 32, 1, None),
        "batch16_tps": await phase(client, seconds, 16, 16, None),
    }
    client.close()
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
