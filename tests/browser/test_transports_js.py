"""``updates.js`` in each mode (long-poll, server-sent events, WebSocket) in Chromium against
a real ``runpushserver``: one API, the mode picked by ``PUSH_SERVER['transport']`` through
``{% pushserver_script %}`` or by the page, resuming after reconnects, and falling back to
long polling where a streaming transport is refused.

Resuming without loss is proven with a Redis store shared by two push servers: the page's
server is stopped (its clients see the stream end, or close code 1001), messages are
published through the other one while the page is certainly disconnected, then the page's
server starts again on the same port and the page must get exactly the missed messages.
(The memory backend restarts empty, so it could only show recovery, not resume.)
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from pushserver.testing import free_port
from tests.conftest import about_transports, transport_params

from .conftest import (
    PUBLISHER,
    WAIT,
    channel_info,
    flush_events,
    publish,
    restart_missing_two,
    subscriber,
    wait_problem,
    wait_received,
    wait_subscribers,
)

pytestmark = pytest.mark.browser

MODES = ["longpoll", "eventsource", "websocket"]
STREAMING = ["eventsource", "websocket"]
#: How each mode shows up in Chromium: XHRs, EventSource requests, WebSocket connections.
KIND = {"longpoll": "xhr", "eventsource": "eventsource", "websocket": "websocket"}


def config(transport="longpoll", **extra):
    return {"transport": transport, "locations": [PUBLISHER, subscriber()], **extra}


def watch_connections(page):
    """``[(kind, url, request or WebSocket)]`` of every subscriber connection the page opens,
    in order."""
    seen = []

    def request(request):
        if "/subscriber/" in request.url and request.resource_type in ("xhr", "eventsource"):
            seen.append((request.resource_type, request.url, request))

    page.on("request", request)
    page.on("websocket", lambda ws: seen.append(("websocket", ws.url, ws)))
    return seen


def last_event_id(url):
    return parse_qs(urlsplit(url).query).get("last_event_id", [None])[0]


def positions(compound):
    """The per-channel ids of a (compound) last event id, brackets dropped."""
    return [part.strip("[]") for part in compound.split(",")]


def fast_retries(page):
    """Shorter waits between attempts, so that a restart test takes little longer than the
    restart (EventSource still waits the server's 3 s ``retry`` on its own reconnects)."""
    page.evaluate(
        "$.extend($.updates.options, {retryDelay: 100, maxRetryDelay: 400, minPollInterval: 100})"
    )


@pytest.mark.parametrize("mode", transport_params(*MODES))
def test_each_mode_delivers_in_order_and_dispatches_by_type(page, start_server, mode):
    """The page has no JavaScript of its own for the mode: ``{% pushserver_script %}``
    carries ``PUSH_SERVER['transport']``, and Chromium shows which connections it made."""
    # Pings every 0.2 s: WebSocket ping frames (and event-stream comments) must go unnoticed.
    locations = [PUBLISHER, subscriber(ping_interval=0.2)]
    server = start_server({"transport": mode, "locations": locations})
    connections = watch_connections(page)
    page.goto(f"{server.url}/browser/page?channel=ordered-{mode}")  # subscribes 'main'
    assert page.evaluate("$.updates.transport") == mode
    page.evaluate("""() => {
        $.updates.registerProcessor('main', 'test', function (data) {
            if (data.n === 3) { throw new Error('processor failed on 3'); }
        });
        $.updates.registerProcessor('main', 'other', window.record('other'));
        $.updates.registerProcessor('elsewhere', 'test', window.record('wrong channel'));
    }""")
    wait_subscribers(server, f"ordered-{mode}", 1)
    channel = f"ordered-{mode}"
    publish(server, channel, {"type": "test", "n": 0})
    publish(server, channel, {"type": "other", "n": 1})
    # No textual content type: a binary WebSocket frame, still JSON to the page.
    publish(server, channel, '{"type": "test", "n": 2}', "application/octet-stream")
    publish(server, channel, {"type": "test", "n": 3})
    publish(server, channel, "not JSON", "text/plain")
    publish(server, channel, [1, 2, 3])
    publish(server, channel, {"type": "nobody", "n": 4})
    for n in range(5, 15):
        publish(server, channel, {"type": "test", "n": n})
    received = wait_received(page, 14)

    assert [(item["channel"], item["data"]["n"]) for item in received] == [
        ("main", 0),
        ("other", 1),
        ("main", 2),
        ("main", 3),  # recorded before the next processor threw
        *(("main", n) for n in range(5, 15)),
    ]
    problems = page.evaluate("window.problems")
    assert [(p["kind"], p["detail"]) for p in problems][:1] == [
        ("processor", "Error: processor failed on 3")
    ]
    assert [p["kind"] for p in problems] == ["processor", "parse", "format"]
    flush_events(page)
    kinds = {kind for kind, _, _ in connections}
    assert kinds == {KIND[mode]}
    if mode != "longpoll":
        assert len(connections) == 1  # one stream carried everything
    if mode == "websocket":
        ws = connections[0][2]
        ws.wait_for_event("framereceived", lambda frame: frame == '{"type":"ping"}', timeout=WAIT)
        assert len(page.evaluate("window.received")) == 14
        assert len(page.evaluate("window.problems")) == 3
    assert page.errors == []


@pytest.mark.parametrize("mode", transport_params(*STREAMING))
def test_unsubscribe_stops_delivery_and_resubscribe_resumes(page, start_server, mode):
    """Set by the page this time; a new connection resumes with ``?last_event_id=``, a
    compound one for a URL naming two channels."""
    server = start_server(config())
    connections = watch_connections(page)
    page.goto(f"{server.url}/browser/page")
    page.evaluate(
        """mode => {
        $.updates.transport = mode;
        $.updates.registerProcessor('a', 'test', window.record('a'));
        $.updates.registerProcessor('b', 'test', window.record('b'));
        $.updates.subscribe({'a': '/subscriber/chan-a', 'b': '/subscriber/chan-b,chan-c'});
    }""",
        mode,
    )
    for channel in ("chan-a", "chan-b", "chan-c"):
        wait_subscribers(server, channel, 1)
    publish(server, "chan-a", {"type": "test", "n": 1})
    publish(server, "chan-c", {"type": "test", "n": 2})
    received = wait_received(page, 2)
    assert sorted((item["channel"], item["data"]["n"]) for item in received) == [
        ("a", 1),
        ("b", 2),
    ]
    a_id = channel_info(server, "chan-a")["last_message_id"]
    c_id = channel_info(server, "chan-c")["last_message_id"]

    assert page.evaluate("$.updates.unsubscribe('a')") is True
    assert page.evaluate("$.updates.isSubscribed('a')") is False
    wait_subscribers(server, "chan-a", 0)  # its connection was closed
    publish(server, "chan-a", {"type": "test", "n": 3})
    publish(server, "chan-b", {"type": "test", "n": 4})
    received = wait_received(page, 3)
    assert (received[2]["channel"], received[2]["data"]["n"]) == ("b", 4)
    b_id = channel_info(server, "chan-b")["last_message_id"]
    assert page.evaluate("$.updates.unsubscribe('b')") is True
    wait_subscribers(server, "chan-b", 0)
    publish(server, "chan-c", {"type": "test", "n": 5})

    page.evaluate(
        "$.updates.subscribe({'a': '/subscriber/chan-a', 'b': '/subscriber/chan-b,chan-c'})"
    )
    received = wait_received(page, 5)
    assert sorted((item["channel"], item["data"]["n"]) for item in received[3:]) == [
        ("a", 3),
        ("b", 5),
    ]
    for channel in ("chan-a", "chan-b", "chan-c"):
        wait_subscribers(server, channel, 1)
    flush_events(page)
    assert len(page.evaluate("window.received")) == 5  # nothing twice
    assert page.evaluate("window.problems") == []
    assert {kind for kind, _, _ in connections} == {KIND[mode]}
    to_a = [last_event_id(url) for _, url, _ in connections if "/chan-a" in url]
    to_b = [last_event_id(url) for _, url, _ in connections if "/chan-b" in url]
    assert to_a == [None, a_id]
    assert to_b[0] is None and positions(to_b[1]) == [b_id, c_id]


@pytest.mark.parametrize("mode", transport_params(*MODES))
def test_resumes_without_loss_after_the_push_server_restarts(
    page, start_server, redis_server, mode
):
    settings = config(mode, store=redis_server.store())
    server = start_server(settings)
    other = start_server(settings)  # same store: publishes while the page's server is down
    channel = f"restart-{mode}"
    page.goto(f"{server.url}/browser/page?channel={channel}")
    fast_retries(page)
    wait_subscribers(server, channel, 1)
    publish(other, channel, {"type": "test", "n": 1})
    wait_received(page, 1)

    # SIGTERM: streams end (WebSocket: 1001) and waiting polls get 304; then nothing listens.
    server = restart_missing_two(page, start_server, server, other, settings, channel)

    publish(other, channel, {"type": "test", "n": 4})
    received = wait_received(page, 4)
    assert [item["data"]["n"] for item in received] == [1, 2, 3, 4]
    assert {p["kind"] for p in page.evaluate("window.problems")} == {"request"}
    assert page.errors == []


@pytest.mark.parametrize("mode", transport_params(*STREAMING))
def test_falls_back_to_long_polling_where_the_server_refuses_the_mode(
    page, start_server, redis_server, mode
):
    """The page's server comes back as ``runpushserver --transport longpoll``: the channel
    goes on by long polling from the last id it had, losing and repeating nothing."""
    settings = config(mode, store=redis_server.store())
    port = free_port()
    server = start_server(settings, port=port)
    other = start_server(settings)
    channel = f"switch-{mode}"
    connections = watch_connections(page)
    page.goto(f"{server.url}/browser/page?channel={channel}")
    fast_retries(page)
    wait_subscribers(server, channel, 1)
    publish(other, channel, {"type": "test", "n": 1})
    first_id = channel_info(other, channel)["last_message_id"]
    wait_received(page, 1)

    server.stop()
    publish(other, channel, {"type": "test", "n": 2})
    server = start_server(settings, port=port, args=["--transport", "longpoll"])
    received = wait_received(page, 2)
    assert [item["data"]["n"] for item in received] == [1, 2]
    publish(other, channel, {"type": "test", "n": 3})
    received = wait_received(page, 3)
    assert [item["data"]["n"] for item in received] == [1, 2, 3]

    problems = page.evaluate("window.problems")
    assert [p["kind"] for p in problems if p["kind"] != "request"] == ["transport"]
    flush_events(page)
    polls = [request for kind, _, request in connections if kind == "xhr"]
    # The first long poll starts exactly after message 1: Last-Modified / Etag from its id.
    seconds, tag = first_id.split(":")
    headers = polls[0].headers
    assert parsedate_to_datetime(headers["if-modified-since"]).timestamp() == int(seconds)
    assert headers["if-none-match"] == tag
    assert connections[0][0] == KIND[mode]
    assert page.errors == []


@pytest.mark.parametrize("mode", transport_params(*STREAMING))
def test_named_events_gaps_and_deletion(page, start_server, mode):
    server = start_server(config(store={"type": "memory", "max_messages": 2}))
    page.goto(f"{server.url}/browser/page")
    page.evaluate(
        """mode => {
        $.updates.transport = mode;
        $.updates.options.eventNames = ['tick'];  // for EventSource; WebSocket needs no list
        $.updates.registerProcessor('main', 'test', window.record('main'));
        $.updates.subscribe({'main': '/subscriber/gappy'});
    }""",
        mode,
    )
    wait_subscribers(server, "gappy", 1)
    named = httpx.post(
        f"{server.url}/publisher/gappy",
        json={"type": "test", "n": 0},
        headers={"x-eventsource-event": "tick"},
    )
    assert named.status_code == 201
    publish(server, "gappy", {"type": "test", "n": 1})
    wait_received(page, 2)
    page.evaluate("$.updates.unsubscribe('main')")
    wait_subscribers(server, "gappy", 0)
    for n in range(2, 6):  # the buffer keeps 4 and 5
        publish(server, "gappy", {"type": "test", "n": n})

    page.evaluate("$.updates.subscribe({'main': '/subscriber/gappy'})")
    received = wait_received(page, 4)
    assert [item["data"]["n"] for item in received] == [0, 1, 4, 5]
    problems = page.evaluate("window.problems")
    assert [p["kind"] for p in problems] == ["gap"]
    assert "continuing with" in problems[0]["detail"]

    assert httpx.delete(f"{server.url}/publisher/gappy").status_code == 200
    problems = wait_problem(page, "deleted")
    assert [p["kind"] for p in problems] == ["gap", "deleted"]
    page.wait_for_function("() => !$.updates.isSubscribed('main')", timeout=WAIT)
    assert page.errors == []


@about_transports("longpoll", "eventsource", "websocket")
def test_a_channel_keeps_its_position_across_transports(page, start_server):
    """Unsubscribed, then subscribed again under another ``$.updates.transport``: each
    transport goes on exactly after the last message of the one before."""
    server = start_server(config())
    connections = watch_connections(page)
    page.goto(f"{server.url}/browser/page")
    page.evaluate("""() => {
        $.updates.registerProcessor('main', 'test', window.record('main'));
        $.updates.subscribe({main: '/subscriber/switching'});
    }""")
    ids = []
    for n, mode in enumerate(["websocket", "eventsource", "longpoll", "websocket"], start=1):
        publish(server, "switching", {"type": "test", "n": n})
        ids.append(channel_info(server, "switching")["last_message_id"])
        wait_received(page, n)
        page.evaluate(
            """mode => {
            $.updates.unsubscribe('main');
            $.updates.transport = mode;
            $.updates.subscribe({main: '/subscriber/switching'});
        }""",
            mode,
        )
    publish(server, "switching", {"type": "test", "n": 5})
    received = wait_received(page, 5)
    assert [item["data"]["n"] for item in received] == [1, 2, 3, 4, 5]
    wait_subscribers(server, "switching", 1)
    flush_events(page)
    assert len(page.evaluate("window.received")) == 5
    assert page.evaluate("window.problems") == []

    def position(kind, url, request):
        if kind != "xhr":
            return last_event_id(url)
        seconds = parsedate_to_datetime(request.headers["if-modified-since"]).timestamp()
        return f"{int(seconds)}:{request.headers['if-none-match']}"

    # The first connection of each transport in turn, and where it started.
    firsts = []
    for kind, url, request in connections:
        if not firsts or firsts[-1][0] != kind:
            firsts.append((kind, position(kind, url, request)))
    assert firsts == [
        ("xhr", "0:0"),  # the epoch and etag 0: from the start
        ("websocket", ids[0]),
        ("eventsource", ids[1]),
        ("xhr", ids[2]),
        ("websocket", ids[3]),
    ]
