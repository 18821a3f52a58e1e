"""The status location against a real server: counters move with real publishes and
subscribers on every transport, Prometheus text parses strictly, access follows the
publisher's rules, Redis health follows a real redis-server, and JSON access logs parse."""

from __future__ import annotations

import json
import math
import re
import time

import anyio
import httpx
import pytest

from pushserver.publisher import publisher_token
from pushserver.status import status_token
from tests.transports.streams import connect, event_stream, publish, ws_frame, ws_url

BUFFER = 4
BODY = b"x" * 65536

CONFIG = {
    "store": {"type": "memory", "max_messages": BUFFER},
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
        {
            "type": "subscriber",
            "prefix": "/impatient/",
            "create_on_get": True,
            "ping_interval": 0,
            "send_timeout": 1,
        },
        {"type": "status", "prefix": "/status/", "interval": 0.2},
    ],
}
CLIENT_TIMEOUT = 30

pytestmark = pytest.mark.anyio


async def status(client: httpx.AsyncClient) -> dict:
    response = await client.get("/status/json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()


async def wait_status(client: httpx.AsyncClient, predicate, timeout: float = 20) -> dict:
    """Poll the server's status (another process) until ``predicate`` holds, bounded."""
    data = None
    try:
        with anyio.fail_after(timeout):
            while True:
                data = await status(client)
                if predicate(data):
                    return data
                await anyio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"status never matched; last: {json.dumps(data)}") from None


