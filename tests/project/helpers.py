"""What the integration tests share: a PUSH_SERVER using every location option, ways to
wait on the real server's own signals (channel info) instead of sleeping, and checks and
readers several modules use."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
from django.core import checks
from django.test import override_settings

from pushserver import __version__
from pushserver.config import LocationConfig, load
from pushserver.testing import PushServerProcess

SERVER_HEADER = f"pushserver/{__version__}"
ROOT = Path(__file__).resolve().parent.parent.parent

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
    "access-control-expose-headers": (
        "Last-Modified, Etag, Cache-Control, Content-Type, X-EventSource-Event"
    ),
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


def push_config(store: dict) -> dict:
    """A publisher and a subscriber location (no create_on_get) on ``store``."""
    return {
        "store": store,
        "locations": [
            {"type": "publisher", "prefix": "/publisher/"},
            {"type": "subscriber", "prefix": "/subscriber/"},
        ],
    }


def message_position(response: httpx.Response) -> tuple[int, int]:
    """The message id a long-poll response names, from Last-Modified and Etag."""
    seconds = int(parsedate_to_datetime(response.headers["last-modified"]).timestamp())
    return seconds, int(response.headers["etag"])


class Follower:
    """A long-poll client that reads a channel message after message, as updates.js does:
    each GET names the previous response's Last-Modified / Etag."""

    def __init__(self, base_url: str, channel: str) -> None:
        self.client = httpx.AsyncClient(base_url=base_url, timeout=60)
        self.channel = channel
        self.headers: dict[str, str] = {}
        self.received: list[tuple[tuple[int, int], bytes]] = []
        self.statuses: list[int] = []

    async def next(self) -> httpx.Response:
        response = await self.client.get(f"/subscriber/{self.channel}", headers=self.headers)
        self.statuses.append(response.status_code)
        if response.status_code == 200:
            self.received.append((message_position(response), response.content))
            self.headers = position(response)
        return response

    async def read(self, count: int) -> None:
        while len(self.received) < count:
            response = await self.next()
            assert response.status_code in (200, 304), response.text

    async def aclose(self) -> None:
        await self.client.aclose()


async def asgi_request(
    app, method: str, target: str, body: bytes = b"", headers: list | None = None
) -> list[dict]:
    """One HTTP request to an ASGI ``app`` on the interface a server calls it through
    (no server, no socket): the events it sent back. ``headers``: (bytes, bytes) pairs
    besides the body's ``content-length``."""
    events = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive():
        return events.pop(0) if events else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": target,
        "raw_path": target.encode(),
        "query_string": b"",
        "headers": [(b"content-length", str(len(body)).encode()), *(headers or [])],
        "client": ("127.0.0.1", 5000),
    }
    await app(scope, receive, send)
    return sent


async def assert_still_serving(
    client: httpx.AsyncClient, channel_id: str | None = None, *, subscriber: str = "/subscriber/"
) -> None:
    """The server still serves: a long poll waits on ``channel_id`` (a fresh one by default)
    under ``subscriber`` (a prefix creating channels on GET), and a publish to
    ``/publisher/`` reaches it."""
    channel_id = channel_id or f"ok-{uuid.uuid4().hex}"
    result: dict[str, httpx.Response] = {}

    async def poll() -> None:
        result["poll"] = await client.get(path(subscriber, channel_id))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(poll)
            await wait_for_subscribers(client, path("/publisher/", channel_id), 1)
            published = await client.post(path("/publisher/", channel_id), content=b"still here")
            assert published.status_code == 201, published.text
    assert (result["poll"].status_code, result["poll"].content) == (200, b"still here")


#: The first-use warnings (no publisher/subscriber location or host): most configurations
#: under test set no hosts, so :func:`pushserver_messages` leaves these out unless asked.
FIRST_USE_CHECKS = tuple(f"pushserver.W12{n}" for n in range(5))


def pushserver_messages(
    push_server: object, *, first_use: bool = False, deploy: bool = False
) -> list[checks.CheckMessage]:
    """The system check messages (pushserver's only) for the setting ``push_server``;
    ``first_use`` keeps :data:`FIRST_USE_CHECKS`, ``deploy`` runs the deployment checks
    too (as ``check --deploy`` and ``runpushserver`` do: the Redis ping)."""
    with override_settings(PUSH_SERVER=push_server):
        found = checks.run_checks(include_deployment_checks=deploy)
    return [
        m
        for m in found
        if m.id and m.id.startswith("pushserver.") and (first_use or m.id not in FIRST_USE_CHECKS)
    ]


def location_for(port: int, path: str = "/passthrough?x=1") -> LocationConfig:
    """A subscriber location (prefix ``/u/``) whose passthrough is ``127.0.0.1:port`` + ``path``."""
    parsed = load(
        {
            "locations": [
                {
                    "type": "subscriber",
                    "prefix": "/u/",
                    "passthrough": f"http://127.0.0.1:{port}{path}",
                }
            ]
        }
    )
    return parsed.locations[0]


class PresenceLog:
    """Reads the presence channel the test project's receivers publish to, in order."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url
        self.headers: dict[str, str] = {}

    async def next(self) -> dict:
        response = await self.client.get(self.url, headers=self.headers)
        assert response.status_code == 200, response.text
        self.headers = position(response)
        return response.json()


#: runpushserver --workers: each worker's line when it is up.
_WORKER_STARTED = re.compile(r"worker (\d+) started")


async def worker_pids(server: PushServerProcess, count: int) -> list[int]:
    """The pids of the first ``count`` "worker <pid> started" lines (bounded wait)."""
    with anyio.fail_after(30):
        while len(pids := [int(p) for p in _WORKER_STARTED.findall(server.log)]) < count:
            await anyio.sleep(0.05)  # the poll interval on another process's output
    return pids


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


def manage(
    *args: str,
    settings: str = "tests.project.settings",
    push_server: object = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m django *args`` in a child process (from the repository root), with
    ``push_server`` handed to the test settings as ``PUSHSERVER_TEST_CONFIG``; stdout and
    stderr merged into ``stdout``."""
    child_env = {**os.environ, **(env or {}), "DJANGO_SETTINGS_MODULE": settings}
    if push_server is not None:
        child_env["PUSHSERVER_TEST_CONFIG"] = json.dumps(push_server)
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env,
        cwd=ROOT,
        timeout=60,
    )


#: The demo's settings as the tests run it (example/ on the path, any port).
DEMO_SETTINGS = "tests.browser.demo_settings"


def demo_env(port: int) -> dict[str, str]:
    """The environment that runs the demo (``example/``) on ``port``."""
    path = os.pathsep.join([str(ROOT / "example"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {"PUSHSERVER_DEMO_PORT": str(port), "PYTHONPATH": path}


def tracked_files(root: Path, under: str = ".") -> list[str]:
    """``git ls-files`` of the checkout at ``root`` (skips the test outside a git checkout)."""
    import pytest

    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("needs a git checkout (git ls-files) of the project")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", under], cwd=root, capture_output=True, check=True,
        timeout=60,
    ).stdout.decode()
    return [name for name in listed.split("\0") if name]


def copy_tracked(root: Path, destination: Path) -> Path:
    """The tracked files of ``root`` (present in its work tree) copied to ``destination``:
    what a clean clone has."""
    for name in tracked_files(root):
        if (root / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, destination / name)
    return destination
