"""htmx 4 and Turbo 8, installed from npm by the tests, against a real push server with no
adapter code: what docs/htmx.md and docs/turbo.md show.

- htmx's SSE extension (``hx-sse:connect``) swaps unnamed HTML messages into its element,
  out-of-band fragments by id, and turns a named event (``X-EventSource-Event``) into a DOM
  event that triggers a request (htmx 4 swaps no named event itself). htmx 4 fetches
  same-origin only by default, so its pages are served by the push server's own origin.
- htmx's WS extension (``hx-ws:connect``, no subprotocol: plain frames, the body alone)
  swaps HTML bodies, and JSON bodies with ``content`` / ``target``.
- Turbo's ``<turbo-stream-source>`` applies ``<turbo-stream>`` elements from an event stream
  on another origin (an ``EventSource``, so CORS without credentials) and from a WebSocket
  (plain frames).
"""

from __future__ import annotations

import pytest

from tests.conftest import about_transports, transport_params

from .conftest import WAIT, publish, start_cross_origin, wait_subscribers

pytestmark = pytest.mark.browser

HTML = "text/html; charset=utf-8"
TURBO = "text/vnd.turbo-stream.html; charset=utf-8"


@pytest.fixture(scope="module")
def server(start_module_server):
    """One server for the module; pages from its other origin (``start_cross_origin``)."""
    return start_cross_origin(start_module_server)


def texts(page, selector):
    return page.eval_on_selector_all(selector, "nodes => nodes.map(n => n.textContent)")


def wait_count(page, selector, count):
    page.wait_for_function(
        "([s, n]) => document.querySelectorAll(s).length >= n", arg=[selector, count], timeout=WAIT
    )


@about_transports("eventsource")
def test_htmx_sse_swaps_fragments_and_reacts_to_named_events(npm, page, server):
    push, _ = server
    page.goto(f"{push.url}/browser/lib/htmx?sse=/subscriber/htmx-sse")
    wait_subscribers(push, "htmx-sse", 1)
    for n in range(3):
        publish(push, "htmx-sse", f"<li>item {n}</li>", HTML)
    # Out of band: replaces #score elsewhere on the page, nothing appended to the feed.
    publish(push, "htmx-sse", '<p id="score" hx-swap-oob="true">42</p>', HTML)
    # A named event: a DOM event on the element, which triggers #fresh's hx-get.
    publish(push, "htmx-sse", "", "text/plain", event="refresh")
    publish(push, "htmx-sse", "<li>item 3</li>", HTML)
    wait_count(page, "#feed li", 4)
    page.wait_for_selector("#fresh .fragment", timeout=WAIT)

    assert texts(page, "#feed li") == ["item 0", "item 1", "item 2", "item 3"]
    assert page.text_content("#score") == "42"
    assert page.text_content("#fresh .fragment") == "fetched"
    assert page.errors == []


@pytest.mark.parametrize(
    "scheme", transport_params("http", "ws", served={"http": "eventsource", "ws": "websocket"})
)
def test_turbo_stream_source_cross_origin(npm, page, server, scheme):
    """``http://``: Turbo opens an EventSource; ``ws://``: a plain WebSocket."""
    push, site = server
    channel = f"turbo-{scheme}"
    src = f"{push.url}/cors/{channel}".replace("http", scheme, 1)
    page.goto(f"{site}/browser/lib/turbo?src={src}")
    wait_subscribers(push, channel, 1)
    for n in range(3):
        publish(
            push,
            channel,
            f'<turbo-stream action="append" target="log"><template><li>row {n}</li>'
            "</template></turbo-stream>",
            TURBO,
        )
    publish(
        push,
        channel,
        '<turbo-stream action="update" target="status"><template>done</template></turbo-stream>',
        TURBO,
    )
    page.wait_for_function(
        "() => document.getElementById('status').textContent === 'done'", timeout=WAIT
    )
    assert texts(page, "#log li") == ["row 0", "row 1", "row 2"]
    assert page.errors == []


@about_transports("websocket")
def test_htmx_ws_swaps_plain_frames_cross_origin(npm, page, server):
    """htmx's WS extension, no subprotocol: each frame is the published body alone, which
    htmx swaps as HTML; a JSON body with ``content`` (and ``target``) is swapped as well."""
    push, site = server
    url = f"{push.url}/cors/htmx-ws".replace("http", "ws")
    page.goto(f"{site}/browser/lib/htmx?ws={url}")
    wait_subscribers(push, "htmx-ws", 1)
    for n in range(3):
        publish(push, "htmx-ws", f"<li>item {n}</li>", HTML)
    publish(push, "htmx-ws", {"content": "<span>7</span>", "target": "#score", "swap": "innerHTML"})
    wait_count(page, "#feed li", 3)
    page.wait_for_function(
        "() => document.getElementById('score').textContent === '7'", timeout=WAIT
    )
    assert texts(page, "#feed li") == ["item 0", "item 1", "item 2"]
    assert page.errors == []
