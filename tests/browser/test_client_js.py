"""``pushserver.js`` / ``pushserver.mjs``, the dependency-free client, in Chromium against
real push servers, cross-origin (pages from ``http://localhost:<port>``, channels from
``http://127.0.0.1:<port>``), for each transport: delivery in order with several channels
and dynamic subscribe / unsubscribe, deletion, gaps after falling behind the buffer with
resume across a page reload, resume after the server restarts, fallback when the server
refuses a transport."""

from __future__ import annotations

import itertools

import httpx
import pytest

from pushserver.testing import free_port
from tests.conftest import about_transports, transport_params

from .conftest import WAIT, cors_config, publish, start_cross_origin, wait_subscribers

pytestmark = pytest.mark.browser

TRANSPORTS = ["websocket", "eventsource", "longpoll"]


@pytest.fixture(scope="module")
def server(start_module_server):
    return start_cross_origin(start_module_server, {"type": "memory", "max_messages": 3})


def wait_for(page, expression, count):
    page.wait_for_function(f"n => {expression}.length >= n", arg=count, timeout=WAIT)
    return page.evaluate(expression)


def start(page, url, **options):
    return page.evaluate("([url, options]) => window.start(url, options)", [url, options])


@pytest.mark.parametrize(
    ("transport", "module"),
    [
        pytest.param(transport, module, marks=about_transports(transport))
        for transport, module in [
            ("websocket", False), ("eventsource", False), ("longpoll", False), ("websocket", True)
        ]
    ],
)
def test_delivery_in_order_several_channels_subscribe_unsubscribe_delete(
    page, server, transport, module
):
    push, site = server
    tag = f"{transport}-{int(module)}"
    a, b, c = f"a-{tag}", f"b-{tag}", f"c-{tag}"
    page.goto(f"{site}/browser/lib/client" + ("?module=1" if module else ""))
    if module:
        page.wait_for_function("() => window.esm !== undefined", timeout=WAIT)
        assert page.evaluate("window.esm.same") is True
    # An EventSource gets named events only for the names it listens to.
    url = f"{push.url}/cors/{a},{b}"
    start(page, url, transport=transport, withCredentials=True, events=["fragment"])
    wait_subscribers(push, a, 1)
    wait_subscribers(push, b, 1)
    publish(push, a, {"n": 1})
    publish(push, b, "<p>two</p>", "text/html", event="fragment")
    publish(push, a, {"n": 3})
    received = wait_for(page, "window.received", 3)
    expected = [(a, '{"n": 1}'), (b, "<p>two</p>"), (a, '{"n": 3}')]
    got = [(m["channel"], m["text"]) for m in received]
    if transport == "longpoll":  # a request per channel: in order within each channel
        got = sorted(got, key=lambda item: item[0] != a)
        expected = sorted(expected, key=lambda item: item[0] != a)
    assert got == expected
    fragment = next(m for m in received if m["channel"] == b)
    assert fragment["event"] == "fragment"
    if transport != "eventsource":  # event streams do not carry the content type
        assert fragment["contentType"] == "text/html"
    assert all(m["id"].count(":") == 1 for m in received)

    assert page.evaluate(f"window.subscription.subscribe('{c}')") is True
    wait_subscribers(push, c, 1)
    publish(push, c, {"n": 4})
    wait_for(page, "window.received", 4)
    assert page.evaluate(f"window.subscription.unsubscribe('{a}')") is True
    wait_subscribers(push, a, 0)
    publish(push, a, {"n": 5})
    publish(push, b, {"n": 6})
    received = wait_for(page, "window.received", 5)
    assert [(m["channel"], m["text"]) for m in received[3:]] == [(c, '{"n": 4}'), (b, '{"n": 6}')]

    # Subscribed again, a channel goes on after the last message it got: n=5 once.
    assert page.evaluate(f"window.subscription.subscribe('{a}')") is True
    received = wait_for(page, "window.received", 6)
    assert [(m["channel"], m["text"]) for m in received[5:]] == [(a, '{"n": 5}')]

    # A long-poll client asks again after each message: delete while it waits (else its next
    # request could come after the delete and find no channel to be told about).
    wait_subscribers(push, b, 1)
    assert httpx.delete(f"{push.url}/publisher/{b}").status_code == 200
    assert wait_for(page, "window.deletions", 1) == [b]
    assert page.evaluate("window.subscription.channels") == [c, a]
    assert len(page.evaluate("window.received")) == 6
    assert page.evaluate("window.transports") == [transport]
    assert page.evaluate("window.problems") == []
    assert page.errors == []


