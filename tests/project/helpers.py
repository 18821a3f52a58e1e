"""What the integration tests share: a PUSH_SERVER using every location option, and ways to
wait on the real server's own signals (channel info) instead of sleeping."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import anyio
import httpx

from pushserver import __version__

SERVER_HEADER = f"pushserver/{__version__}"

CORS_ORIGIN = "http://127.0.0.1:8000"

#: One server exercising every location option; each test uses its own channel ids.
FULL_CONFIG = {
    "store": {
        "default": {"type": "memory"},
        "small": {"type": "memory", "max_messages": 3},
        "expiring": {"type": "memory", "message_timeout": 1, "min_messages": 1},
    },
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "publisher", "prefix": "/strict/", "create_on_post": False},
        {"type": "publisher", "prefix": "/tiny/", "max_message_size": 16},
        {"type": "publisher", "prefix": "/small-publisher/", "store": "small"},
        {"type": "publisher", "prefix": "/expiring-publisher/", "store": "expiring"},
        {"type": "subscriber", "prefix": "/subscriber/"},
        {"type": "subscriber", "url": r"/lazy/([^/]+)", "create_on_get": True},
        {"type": "subscriber", "prefix": "/interval/", "polling": "interval"},
        {"type": "subscriber", "prefix": "/timeout/", "timeout": 0.5},
        {
            "type": "subscriber",
            "prefix": "/credentials/",
            "allow_origin": CORS_ORIGIN,
            "allow_credentials": True,
            "create_on_get": True,
        },
        {
            "type": "subscriber",
            "prefix": "/origins/",
            "allow_origin": "http://a.example http://b.example",
            "allow_credentials": True,
            "create_on_get": True,
        },
        {"type": "subscriber", "prefix": "/small-subscriber/", "store": "small"},
        {"type": "subscriber", "prefix": "/expiring-subscriber/", "store": "expiring"},
    ],
}

#: The CORS set every subscriber response carries (default allow_origin '*').
DEFAULT_CORS = {
    "access-control-allow-origin": "*",
    "access-control-allow-headers": (
        "If-Modified-Since, If-None-Match, X-Cookie, Last-Event-ID, Cache-Control"
    ),
    "access-control-expose-headers": "Last-Modified, Etag, Cache-Control, Content-Type",
    "access-control-allow-credentials": "false",
    "access-control-max-age": "864000",
}


def path(prefix: str, channel_id: str) -> str:
    return prefix + quote(channel_id, safe="")


def position(response: httpx.Response) -> dict[str, str]:
    """The request headers that ask for the message after ``response``'s."""
    return {
        "if-modified-since": response.headers["last-modified"],
        "if-none-match": response.headers["etag"],
    }


async def channel_info(client: httpx.AsyncClient, publisher_path: str) -> dict | None:
    response = await client.get(publisher_path, headers={"accept": "application/json"})
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()


async def wait_for_info(
    client: httpx.AsyncClient, publisher_path: str, key: str, value: int, timeout: float = 10
) -> dict:
    """Poll the channel's info until ``key`` equals ``value`` (bounded by ``timeout``)."""
    with anyio.fail_after(timeout):
        while True:
            info = await channel_info(client, publisher_path)
            if info is not None and info[key] == value:
                return info
            await anyio.sleep(0.01)  # poll interval, not synchronisation: the loop checks


async def wait_for_subscribers(
    client: httpx.AsyncClient, publisher_path: str, count: int, timeout: float = 10
) -> dict:
    return await wait_for_info(client, publisher_path, "subscribers", count, timeout)


@contextmanager
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A loopback TCP server that accepts connections and never answers (a hung peer).

    Yields its port and the list of connections it accepted; closes everything after.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], accepted
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        listener.close()
