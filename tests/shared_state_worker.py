"""One process sharing a store with others, for tests/test_shared_state.py:

    python -m tests.shared_state_worker STORE AT OPERATION ARGS...

STORE is a redis:// URL or a state directory; the process waits until the wall-clock time AT
(so several start their operation together), runs it and prints its result as JSON.

    take KEY TIMES LIMIT WINDOW       how many of TIMES `take(KEY, 1, LIMIT, WINDOW)` succeeded
    hold KEY TRIES LIMIT TTL SECONDS  how many of TRIES leases it got; holds them SECONDS (renewed)
    hold-forever KEY LIMIT TTL        takes one lease, prints "held", then sleeps until killed
    cooling KEY PROBE_TTL             the answer of `cooling(KEY, PROBE_TTL)`
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from gateway.upstream.localstate import LocalState
from gateway.upstream.redisstate import RedisState
from gateway.upstream.sharedstate import SharedState


def open_store(spec: str) -> SharedState:
    return RedisState(spec) if spec.startswith("redis://") else LocalState(Path(spec))


async def main(spec: str, at: float, operation: str, args: list[str]) -> None:
    store = open_store(spec)
    time.sleep(max(0.0, at - time.time()))
    if operation == "take":
        key, times, limit, window = args[0], int(args[1]), int(args[2]), float(args[3])
        results = [await store.take(key, 1, limit, window) for _ in range(times)]
        print(json.dumps(sum(result is None for result in results)), flush=True)
    elif operation == "hold":
        key, tries, limit, ttl, seconds = args[0], int(args[1]), int(args[2]), float(args[3]), float(args[4])
        leases = [lease for _ in range(tries) if (lease := await store.acquire(key, limit, ttl)) is not None]
        print(json.dumps(len(leases)), flush=True)
        await asyncio.sleep(seconds)
        for lease in leases:
            await store.release(lease)
    elif operation == "hold-forever":
        lease = await store.acquire(args[0], int(args[1]), float(args[2]))
        print(json.dumps("held" if lease is not None else "refused"), flush=True)
        await asyncio.sleep(3600)
    elif operation == "cooling":
        print(json.dumps(await store.cooling(args[0], float(args[1]))), flush=True)
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]))
