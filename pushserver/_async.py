"""Which of anyio's two event loops the code runs on."""

from __future__ import annotations

import asyncio


def asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio (or uvloop) event loop; None on trio, anyio's other backend.

    Where asyncio's own objects are cheaper than anyio's (a bare future, a task beside a
    cancel scope, ``asyncio.timeout``) the code takes them when this is not None.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
