"""Our wake-up path alone, against the floor's, in one process: ``python -m bench.wakeup``.

No sockets and no ASGI server: ``--n`` subscribers wait on one channel, each message is
handed to every one of them, and each writes it to a send that does nothing. *ours* is the
hub (``Hub.on_message`` → ``Subscription.offer`` → the subscriber's wakeup) and the stream
(``Stream.batch``) as the streaming transports use them; *floor* is ``bench/floor.py``'s
scheme (one shared ``anyio.Event`` per channel, replaced per message, and a list of
messages). It prints process CPU time per delivery, the best of ``--repeat`` alternating
runs: steadier than the full bench on a busy machine, since both sides run in the same
process within seconds of each other, and it isolates the part of a delivery we own.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pushserver.hub import Delivery, Hub  # noqa: E402
from pushserver.message import ORIGIN, Message, MessageId  # noqa: E402
from pushserver.server import GC_THRESHOLDS  # noqa: E402
from pushserver.transports.streaming import Stream  # noqa: E402


class NullBackend:
    """The little of a backend the hub calls while subscribing."""

    def bind(self, hub: Hub) -> None:
        pass

    async def listen(self, channel_id: str) -> None:
        pass

    async def unlisten(self, channel_id: str) -> None:
        pass

    async def subscribers_changed(self, channel_id: str, delta: int) -> None:
        pass


async def send(item: object) -> None:
    pass


async def ours(n: int, rounds: int) -> float:
    hub = Hub(NullBackend())  # type: ignore[arg-type]
    done = 0
    all_done = asyncio.Event()

    async def subscriber() -> None:
        nonlocal done
        subscription = await hub.subscribe(["c"])
        stream = Stream(hub, subscription, {"c": ORIGIN})
        stream._resync = False  # nothing buffered to catch up from
        while True:
            for event in await stream.batch():
                if type(event) is Delivery:
                    await send(event.message)
            done += 1
            if done == n:
                all_done.set()

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(subscriber)
        await anyio.sleep(0.1)
        started = time.process_time()
        for r in range(rounds):
            done = 0
            all_done.clear()
            hub.on_message("c", Message(MessageId(1, r), b"x"))
            await all_done.wait()
        elapsed = time.process_time() - started
        tg.cancel_scope.cancel()
    return elapsed / (n * rounds)


async def floor(n: int, rounds: int) -> float:
    changed = [anyio.Event()]
    messages: list[int] = []
    done = 0
    all_done = asyncio.Event()

    async def subscriber() -> None:
        nonlocal done
        sent = 0
        while True:
            event = changed[0]
            while sent < len(messages):
                await send(messages[sent])
                sent += 1
                done += 1
                if done == n:
                    all_done.set()
            await event.wait()

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(subscriber)
        await anyio.sleep(0.1)
        started = time.process_time()
        for r in range(rounds):
            done = 0
            all_done.clear()
            messages.append(r)
            changed[0].set()
            changed[0] = anyio.Event()
            await all_done.wait()
        elapsed = time.process_time() - started
        tg.cancel_scope.cancel()
    return elapsed / (n * rounds)


async def main(n: int, rounds: int, repeat: int) -> None:
    gc.set_threshold(*GC_THRESHOLDS)  # as pushserver.server.serve sets them
    best = {"ours": float("inf"), "floor": float("inf")}
    for _ in range(repeat):
        best["ours"] = min(best["ours"], await ours(n, rounds))
        best["floor"] = min(best["floor"], await floor(n, rounds))
    a, b = best["ours"] * 1e6, best["floor"] * 1e6
    print(f"{n} subscribers: ours {a:.2f} µs, floor {b:.2f} µs per delivery ({a / b:.2f}x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args()
    anyio.run(
        main,
        args.n,
        args.rounds,
        args.repeat,
        backend="asyncio",
        backend_options={"use_uvloop": args.loop == "uvloop"},
    )