# -- a strict Prometheus text format parser ------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{({_LABEL}(?:,{_LABEL})*)\}})? (\S+)$")
_ONE_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_prometheus(text: str) -> dict[str, dict]:
    """Families by name: ``help``, ``type`` and ``samples`` (frozenset of labels -> value).

    Strict: every sample belongs to the family whose HELP and TYPE came just before it;
    types are counter or gauge, counters end in ``_total`` and are never negative; no
    family or series appears twice; the text ends with a newline.
    """
    assert text.endswith("\n") and not text.endswith("\n\n")
    families: dict[str, dict] = {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            assert re.fullmatch(_NAME, name) and help_text, line
            assert name not in families, f"{name} twice"
            families[name] = {"help": help_text, "type": None, "samples": {}}
            current = name
        elif line.startswith("# TYPE "):
            name, kind = line[len("# TYPE ") :].split(" ")
            assert name == current and families[name]["type"] is None, line
            assert kind in ("counter", "gauge"), line
            assert (kind == "counter") == name.endswith("_total"), line
            families[name]["type"] = kind
        else:
            assert not line.startswith("#"), f"unexpected comment {line!r}"
            match = _SAMPLE.match(line)
            assert match, f"not a sample: {line!r}"
            name, labels, value = match.groups()
            assert name == current and families[name]["type"], f"{name} outside its family"
            parsed = dict(_ONE_LABEL.findall(labels or ""))
            key = frozenset(parsed.items())
            assert key not in families[name]["samples"], f"{line!r} twice"
            number = float(value)
            assert not math.isnan(number)
            if families[name]["type"] == "counter":
                assert number >= 0 and number == int(number), line
            families[name]["samples"][key] = number
    return families


def sample(families: dict, name: str, **labels: str) -> float:
    return families[name]["samples"][frozenset(labels.items())]


# -- counters --------------------------------------------------------------------------------


async def test_counters_follow_subscribers_and_messages_on_every_transport(server, client):
    before = await status(client)
    channel = "count-all"
    async with anyio.create_task_group() as tg:
        polled: list[httpx.Response] = []

        async def long_poll() -> None:
            polled.append(await client.get(f"/subscriber/{channel}"))

        tg.start_soon(long_poll)
        async with (
            event_stream(client, f"/subscriber/{channel}") as sse,
            connect(ws_url(server, f"/subscriber/{channel}")) as ws,
        ):
            one_each = {"longpoll": 1, "eventsource": 1, "websocket": 1}
            during = await wait_status(
                client,
                lambda d: all(
                    d["connections"][k] - before["connections"][k] == v for k, v in one_each.items()
                ),
            )
            assert during["subscribers"] - before["subscribers"] == 3
            assert during["active_channels"] - before["active_channels"] == 1
            await publish(client, channel, "hello")
            assert (await sse.event()).data == "hello"
            assert ws_frame(await ws.recv())[1] == "hello"
        # The poll answered by the message is no longer waiting.
    assert polled[0].status_code == 200 and polled[0].text == "hello"
    after = await wait_status(client, lambda d: d["connections"] == before["connections"])
    assert after["published"] - before["published"] == 1
    assert after["received"] - before["received"] == 1
    assert after["delivered"] - before["delivered"] == 3
    assert after["subscribers"] == before["subscribers"]
    store = after["stores"]["default"]
    assert store["ok"] is True
    assert store["published"] == after["published"]
    assert store["delivered"] == after["delivered"]
    assert after["uptime"] > 0 and after["pid"] > 0 and after["version"]


async def test_a_replayed_idempotency_key_is_not_counted_as_published(server, client):
    """``published`` counts messages stored: a retry answered from its Idempotency-Key
    stored nothing, so neither the store's nor the hub's count moves for it."""
    before = await status(client)
    key = {"idempotency-key": "counted-once"}
    for _ in range(2):
        response = await client.post("/publisher/keyed", content=b"x", headers=key)
        assert response.status_code == 202, response.text
    assert response.headers["idempotent-replayed"] == "true"
    after = await wait_status(
        client, lambda d: d["published"] - before["published"] >= 1, timeout=20
    )
    assert after["stores"]["default"]["published"] - before["stores"]["default"]["published"] == 1
    assert after["published"] - before["published"] == 1


async def test_a_gap_is_counted(server, client):
    before = await status(client)
    for n in range(BUFFER + 2):
        await publish(client, "gappy", str(n))
    # An id older than everything retained: messages after it have left the buffer.
    async with event_stream(client, "/subscriber/gappy", last_event_id="1:0") as sse:
        gap = await sse.event()
        assert gap.event == "pushserver.gap"
    after = await status(client)
    assert after["gaps"] - before["gaps"] == 1


@pytest.mark.parametrize("transport", ["eventsource", "websocket"])
async def test_a_stalled_reader_is_counted_as_dropped(server, client, transport):
    from tests.transports.test_backpressure import RawEventStream, RawWebSocket, stalled_socket

    channel = f"stuck-{transport}"
    other = "websocket" if transport == "eventsource" else "eventsource"
    before = await status(client)
    sock = stalled_socket(server)
    try:
        # Each reads the response headers (or the handshake), then nothing more.
        if transport == "eventsource":
            RawEventStream(sock, f"/impatient/{channel}")
        else:
            RawWebSocket(sock, f"/impatient/{channel}")
        await wait_status(
            client, lambda d: d["connections"][transport] > before["connections"][transport]
        )
        with anyio.fail_after(60):
            while True:
                # Publish until the server gives up on the stalled reader (send_timeout 1 s).
                for _ in range(20):
                    await publish(client, channel, BODY)
                data = await status(client)
                dropped = data["slow_disconnects"][transport]
                if dropped > before["slow_disconnects"][transport]:
                    break
    finally:
        sock.close()
    assert dropped - before["slow_disconnects"][transport] == 1
    assert data["queue_overflows"] > before["queue_overflows"]
    assert data["slow_disconnects"][other] == before["slow_disconnects"][other]
    # Logged as the connection ends, after the count moved; it comes through a pipe.
    await anyio.to_thread.run_sync(server.wait_for_output, "stopped reading for 1.0s: disconnected")


async def test_a_reader_that_fell_behind_is_counted_as_caught_up(server, client):
    from tests.transports.test_backpressure import RawEventStream, stalled_socket

    count = 200  # far more than the subscriber's queue (64) holds while it stalls
    before = await status(client)
    sock = stalled_socket(server)
    try:
        slow = RawEventStream(sock, "/subscriber/behind")
        await wait_status(
            client, lambda d: d["connections"]["eventsource"] > before["connections"]["eventsource"]
        )
        for n in range(count):
            await publish(client, "behind", b"%05d" % n + BODY)
        last = b"data: %05d" % (count - 1) + BODY
        with anyio.fail_after(60):
            blocks = await anyio.to_thread.run_sync(slow.blocks, lambda b: b.endswith(last))
    finally:
        sock.close()
    assert blocks[-1].endswith(last)
    after = await wait_status(client, lambda d: d["connections"] == before["connections"])
    assert after["catch_ups"] - before["catch_ups"] >= 1
    assert after["queue_overflows"] - before["queue_overflows"] >= 1
    assert after["gaps"] - before["gaps"] == 1  # the buffer keeps only BUFFER of them
    assert after["slow_disconnects"] == before["slow_disconnects"]


# -- formats ---------------------------------------------------------------------------------


async def test_prometheus_text_parses_and_agrees_with_json(server, client):
    await publish(client, "prom", "x")
    response = await client.get("/status/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = parse_prometheus(response.text)
    data = await status(client)
    store = data["stores"]["default"]
    # Counters can only have grown between the two requests.
    published = sample(families, "pushserver_messages_published_total", store="default")
    assert 1 <= published <= store["published"]
    backend_up = sample(families, "pushserver_backend_up", store="default", type=store["type"])
    assert backend_up == 1
    for transport in ("longpoll", "eventsource", "websocket"):
        sample(families, "pushserver_connections", store="default", transport=transport)
    info = families["pushserver_info"]["samples"]
    assert info == {frozenset({("version", data["version"]), ("pid", str(data["pid"]))}): 1}
    assert families["pushserver_uptime_seconds"]["type"] == "gauge"
    for name in (
        "pushserver_deliveries_total",
        "pushserver_messages_received_total",
        "pushserver_publish_errors_total",
        "pushserver_queue_overflows_total",
        "pushserver_catch_ups_total",
        "pushserver_gaps_total",
        "pushserver_slow_disconnects_total",
    ):
        assert families[name]["type"] == "counter"


@pytest.mark.parametrize(
    ("path", "headers", "content_type"),
    [
        ("/status/", {}, "application/json"),
        ("/status/", {"accept": "*/*"}, "application/json"),
        ("/status/", {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, "text/html"),
        ("/status/", {"accept": "text/plain;version=0.0.4;q=0.3,*/*;q=0.2"}, "text/plain"),
        (
            "/status/",
            {"accept": "application/openmetrics-text;version=1.0.0,*/*;q=0.1"},
            "text/plain",
        ),
        ("/status/?format=prometheus", {"accept": "text/html"}, "text/plain"),
        ("/status/?format=json", {"accept": "text/html"}, "application/json"),
        ("/status/?format=html", {}, "text/html"),
        ("/status/json", {"accept": "text/html"}, "application/json"),
        ("/status/metrics", {"accept": "application/json"}, "text/plain"),
    ],
)
async def test_the_format_follows_the_path_query_and_accept(client, path, headers, content_type):
    response = await client.get(path, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == content_type
    assert response.headers["cache-control"] == "no-store"
    if content_type == "application/json":
        assert response.json()["stores"]
    elif content_type == "text/plain":
        assert parse_prometheus(response.text)["pushserver_info"]
    else:
        assert "<title>pushserver status</title>" in response.text
        assert "connect-src 'self'" in response.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("method", "path", "status_code"),
    [
        ("GET", "/status/?format=xml", 400),
        ("GET", "/status/nothing-here", 404),
        ("POST", "/status/", 405),
        ("DELETE", "/status/json", 405),
    ],
)
async def test_bad_requests_get_short_answers(client, method, path, status_code):
    response = await client.request(method, path)
    assert response.status_code == status_code
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text.startswith(f"{status_code} ")
    assert (await client.get("/status/json")).status_code == 200  # still serving


async def test_the_events_stream_sends_snapshots(server, client):
    async with event_stream(client, "/status/events") as sse:
        first = (await sse.event()).json
        # The retained one may be older; the next is published after the stream started.
        second = (await sse.event()).json
    assert second["time"] > first["time"]
    assert second["pid"] == first["pid"] and "stores" in second


async def test_a_websocket_to_the_status_is_refused(server):
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    with pytest.raises((ConnectionClosed, InvalidStatus)):
        async with connect(ws_url(server, "/status/events")) as ws:
            await ws.recv()


# -- access ----------------------------------------------------------------------------------

SECRET = "status secret"


async def test_access_follows_allow_from(push_server_factory):
    """The server listens on 127.0.0.1; a client can come from 127.0.0.2 (loopback too)."""
    server = push_server_factory(
        {
            "locations": [
                {"type": "status", "prefix": "/status/", "allow_from": ["127.0.0.2"]},
                {"type": "status", "prefix": "/default/"},
            ]
        }
    )
    other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with (
        httpx.AsyncClient(base_url=server.url) as local,
        httpx.AsyncClient(base_url=server.url, transport=other) as remote,
    ):
        refused = await local.get("/status/json")
        assert refused.status_code == 403
        assert "not available from 127.0.0.1" in refused.text
        assert (await local.get("/status/events")).status_code == 403
        assert (await remote.get("/status/json")).status_code == 200
        # The default: loopback (127.0.0.0/8) and INTERNAL_IPS.
        assert (await local.get("/default/json")).status_code == 200
        assert (await remote.get("/default/json")).status_code == 200


async def test_access_needs_the_token_when_there_is_a_secret(push_server_factory):
    server = push_server_factory(
        {"publisher_secret": SECRET, "locations": [{"type": "status", "prefix": "/status/"}]}
    )
    publisher, reader = publisher_token(SECRET), status_token(SECRET)
    assert publisher != reader
    async with httpx.AsyncClient(base_url=server.url) as client:
        for headers, params in [
            ({}, {}),
            ({"authorization": "Bearer wrong"}, {}),
            ({"authorization": f"Basic {reader}"}, {}),
            ({}, {"token": publisher}),  # the publishing token never goes in a URL
            ({}, {"token": "wrong"}),
        ]:
            response = await client.get("/status/json", headers=headers, params=params)
            assert response.status_code == 403, (headers, params)
            assert "needs a valid token" in response.text
        for headers, params in [
            ({"authorization": f"Bearer {publisher}"}, {}),
            ({"authorization": f"bearer {reader}"}, {}),
            ({}, {"token": reader}),
        ]:
            response = await client.get("/status/metrics", headers=headers, params=params)
            assert response.status_code == 200, (headers, params)
        async with event_stream(client, f"/status/events?token={reader}") as sse:
            assert (await sse.event()).json["stores"]
        page = await client.get("/status/", params={"token": reader, "format": "html"})
        assert page.status_code == 200 and "new EventSource" in page.text


async def test_without_interval_there_is_no_events_stream(push_server_factory):
    server = push_server_factory(
        {"locations": [{"type": "status", "prefix": "/status/", "interval": 0}]}
    )
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/status/events")).status_code == 404
        page = await client.get("/status/", headers={"accept": "text/html"})
        assert page.status_code == 200 and "var eventsUrl = null;" in page.text


# -- Redis health ----------------------------------------------------------------------------


@pytest.mark.memory_store
async def test_redis_health_follows_the_redis_server(push_server_factory, redis_server_factory):
    redis = redis_server_factory()
    server = push_server_factory(
        {
            "store": {"shared": redis.store(), "local": {"type": "memory"}},
            "locations": [
                {"type": "publisher", "prefix": "/publisher/", "store": "shared"},
                {"type": "status", "prefix": "/status/"},
            ],
        }
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        up = await wait_status(client, lambda d: d["stores"]["shared"]["ok"])
        shared = up["stores"]["shared"]
        assert shared["type"] == "redis" and shared["channels"] is None
        assert shared["backend"]["address"] == f"redis://127.0.0.1:{redis.port}/0"
        assert up["stores"]["local"] == {**up["stores"]["local"], "ok": True, "type": "memory"}

        redis.stop()
        down = await wait_status(client, lambda d: not d["stores"]["shared"]["ok"])
        assert down["stores"]["shared"]["backend"]["error"]
        assert down["stores"]["local"]["ok"] is True
        metrics = parse_prometheus((await client.get("/status/metrics")).text)
        assert sample(metrics, "pushserver_backend_up", store="shared", type="redis") == 0
        assert sample(metrics, "pushserver_backend_up", store="local", type="memory") == 1
        refused = await client.post("/publisher/news", content=b"x")
        assert refused.status_code == 503
        after = await status(client)
        assert after["stores"]["shared"]["publish_errors"] == 1
        assert after["publish_errors"] == 1 and after["published"] == 0

        redis.start()  # the same port again
        back = await wait_status(client, lambda d: d["stores"]["shared"]["ok"], timeout=30)
        assert back["stores"]["shared"]["backend"]["reconnects"] >= 1
        metrics = parse_prometheus((await client.get("/status/metrics")).text)
        assert sample(metrics, "pushserver_backend_up", store="shared", type="redis") == 1
        assert sample(metrics, "pushserver_backend_reconnects_total", store="shared") >= 1


# -- JSON access logs ------------------------------------------------------------------------


async def test_json_logs_are_one_object_per_line(push_server_factory):
    server = push_server_factory(CONFIG, "--log-format", "json")
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        published = await publish(client, "logged", "hi")
        assert (await client.get("/subscriber/logged")).status_code == 200
        async with event_stream(client, "/subscriber/logged") as sse:
            opened = time.monotonic()  # the server answered: its request began before this
            await sse.event()
            held = time.monotonic() - opened  # ...and ends after this: the client closes next
        async with connect(ws_url(server, "/subscriber/logged,x")) as ws:
            await ws.recv()
        status_page = await client.get("/status/json")
        assert status_page.status_code == 200
        nowhere = await client.get("/nowhere")
        assert nowhere.status_code == 404
    server.wait_for_output(r'"path":"/nowhere"')
    elapsed = time.monotonic() - started
    lines = server.log.split("Quit the server with CONTROL-C.\n", 1)[1].splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger"} <= set(r) for r in records)
    assert any(r["logger"] == "pushserver.server" and "message" in r for r in records)
    access = [r for r in records if r["logger"] == "pushserver.access"]
    for record in access:
        assert record["level"] == "INFO"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        assert isinstance(record["duration"], float) and 0 <= record["duration"] <= elapsed
    by = {(r["method"], r["path"], r["transport"]): r for r in access}
    # Each request's fields exactly (docs/observability.md): a stream the client closed has
    # no status, and a body size only when the response declared one.
    expected = {
        ("POST", "/publisher/logged", "publisher"): {
            "status": 202, "bytes": len(published.content), "channel": "logged",
        },
        ("GET", "/subscriber/logged", "longpoll"): {"status": 200, "bytes": 2, "channel": "logged"},
        ("GET", "/subscriber/logged", "eventsource"): {
            "status": None, "bytes": None, "channel": "logged",
        },
        ("GET", "/subscriber/logged,x", "websocket"): {
            "status": 101, "bytes": None, "channel": "logged,x", "protocol": "ws",
        },
        ("GET", "/status/json", "status"): {
            "status": 200, "bytes": len(status_page.content), "channel": None,
        },
        ("GET", "/nowhere", None): {"status": 404, "bytes": len(nowhere.content), "channel": None},
    }  # fmt: skip
    assert len(access) == len(expected) and set(by) == set(expected)
    for (method, path, transport), fields in expected.items():
        record = by[method, path, transport]
        assert {k: v for k, v in record.items() if k not in ("time", "level", "duration")} == {
            "logger": "pushserver.access",
            "client": "127.0.0.1",
            "method": method,
            "path": path,
            "protocol": "1.1",
            "transport": transport,
            **fields,
        }
    # The stream's duration covers the time the client held it open (1% for clock slew:
    # the server measures wall-clock time).
    assert by["GET", "/subscriber/logged", "eventsource"]["duration"] >= held * 0.99
