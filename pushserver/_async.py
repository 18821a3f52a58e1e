"""Which of anyio's two event loops the code runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio (or uvloop) event loop; None on trio, anyio's other backend.

    Where asyncio's own objects are cheaper than anyio's (a bare future, a task beside a
    cancel scope, ``asyncio.timeout``) the code takes them when this is not None.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_running: set[asyncio.Task[Any]] = set()


async def run_shielded(function: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``await function()``, run to its end even when the caller is cancelled.

    An anyio shield holds off anyio's cancellation (and trio's), not a plain
    ``task.cancel()`` on asyncio, which pushserver's asyncio worker uses to end a streaming
    subscriber's writer and to cut connections at the end of a shutdown. On asyncio the
    work is therefore also a task of its own: a native cancel ends the caller's wait, not
    the work.
    """
    loop = asyncio_loop()
    with anyio.CancelScope(shield=True):
        if loop is None:
            result = await function()
        else:
            task = loop.create_task(function())
            _running.add(task)  # a strong reference until it is done
            task.add_done_callback(_running.discard)
            result = await asyncio.shield(task)
    return result
