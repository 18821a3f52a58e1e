"""``send_update`` with ``content_type=`` (HTML fragments, Turbo stream elements) and
``event=`` (the SSE event name, ``X-EventSource-Event``), against real servers: what event
streams and long polls then carry, on the HTTP path and straight to Redis; bad names refused
before any signal, on send_update and on the publisher location."""

from __future__ import annotations

import socket

import anyio
import httpx
import pytest
from django.template import engines
from django.test import override_settings

from pushserver.message import check_event_name, event_name_from_header
from pushserver.utils import updates
from tests.project.helpers import push_config
from tests.transports.streams import event_stream

from .test_updates import client_settings

TURBO = (
    '<turbo-stream action="append" target="log">'
    "<template><li>{{ text }}</li></template></turbo-stream>"
)


def render(source: str, **context) -> str:
    """A ``render_to_string``-like result (a SafeString) from Django's template engine."""
    return engines["django"].from_string(source).render(context)


async def read_back(server_url: str, channel: str, count: int) -> tuple[list, list]:
    """The channel's retained messages as an event stream's events and as long polls."""
    async with httpx.AsyncClient(base_url=server_url, timeout=10) as client:
        with anyio.fail_after(20):
            async with event_stream(client, f"/subscriber/{channel}") as stream:
                events = await stream.events(count)
            polls, headers = [], {}
            for _ in range(count):
                response = await client.get(f"/subscriber/{channel}", headers=headers)
                assert response.status_code == 200, response.text
                polls.append(response)
                headers = {
                    "if-modified-since": response.headers["last-modified"],
                    "if-none-match": response.headers["etag"],
                }
    return events, polls


@pytest.mark.anyio
async def test_html_and_turbo_stream_bodies_with_event_names(push_server, recorded):
    fragment = render("<p>Hello {{ name }} &amp; co</p>\n<p>two lines</p>", name="<Ann>")
    turbo = render(TURBO, text="née")
    with override_settings(PUSH_SERVER=client_settings(push_server.host)):
        await updates.asend_update("page", fragment, content_type="text/html", event="greeting")
        updates.send_update("page", turbo, content_type="text/vnd.turbo-stream.html")
        updates.send_update("page", b"\x00\xffraw", content_type="application/x-raw")
        updates.send_update("page", {"type": "json"}, event="née update")
    events, polls = await read_back(push_server.url, "page", 4)

    assert [(e.event, e.data) for e in events] == [
        ("greeting", "<p>Hello &lt;Ann&gt; &amp; co</p>\n<p>two lines</p>"),
        (None, TURBO.replace("{{ text }}", "née")),
        (None, "\x00\ufffdraw"),  # not UTF-8: event streams carry text
        ("née update", '{"type": "json"}'),
    ]
    assert [p.headers["content-type"] for p in polls] == [
        "text/html; charset=utf-8",
        "text/vnd.turbo-stream.html; charset=utf-8",
        "application/x-raw",
        "application/json; charset=utf-8",
    ]
    assert polls[0].text == "<p>Hello &lt;Ann&gt; &amp; co</p>\n<p>two lines</p>"
    assert polls[2].content == b"\x00\xffraw"
    # Long polls name the event in a header (UTF-8 bytes, as published).
    assert polls[0].headers["x-eventsource-event"] == "greeting"
    assert dict(polls[3].headers.raw)[b"x-eventsource-event"] == "née update".encode()
    assert "x-eventsource-event" not in polls[1].headers
    # The signals say what was sent.
    sent = [(kw["content_type"], kw["event"]) for kind, _, kw in recorded if kind == "pre"]
    assert sent == [
        ("text/html; charset=utf-8", "greeting"),
        ("text/vnd.turbo-stream.html; charset=utf-8", None),
        ("application/x-raw", None),
        ("application/json; charset=utf-8", "née update"),
    ]


@pytest.mark.anyio
async def test_straight_to_redis_keeps_content_type_and_event(push_server_factory, redis_server):
    store = redis_server.store()
    server = push_server_factory(push_config(store))
    settings = {**push_config(store), "publish_via": "backend"}
    with override_settings(PUSH_SERVER=settings):
        await updates.asend_update("r", "<b>hi</b>", content_type="text/html", event="tick")
    events, polls = await read_back(server.url, "r", 1)
    assert (events[0].event, events[0].data) == ("tick", "<b>hi</b>")
    assert polls[0].headers["content-type"] == "text/html; charset=utf-8"
    assert polls[0].headers["x-eventsource-event"] == "tick"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"event": "two\nlines"}, ValueError),
        ({"event": "cr\r"}, ValueError),
        ({"event": ""}, ValueError),
        ({"event": "tab\there"}, ValueError),
        ({"event": 3}, TypeError),
        ({"content_type": "text/html\r\nX-Forged: 1"}, ValueError),
        ({"content_type": " "}, ValueError),
        ({"content_type": "text/html", "data": {"not": "a str"}}, TypeError),
    ],
)
def test_bad_arguments_raise_before_any_signal(push_server, recorded, kwargs, error):
    data = kwargs.pop("data", "<p>x</p>")
    with override_settings(PUSH_SERVER=client_settings(push_server.host)), pytest.raises(error):
        updates.send_update("bad", data, ignore_errors=True, **kwargs)
    assert recorded == []
    assert httpx.get(f"{push_server.url}/publisher/bad").status_code == 404  # nothing sent


def test_event_names():
    assert check_event_name("née update: 2") == "née update: 2"
    # A header's bytes are read as UTF-8 when they are UTF-8, else kept as Latin-1.
    assert event_name_from_header("née".encode().decode("latin-1")) == "née"
    assert event_name_from_header("n\xe9e") == "n\xe9e"
    assert event_name_from_header("") is None
    assert event_name_from_header(None) is None
    with pytest.raises(ValueError, match="control characters"):
        event_name_from_header("a\x01b")


def test_publisher_answers_400_to_a_bad_event_header(push_server):
    """Control characters cannot reach an ``event:`` line: refused with 400, nothing stored."""
    host, port = push_server.host.rsplit(":", 1)
    request = (
        b"POST /publisher/hdr HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"X-EventSource-Event: a\x01b\r\nConnection: close\r\n\r\nhi"
    )
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert httpx.get(f"{push_server.url}/publisher/hdr").status_code == 404
