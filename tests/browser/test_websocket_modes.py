"""The WebSocket framings in Chromium, with no adapter code: ``new WebSocket(url)`` gets the
published bodies alone (``JSON.parse(event.data)`` works, binary stays binary), a close code
after a delete; a refusal is readable with a subprotocol asked for, which a browser requires
echoed."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import about_transports

from .conftest import PUBLISHER, publish, subscriber

pytestmark = [pytest.mark.browser, about_transports("websocket")]

PLAIN = """
([url, count]) => new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    socket.binaryType = 'arraybuffer';
    const got = [];
    socket.onmessage = (event) => {
        got.push(typeof event.data === 'string'
            ? JSON.parse(event.data)
            : Array.from(new Uint8Array(event.data)));
        if (got.length === count) resolve({got, protocol: socket.protocol});
    };
    socket.onclose = (event) => reject(new Error('closed ' + event.code));
    setTimeout(() => reject(new Error('timed out')), 10000);
})
"""

CLOSE = """
([url, protocols, deleteUrl]) => new Promise((resolve, reject) => {
    const socket = new WebSocket(url, protocols);
    socket.onopen = () => { if (deleteUrl) fetch(deleteUrl, {method: 'DELETE'}); };
    socket.onclose = (event) => resolve([socket.protocol, event.code, event.reason]);
    setTimeout(() => reject(new Error('timed out')), 10000);
})
"""


def test_plain_and_nchan_modes_in_chromium(start_server, page):
    strict = subscriber("/strict/", create_on_get=False)
    server = start_server({"locations": [PUBLISHER, subscriber(), strict]})
    publish(server, "plain", {"n": 1})
    publish(server, "plain", b"\x00\xff", content_type="application/octet-stream")
    ws = server.url.replace("http://", "ws://")
    page.goto(f"{server.url}/browser/page")
    result = page.evaluate(PLAIN, [f"{ws}/subscriber/plain", 2])
    assert result == {"got": [{"n": 1}, [0, 255]], "protocol": ""}

    assert httpx.put(f"{server.url}/publisher/doomed").status_code == 200
    # Same origin: the page may DELETE the channel itself once the socket is open.
    closed = page.evaluate(CLOSE, [f"{ws}/strict/doomed", [], f"{server.url}/publisher/doomed"])
    assert closed == ["", 4410, "the channel was deleted"]
    refused = page.evaluate(CLOSE, [f"{ws}/strict/missing", ["ws+meta.nchan"], None])
    assert refused == ["ws+meta.nchan", 4404, "no such channel: missing"]
