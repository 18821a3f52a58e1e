"""While serving, reference cycles are collected on a timer (server.GC_INTERVAL), since the
raised collector thresholds leave the interpreter almost no full collection of its own."""

from __future__ import annotations

import gc

import anyio
import pytest

from pushserver import config, server
from pushserver.app import PushServer


@pytest.fixture
def default_thresholds():
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*before)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_full_collections_run_on_a_timer_while_serving(
    anyio_backend, default_thresholds, monkeypatch
):
    monkeypatch.setattr(server, "GC_INTERVAL", 0.05)
    full_collections = 0
    enough = anyio.Event()

    def count(phase: str, info: dict[str, int]) -> None:
        nonlocal full_collections
        if phase == "stop" and info["generation"] == 2:
            full_collections += 1
            if full_collections == 3:
                enough.set()  # the timer collects in the event loop's own thread

    sock = server.bind("127.0.0.1", 0)
    app = PushServer(config.load({}))
    gc.callbacks.append(count)
    try:
        with anyio.fail_after(20):
            await server.serve(app, sock, access_log=False, shutdown_trigger=enough.wait)
    finally:
        gc.callbacks.remove(count)
        sock.close()
    assert full_collections >= 3
    # The process's own thresholds are back once serving is over.
    assert gc.get_threshold() == (700, 10, 10)


@pytest.mark.anyio
async def test_a_process_with_its_own_thresholds_is_left_alone(monkeypatch):
    monkeypatch.setattr(server, "GC_INTERVAL", 0.01)
    before = gc.get_threshold()
    gc.set_threshold(1234, 5, 5)
    seen: list[tuple[int, int, int]] = []

    async def stop() -> None:
        # Long enough for several timer periods, had the timer been started.
        await anyio.sleep(0.2)
        seen.append(gc.get_threshold())

    sock = server.bind("127.0.0.1", 0)
    try:
        with anyio.fail_after(20):
            await server.serve(
                PushServer(config.load({})), sock, access_log=False, shutdown_trigger=stop
            )
    finally:
        sock.close()
        gc.set_threshold(*before)
    assert seen == [(1234, 5, 5)]
