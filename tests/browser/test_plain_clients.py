"""Clients with no pushserver code, cross-origin, in Chromium: a plain ``new WebSocket(url)``
and ``new EventSource(url)`` get the published JSON body alone, and nchan's own JavaScript
client, NchanSubscriber (npm ``nchan``), receives over its websocket (``ws+meta.nchan``) and
eventsource transports, in order, resuming after the server restarts (as a plain
EventSource does by itself). A plain WebSocket that resumes from a position the buffer no
longer holds is closed with 4416 (the gap). (NchanSubscriber keeps the first transport the
browser has; it does not fall back when the server refuses one, so there is no such test.)"""

from __future__ import annotations

import json

import pytest

from pushserver.testing import free_port
from tests.conftest import about_transports, transport_params

from .conftest import (
    WAIT,
    channel_info,
    cors_config,
    publish,
    start_cross_origin,
    wait_subscribers,
)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(start_module_server):
    return start_cross_origin(start_module_server, {"type": "memory", "max_messages": 3})


def wait_received(page, count):
    page.wait_for_function("n => window.received.length >= n", arg=count, timeout=WAIT)
    return page.evaluate("window.received")


@pytest.mark.parametrize(
    "client",
    transport_params(
        "plainWebSocket", "plainEventSource",
        served={"plainWebSocket": "websocket", "plainEventSource": "eventsource"},
    ),
)
def test_plain_pages_get_the_bare_json_body(page, server, client):
    push, site = server
    channel = f"bare-{client}"
    url = f"{push.url}/cors/{channel}"
    page.goto(f"{site}/browser/lib/plain")
    page.evaluate(
        "([client, url]) => window[client](url)",
        [client, url.replace("http", "ws") if client == "plainWebSocket" else url],
    )
    wait_subscribers(push, channel, 1)
    for n in range(3):
        publish(push, channel, {"type": "test", "n": n})
    received = wait_received(page, 3)
    assert [json.loads(item["data"])["n"] for item in received] == [0, 1, 2]
    if client == "plainEventSource":
        assert received[-1]["id"] == channel_info(push, channel)["last_message_id"]
    assert page.errors == []


@about_transports("websocket")
def test_plain_websocket_resuming_past_the_buffer_is_closed_4416(page, server):
    push, site = server
    channel = "bare-gap"
    publish(push, channel, {"n": 0})
    old = channel_info(push, channel)["last_message_id"]
    for n in range(1, 5):  # the buffer keeps 2, 3 and 4
        publish(push, channel, {"n": n})
    page.goto(f"{site}/browser/lib/plain")
    url = f"{push.url}/cors/{channel}?last_event_id={old}".replace("http", "ws")
    page.evaluate("url => window.plainWebSocket(url)", url)
    page.wait_for_function("() => window.closes.length > 0", timeout=WAIT)
    assert page.evaluate("window.closes") == [4416]
    assert page.evaluate("window.received") == []


@pytest.mark.parametrize(
    ("client", "transport"),
    [
        pytest.param("nchan", "websocket", marks=about_transports("websocket")),
        pytest.param("nchan", "eventsource", marks=about_transports("eventsource")),
        pytest.param("plainEventSource", None, marks=about_transports("eventsource")),
    ],
)
def test_in_order_and_after_a_restart(npm, page, start_server, redis_server, client, transport):
    """nchan's client over each of its transports, and a plain EventSource (which resumes
    by itself with Last-Event-ID); a plain WebSocket has no id to resume from."""
    port = free_port()
    site = f"http://localhost:{port}"
    settings = cors_config(site, redis_server.store())
    push = start_server(settings, port=port)
    other = start_server(settings)  # same store: publishes while the page's server is down
    channel = f"restart-{client}-{transport}"
    page.goto(f"{site}/browser/lib/plain?nchan=1")
    page.evaluate(
        "([client, url, transport]) => window[client](url, transport)",
        [client, f"{push.url}/cors/{channel}", transport],
    )
    wait_subscribers(push, channel, 1)
    for n in range(3):
        publish(other, channel, {"n": n})
    received = wait_received(page, 3)
    assert [json.loads(item["data"])["n"] for item in received] == [0, 1, 2]
    assert received[-1]["id"] == channel_info(other, channel)["last_message_id"]

    push.stop()
    publish(other, channel, {"n": 3})
    push = start_server(settings, port=port)
    publish(other, channel, {"n": 4})
    received = wait_received(page, 5)
    assert [json.loads(item["data"])["n"] for item in received] == [0, 1, 2, 3, 4]
    assert page.errors == []
