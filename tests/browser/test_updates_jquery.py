"""``updates.js`` keeps its API on jQuery 1.12, 3.7 and 4.0, each installed from npm by the
tests, in each of its modes, cross-origin with credentials: ordered delivery with dispatch by
type, and unsubscribe / subscribe again resuming where the channel stopped.

(The rest of ``test_updates_js.py`` / ``test_transports_js.py`` runs on the demo's jQuery;
``PUSHSERVER_TEST_JQUERY`` reruns them on another file.)
"""

from __future__ import annotations

import pytest

from pushserver.testing import free_port
from tests.conftest import transport_params

from .conftest import (
    cors_config,
    publish,
    restart_missing_two,
    start_cross_origin,
    wait_received,
    wait_subscribers,
)

pytestmark = pytest.mark.browser

JQUERIES = ["1.12", "3.7", "4.0"]
MODES = ["longpoll", "eventsource", "websocket"]


@pytest.fixture(scope="module")
def server(start_module_server):
    """One server for the module; pages from its other origin (``start_cross_origin``)."""
    return start_cross_origin(start_module_server)


@pytest.mark.parametrize("mode", transport_params(*MODES))
@pytest.mark.parametrize("jquery", JQUERIES)
def test_updates_js_on_each_jquery(npm, page, server, jquery, mode):
    push, site = server
    channel = f"jq-{jquery}-{mode}"
    url = f"{push.url}/cors/{channel}"
    page.goto(f"{site}/browser/page?jquery={jquery}")
    assert page.evaluate("$.fn.jquery").startswith(jquery + ".")
    page.evaluate(
        """([mode, url]) => {
        $.updates.transport = mode;
        $.updates.registerProcessor('c', 'test', window.record('c'));
        $.updates.registerProcessor('c', 'other', window.record('other'));
        $.updates.subscribe({'c': url});
    }""",
        [mode, url],
    )
    wait_subscribers(push, channel, 1)
    for n in range(4):
        publish(push, channel, {"type": "other" if n == 2 else "test", "n": n})
    received = wait_received(page, 4)
    assert [(item["channel"], item["data"]["n"]) for item in received] == [
        ("c", 0),
        ("c", 1),
        ("other", 2),
        ("c", 3),
    ]

    assert page.evaluate("$.updates.unsubscribe('c')") is True
    wait_subscribers(push, channel, 0)
    publish(push, channel, {"type": "test", "n": 4})
    page.evaluate("url => $.updates.subscribe({'c': url})", url)
    received = wait_received(page, 5)
    assert [item["data"]["n"] for item in received] == [0, 1, 2, 3, 4]
    assert page.evaluate("window.problems") == []
    assert page.errors == []


@pytest.mark.parametrize("mode", transport_params(*MODES))
def test_cross_origin_resume_after_a_restart_and_gap(page, start_server, redis_server, mode):
    """Cross-origin with credentials, in each mode: the page resumes exactly after its last
    message when its push server restarts (the other one, on the same Redis, publishes while
    it is down), and after falling behind the buffer (3) it gets what is retained, with a
    gap reported where the transport can tell (not long-poll: NHPM has no way)."""
    port = free_port()
    site = f"http://localhost:{port}"
    settings = cors_config(site, redis_server.store(max_messages=3))
    push = start_server(settings, port=port)
    other = start_server(settings)
    channel = f"jq-restart-{mode}"
    url = f"{push.url}/cors/{channel}"
    page.goto(f"{site}/browser/page")
    page.evaluate(
        """([mode, url]) => {
        $.extend($.updates.options, {retryDelay: 100, maxRetryDelay: 400, minPollInterval: 100});
        $.updates.transport = mode;
        $.updates.registerProcessor('c', 'test', window.record('c'));
        $.updates.subscribe({'c': url});
    }""",
        [mode, url],
    )
    wait_subscribers(push, channel, 1)
    publish(other, channel, {"type": "test", "n": 1})
    wait_received(page, 1)

    push = restart_missing_two(page, start_server, push, other, settings, channel)

    assert page.evaluate("$.updates.unsubscribe('c')") is True
    wait_subscribers(push, channel, 0)
    for n in range(4, 9):  # the buffer keeps 6, 7 and 8
        publish(other, channel, {"type": "test", "n": n})
    page.evaluate("url => $.updates.subscribe({'c': url})", url)
    received = wait_received(page, 6)
    assert [item["data"]["n"] for item in received] == [1, 2, 3, 6, 7, 8]
    kinds = [p["kind"] for p in page.evaluate("window.problems")]
    assert set(kinds) <= {"request", "gap"}
    assert kinds.count("gap") == (0 if mode == "longpoll" else 1)
    assert page.errors == []
