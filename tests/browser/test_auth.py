"""Signed channel URLs in Chromium: a page rendered with ``{% channel_url id signed=True %}``
receives updates on every transport; a page with the bare (guessed) URL is refused."""

from __future__ import annotations

import pytest

from tests.conftest import about_transports, transport_params

from .conftest import PUBLISHER, flush_events, publish, subscriber, wait_problem, wait_received

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("mode", transport_params("longpoll", "eventsource", "websocket"))
def test_signed_channel_url_page(new_page, start_server, mode):
    server = start_server(
        {"transport": mode, "locations": [PUBLISHER, subscriber("/private/", signed=True)]}
    )
    signed = new_page()
    guessed = new_page()
    requested = []
    guessed.on("request", lambda request: requested.append(request.url))
    guessed.on("websocket", lambda ws: requested.append(ws.url))
    signed.goto(f"{server.url}/browser/page?channel=secret&signed=1")
    guessed.goto(f"{server.url}/browser/page?channel=secret")

    problems = wait_problem(guessed, "request")
    detail = next(p["detail"] for p in problems if p["kind"] == "request")
    assert "403" in detail or "4403" in detail, problems
    assert any("/private/secret" in url and "sig=" not in url for url in requested)

    publish(server, "secret", {"type": "test", "n": 1})
    assert wait_received(signed, 1) == [{"channel": "main", "data": {"type": "test", "n": 1}}]
    # The signature stays on the URL across requests: the next message arrives too.
    publish(server, "secret", {"type": "test", "n": 2})
    assert [m["data"]["n"] for m in wait_received(signed, 2)] == [1, 2]
    assert signed.evaluate("window.problems") == []
    flush_events(guessed)
    assert guessed.evaluate("window.received") == []
    assert signed.errors == guessed.errors == []


@about_transports("websocket", "longpoll")
def test_signed_url_survives_the_fallback_to_long_polling(page, start_server):
    """The page asks for WebSocket, the location refuses it (4403): updates.js falls back to
    long polling on the same URL, signature included, and receives."""
    location = subscriber("/private/", signed=True, transports=["longpoll"])
    server = start_server({"transport": "websocket", "locations": [PUBLISHER, location]})
    page.goto(f"{server.url}/browser/page?channel=fallback&signed=1")
    problems = wait_problem(page, "transport")
    assert "using long polling" in problems[0]["detail"]
    publish(server, "fallback", {"type": "test", "n": 1})
    assert wait_received(page, 1) == [{"channel": "main", "data": {"type": "test", "n": 1}}]
    assert [p["kind"] for p in page.evaluate("window.problems")] == ["transport"]
