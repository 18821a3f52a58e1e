"""Fixtures for backend tests: a ``backend`` fixture that runs the shared behaviour suite
against every backend: memory, redis, and redis on a Redis Cluster (the ``redis_server``
and ``redis_cluster`` fixtures are in tests/conftest.py)."""

from __future__ import annotations

import anyio
import pytest

from pushserver.backends import MemoryBackend
from pushserver.message import Message
from pushserver.testing import RedisClusterServers, RedisServer


class RecordingListener:
    """A backend's listener that records what it hears and lets tests wait for it."""

    def __init__(self) -> None:
        self.messages: dict[str, list[Message]] = {}
        self.deleted: list[str] = []
        self._changed = anyio.Event()

    def on_message(self, channel_id: str, message: Message) -> int:
        self.messages.setdefault(channel_id, []).append(message)
        self._wake()
        return 0

    def on_delete(self, channel_id: str) -> None:
        self.deleted.append(channel_id)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate, timeout: float = 5) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def wait_messages(self, channel_id: str, count: int, timeout: float = 5) -> list[Message]:
        await self.wait_for(lambda: len(self.messages.get(channel_id, ())) >= count, timeout)
        return self.messages[channel_id]


def make_backend(kind: str, redis_server: RedisServer | RedisClusterServers | None, **limits):
    if kind == "memory":
        return MemoryBackend(**limits)
    from pushserver.backends.redis import RedisBackend

    assert redis_server is not None
    options = redis_server.store(**limits)
    del options["type"]
    return RedisBackend(**options)


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend_kind(request):
    return request.param


@pytest.fixture
def backend_factory(backend_kind, request):
    """Open backends of the parametrised kind (closed after the test), each with a
    :class:`RecordingListener` as ``backend.recorder``."""
    redis = None
    if backend_kind == "redis":
        redis = request.getfixturevalue("redis_server")
    elif backend_kind == "cluster":
        redis = request.getfixturevalue("redis_cluster")

    def create(**limits):
        backend = make_backend(backend_kind, redis, **limits)
        backend.recorder = RecordingListener()
        backend.bind(backend.recorder)
        return backend

    return create


@pytest.fixture
async def backend(backend_factory):
    async with backend_factory() as opened:
        yield opened