@pytest.mark.parametrize("transport", transport_params(*TRANSPORTS))
def test_gap_after_falling_behind_and_resume_across_a_reload(page, server, transport):
    """The buffer keeps 3 messages. The page reads one, is reloaded while 4 more are
    published, and resumes from sessionStorage: a gap (streaming transports), then the 3
    retained messages, nothing twice."""
    push, site = server
    channel = f"gap-{transport}"
    url = f"{push.url}/cors/{channel}"
    page.goto(f"{site}/browser/lib/client")
    start(page, url, transport=transport, resume=True)
    publish(push, channel, {"n": 1})
    first = wait_for(page, "window.received", 1)[0]
    page.evaluate("window.subscription.close()")
    wait_subscribers(push, channel, 0)
    for n in range(2, 6):
        publish(push, channel, {"n": n})

    page.reload()
    start(page, url, transport=transport, resume=True)
    received = wait_for(page, "window.received", 3)
    assert [m["text"] for m in received] == ['{"n": 3}', '{"n": 4}', '{"n": 5}']
    if transport != "longpoll":  # long-poll (NHPM) has no way to tell
        gaps = wait_for(page, "window.gaps", 1)
        assert gaps == [{"channel": channel, "after": first["id"], "next": received[0]["id"]}]
    assert page.evaluate("window.problems") == []


@pytest.mark.parametrize("transport", transport_params(*TRANSPORTS))
def test_resume_after_the_server_restarts(page, start_server, redis_server, transport):
    port = free_port()
    site = f"http://localhost:{port}"
    settings = cors_config(site, redis_server.store())
    push = start_server(settings, port=port)
    other = start_server(settings)  # same store: publishes while the page's server is down
    channel = f"restart-{transport}"
    page.goto(f"{site}/browser/lib/client")
    start(page, f"{push.url}/cors/{channel}", transport=transport)
    wait_subscribers(push, channel, 1)
    publish(other, channel, {"n": 1})
    wait_for(page, "window.received", 1)

    push.stop()
    publish(other, channel, {"n": 2})
    publish(other, channel, {"n": 3})
    push = start_server(settings, port=port)
    received = wait_for(page, "window.received", 3)
    publish(other, channel, {"n": 4})
    received = wait_for(page, "window.received", 4)
    assert [m["text"] for m in received] == [f'{{"n": {n}}}' for n in range(1, 5)]
    assert page.evaluate("window.transports") == [transport]
    assert page.errors == []


@pytest.mark.parametrize(
    ("served", "expected"),
    [
        (["eventsource", "longpoll"], ["websocket", "eventsource"]),
        (["longpoll"], ["websocket", "eventsource", "longpoll"]),
    ],
)
@about_transports("longpoll", "eventsource", "websocket")
def test_fallback_when_the_server_refuses_a_transport(page, start_server, served, expected):
    port = free_port()
    site = f"http://localhost:{port}"
    push = start_server(cors_config(site, transport="websocket", transports=served), port=port)
    channel = "fallback-" + "-".join(served)
    publish(push, channel, {"n": 1})  # retained: read by whichever transport serves
    page.goto(f"{site}/browser/lib/client")
    start(page, f"{push.url}/cors/{channel}")  # the tag's transport: websocket
    wait_for(page, "window.received", 1)
    wait_subscribers(push, channel, 1)
    publish(push, channel, {"n": 2})
    received = wait_for(page, "window.received", 2)
    assert [m["text"] for m in received] == ['{"n": 1}', '{"n": 2}']
    assert page.evaluate("window.transports") == expected
    assert [p["kind"] for p in page.evaluate("window.problems")] == ["transport"] * (
        len(expected) - 1
    )


