"""What the memory store and the hub hold per channel, measured with tracemalloc.

``python -m bench.channelcost [--n 10000]`` builds, in one process and without sockets,
``--n`` channels of each kind and prints the Python heap they added, per channel:

- ``empty``: created by a subscriber (``create_on_get``), nothing retained, nobody waiting
  (what the abandoned-channel flood leaves until ``channel_timeout``);
- ``one_message``: created by a publish of a 64-byte body (the message's cost beyond its
  body is what ``MESSAGE_OVERHEAD`` estimates);
- ``idle_subscriber``: an empty channel with one subscription waiting on it, what the hub
  adds (docs/topics.md#bounded-memory).

Channel ids are 13 characters, as ``CHANNEL_OVERHEAD``'s comment assumes. The memory store's
``memory_limit`` accounting uses the constants, not these figures: compare them.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pushserver.backends import memory
from pushserver.hub import Hub


def heap() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def measure(n: int) -> dict:
    ids = [f"ch-{i:010d}" for i in range(n)]  # 13 characters, made before measuring
    body = b"x" * 64
    result: dict = {"n": n, "channel_id_length": len(ids[0])}
    tracemalloc.start()
    try:
        backend = memory.MemoryBackend(channel_timeout=0, memory_limit=0, max_channels=0)
        hub = Hub(backend)
        before = heap()
        for channel_id in ids:
            await backend.create(channel_id, publisher=False)
        empty = heap()
        result["empty"] = round((empty - before) / n)
        subscriptions = [await hub.subscribe([channel_id]) for channel_id in ids]
        result["idle_subscriber"] = round((heap() - empty) / n)
        for subscription in subscriptions:
            await hub.unsubscribe(subscription)
        del subscriptions
        other = memory.MemoryBackend(channel_timeout=0, memory_limit=0, max_channels=0)
        Hub(other)
        before = heap()
        for channel_id in ids:
            await other.publish(channel_id, body, "text/plain")
        result["one_message"] = round((heap() - before) / n)
        result["one_message_minus_empty_and_body"] = (
            result["one_message"] - result["empty"] - len(body) - len("text/plain")
        )
    finally:
        tracemalloc.stop()
    result["estimates"] = {
        "CHANNEL_OVERHEAD + id": memory.CHANNEL_OVERHEAD + len(ids[0]),
        "MESSAGE_OVERHEAD": memory.MESSAGE_OVERHEAD,
    }
    result["python"] = sys.version.split()[0]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.channelcost", description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(anyio.run(measure, args.n)))


if __name__ == "__main__":
    main()
