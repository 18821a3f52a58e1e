"""CORS in Chromium: a page on an allowed origin reads cross-origin responses of a real
push server (a message, and an error after a preflight, with credentials); a page on
another origin cannot read them, and its WebSocket is refused.

The allowed page is served by the push server itself as ``http://localhost:<port>`` and
fetches ``http://127.0.0.1:<port>``: another origin for the browser. The other page comes
from a second server, ``http://127.0.0.1:<its port>``.
"""

from __future__ import annotations

import pytest

from pushserver.testing import free_port
from tests.conftest import about_transports

from .conftest import PUBLISHER, publish, subscriber

pytestmark = pytest.mark.browser

FETCH = """
async ([url, headers]) => {
    try {
        const response = await fetch(url, {credentials: 'include', headers});
        return {status: response.status, text: await response.text(),
                etag: response.headers.get('Etag')};
    } catch (error) {
        return {error: String(error)};
    }
}
"""

WEBSOCKET = """
(url) => new Promise((resolve) => {
    const socket = new WebSocket(url, ["pushserver.v1"]);
    socket.onmessage = (event) => { resolve('answered ' + event.data); socket.close(); };
    socket.onclose = (event) => resolve('closed ' + event.code);
})
"""


@pytest.fixture
def servers(start_server):
    port = free_port()
    allowed = f"http://localhost:{port}"
    push = start_server(
        {
            "locations": [
                PUBLISHER,
                subscriber("/cors/", allow_origin=[allowed], allow_credentials=True),
            ]
        },
        port=port,
    )
    other = start_server({"locations": [PUBLISHER, subscriber()]})
    return push, allowed, other


@about_transports("longpoll", "websocket")  # fetch() long-polls, and a WebSocket
def test_allowed_origin_reads_and_another_cannot(servers, page, new_page):
    push, allowed, other = servers
    publish(push, "news", "hello", content_type="text/plain")
    url = f"{push.url}/cors/news"
    ws_url = url.replace("http://", "ws://")

    page.goto(f"{allowed}/browser/page")
    assert page.evaluate("location.origin") == allowed
    read = page.evaluate(FETCH, [url, {}])
    assert read == {"status": 200, "text": "hello", "etag": "0"}
    # A non-safelisted header makes the browser send a preflight first; then the error
    # itself is readable.
    bad = page.evaluate(FETCH, [url, {"If-None-Match": "abc"}])
    assert bad["status"] == 400, bad
    assert bad["text"].startswith("400 Bad Request: If-None-Match is not an integer")
    # The retained message comes first on a new WebSocket.
    assert page.evaluate(WEBSOCKET, ws_url).endswith(
        "channel: news\ncontent-type: text/plain\n\nhello"
    )

    elsewhere = new_page()
    elsewhere.goto(f"{other.url}/browser/page")
    assert elsewhere.evaluate("location.origin") != allowed
    blocked = elsewhere.evaluate(FETCH, [url, {}])
    assert "error" in blocked and "Failed to fetch" in blocked["error"], blocked
    assert elsewhere.evaluate(WEBSOCKET, ws_url) == "closed 4403"

    assert "Traceback" not in push.log, push.log