@about_transports("longpoll", "eventsource", "websocket")
def test_server_back_without_streaming_goes_on_by_long_poll_from_the_same_position(
    page, start_server, redis_server
):
    """Received over WebSocket; the server comes back as ``runpushserver --transport
    longpoll``: WebSocket is refused (4403), the event stream is answered as a long poll
    (never opens), and long-poll goes on exactly after the last message."""
    port = free_port()
    site = f"http://localhost:{port}"
    settings = cors_config(site, redis_server.store(), transport="websocket")
    push = start_server(settings, port=port)
    other = start_server(settings)
    channel = "switching"
    page.goto(f"{site}/browser/lib/client")
    start(page, f"{push.url}/cors/{channel}")
    wait_subscribers(push, channel, 1)
    publish(other, channel, {"n": 1})
    wait_for(page, "window.received", 1)

    push.stop()
    publish(other, channel, {"n": 2})
    push = start_server(settings, port=port, args=["--transport", "longpoll"])
    received = wait_for(page, "window.received", 2)
    publish(other, channel, {"n": 3})
    received = wait_for(page, "window.received", 3)
    assert [m["text"] for m in received] == ['{"n": 1}', '{"n": 2}', '{"n": 3}']
    assert page.evaluate("window.transports") == ["websocket", "eventsource", "longpoll"]
    assert page.errors == []


def test_backoff_grows_with_jitter_up_to_the_cap(page, server):
    """Long polls to a port where nothing listens: failure n waits min(400, 100 * 2**(n-1))
    shortened by up to half; the outage is reported once."""
    _, site = server
    page.goto(f"{site}/browser/lib/client")
    starts = page.evaluate(
        """async (url) => {
        const starts = [];
        const fetch = window.fetch;
        window.fetch = (...args) => { starts.push(performance.now()); return fetch(...args); };
        window.start(url, {transport: 'longpoll', retryDelay: 100, maxRetryDelay: 400,
                           jitter: 0.5});
        const deadline = performance.now() + 30000;  // fail, not hang, if no poll starts
        await new Promise((resolve, reject) => {
            (function check() {
                if (starts.length >= 8) { resolve(); }
                else if (performance.now() > deadline) { reject(new Error(starts.length)); }
                else { setTimeout(check, 20); }
            })();
        });
        window.subscription.close();
        return starts;
    }""",
        f"http://127.0.0.1:{free_port()}/cors/nobody",
    )
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    for n, gap in enumerate(gaps, start=1):
        assert gap >= min(400, 100 * 2 ** (n - 1)) * 0.5 - 2, (n, gaps)  # timers never early
    assert max(gaps) < 400 + 1000, gaps  # a loaded machine may be late, not this late
    assert any(gap < 395 for gap in gaps[2:]), gaps  # jitter: not all the full cap
    assert [p["kind"] for p in page.evaluate("window.problems")] == ["request"]


@pytest.mark.parametrize("module", [False, True], ids=["script", "module"])
@about_transports("longpoll", "eventsource", "websocket")
def test_the_tag_carries_the_transport_from_settings(page, start_server, module):
    """``{% pushserver_client %}`` with ``PUSH_SERVER['transport']`` and no ``transport``
    option: the client starts with the setting's, read from its own script tag or, loaded
    as a module (``document.currentScript`` is null there), from the tag in the page."""
    push, site = start_cross_origin(start_server, transport="eventsource")
    channel = f"tag-{'module' if module else 'script'}"
    publish(push, channel, {"n": 1})
    page.goto(f"{site}/browser/lib/client" + ("?module=1" if module else ""))
    if module:
        page.wait_for_function("() => window.esm !== undefined", timeout=WAIT)
    start(page, f"{push.url}/cors/{channel}")
    received = wait_for(page, "window.received", 1)
    assert [m["text"] for m in received] == ['{"n": 1}']
    assert page.evaluate("window.transports") == ["eventsource"]
    assert page.errors == []
