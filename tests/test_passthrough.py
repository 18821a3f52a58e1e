"""Passthrough: the Django view, the sender's guarantees, and the whole loop with real servers."""

import logging

import anyio
import httpx
import pytest
from django.test import Client

from pushserver import signals, views
from pushserver.http import Request
from pushserver.passthrough import PassthroughSender
from pushserver.testing import free_port
from tests.project.helpers import PresenceLog, location_for

#: The sender is core code: run its tests on both anyio backends.
both_backends = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
EPOCH = "Thu, 01 Jan 1970 00:00:00 GMT"


# -- the Django view --------------------------------------------------------------------------


@pytest.fixture
def received():
    seen = []

    def on_subscribe(sender, request, channel_id, **kwargs):
        seen.append(("subscribe", sender, request, channel_id))

    def on_unsubscribe(sender, request, channel_id, **kwargs):
        seen.append(("unsubscribe", sender, request, channel_id))

    signals.channel_subscribe.connect(on_subscribe)
    signals.channel_unsubscribe.connect(on_unsubscribe)
    yield seen
    signals.channel_subscribe.disconnect(on_subscribe)
    signals.channel_unsubscribe.disconnect(on_unsubscribe)


@pytest.mark.parametrize(
    ("method", "remote_addr", "data"),
    [
        ("post", "10.1.2.3", {"channel_id": "a", "subscribe": "1"}),  # not in INTERNAL_IPS
        ("get", "127.0.0.1", {"channel_id": "a", "subscribe": "1"}),
        ("post", "127.0.0.1", {"subscribe": "1"}),
        ("post", "127.0.0.1", {"channel_id": "", "subscribe": "1"}),
        ("post", "127.0.0.1", {"channel_id": "a"}),
        ("post", "127.0.0.1", {"channel_id": "a", "subscribe": "", "unsubscribe": ""}),
    ],
)
def test_view_refuses(received, method, remote_addr, data):
    client = Client(REMOTE_ADDR=remote_addr)
    response = getattr(client, method)("/passthrough", data)
    assert response.status_code == 403
    assert received == []


@pytest.mark.parametrize(
    ("data", "signal"),
    [
        ({"channel_id": "a/b č", "subscribe": "1"}, "subscribe"),
        ({"channel_id": "a/b č", "subscribe": "0"}, "subscribe"),  # any non-empty value
        ({"channel_id": "a/b č", "unsubscribe": "1"}, "unsubscribe"),
        ({"channel_id": "a/b č", "subscribe": "1", "unsubscribe": "1"}, "subscribe"),
    ],
)
def test_view_sends_signals(received, data, signal):
    client = Client(REMOTE_ADDR="::1", enforce_csrf_checks=True)  # CSRF-exempt
    response = client.post("/passthrough", data, HTTP_IF_NONE_MATCH="3")
    assert response.status_code == 200
    assert response.content == b""
    [(kind, sender, request, channel_id)] = received
    assert (kind, sender, channel_id) == (signal, views.passthrough, "a/b č")
    assert request.META["HTTP_IF_NONE_MATCH"] == "3"


def test_view_survives_a_failing_receiver(received, caplog):
    def broken(**kwargs):
        raise RuntimeError("receiver bug")

    signals.channel_subscribe.connect(broken)
    try:
        with caplog.at_level(logging.ERROR, "django.dispatch"):
            response = Client().post("/passthrough", {"channel_id": "a", "subscribe": "1"})
    finally:
        signals.channel_subscribe.disconnect(broken)
    assert response.status_code == 200
    assert len(received) == 1
    assert "receiver bug" in caplog.text


# -- the sender, against a real TCP server in the test -----------------------------------------


class RecordingSite:
    """A tiny HTTP server: records each request; answers when ``release`` is set."""

    def __init__(self):
        self.requests = []
        self.arrived = anyio.Event()
        self.release = anyio.Event()
        self.release.set()
        self.answer = True
        self.port = 0

    async def handle(self, stream):
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers.setdefault(name.strip().lower(), []).append(value.strip())
            length = int(headers["content-length"][0])
            while len(body) < length:
                body += await stream.receive()
            self.requests.append((lines[0], headers, body.decode()))
            self.arrived.set()
            self.arrived = anyio.Event()
            await self.release.wait()
            if self.answer:
                await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            else:
                await anyio.sleep_forever()

    async def wait_for(self, count):
        while len(self.requests) < count:
            await self.arrived.wait()

    def bodies(self):
        return [body for _, _, body in self.requests]


@pytest.fixture
async def site():
    recording = RecordingSite()
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    recording.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, recording.handle)
        yield recording
        tg.cancel_scope.cancel()


def subscriber_request(**headers):
    raw = [(b"host", b"push.example:8001"), (b"connection", b"keep-alive")]
    raw += [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "GET", "headers": raw})


@pytest.mark.anyio
@both_backends
async def test_sender_forwards_headers_and_form(site):
    sender = PassthroughSender()
    presence = sender(location_for(site.port))
    request = subscriber_request(
        cookie="sessionid=abc",
        if_none_match="4",
        if_modified_since=EPOCH,
        user_agent="agent/1",
        origin="http://site.example",
        accept_encoding="br",
        content_type="text/weird",
    )
    with anyio.fail_after(5):
        async with sender:
            token = presence.subscribed(request, "room č/1")
            await site.wait_for(1)
            presence.unsubscribed(token)
            await site.wait_for(2)
    (line, headers, body), (_, _, body2) = site.requests
    assert line == "POST /passthrough?x=1 HTTP/1.1"
    assert body == "channel_id=room+%C4%8D%2F1&subscribe=1"
    assert body2 == "channel_id=room+%C4%8D%2F1&unsubscribe=1"
    assert headers["host"] == ["push.example:8001"]  # the push server's, as the original
    assert headers["cookie"] == ["sessionid=abc"]
    assert headers["if-none-match"] == ["4"]
    assert headers["if-modified-since"] == [EPOCH]
    assert headers["user-agent"] == ["agent/1"]
    assert headers["origin"] == ["http://site.example"]
    assert headers["content-type"] == ["application/x-www-form-urlencoded"]
    assert headers["connection"] == ["close"]
    assert "accept-encoding" not in headers
    assert sender.sent == 2


@pytest.mark.anyio
@both_backends
async def test_unsubscribe_waits_for_its_subscribe(site):
    sender = PassthroughSender()
    presence = sender(location_for(site.port))
    with anyio.fail_after(5):
        async with sender:
            site.release = anyio.Event()  # hold every answer
            first = presence.subscribed(subscriber_request(), "first")
            await site.wait_for(1)
            presence.unsubscribed(first)  # its subscribe is still in flight
            # Other workers are free: a second connection's subscribe goes out meanwhile...
            presence.subscribed(subscriber_request(), "second")
            await site.wait_for(2)
            # ...but the first connection's unsubscribe waits for its subscribe.
            assert site.bodies() == [
                "channel_id=first&subscribe=1",
                "channel_id=second&subscribe=1",
            ]
            site.release.set()
            await site.wait_for(3)
    assert site.bodies()[2] == "channel_id=first&unsubscribe=1"


@pytest.mark.anyio
@both_backends
async def test_full_queue_drops_and_warns(site, caplog):
    sender = PassthroughSender(concurrency=1, queue_size=2)
    presence = sender(location_for(site.port))
    with anyio.fail_after(5), caplog.at_level(logging.WARNING, "pushserver.passthrough"):
        async with sender:
            site.release = anyio.Event()
            presence.subscribed(subscriber_request(), "c1")
            await site.wait_for(1)  # in flight; the queue is empty again
            presence.subscribed(subscriber_request(), "c2")
            presence.subscribed(subscriber_request(), "c3")
            dropped = presence.subscribed(subscriber_request(), "c4")
            assert sender.dropped == 1
            assert "passthrough queue full" in caplog.text
            presence.unsubscribed(dropped)  # never sent: its subscribe never was
            site.release.set()
            await site.wait_for(3)
    assert site.bodies() == [f"channel_id=c{i}&subscribe=1" for i in (1, 2, 3)]


@pytest.mark.anyio
@both_backends
async def test_timeout_frees_the_worker(site, caplog):
    sender = PassthroughSender(concurrency=1, timeout=0.2)
    presence = sender(location_for(site.port))
    site.answer = False
    with anyio.fail_after(5), caplog.at_level(logging.WARNING, "pushserver.passthrough"):
        async with sender:
            presence.subscribed(subscriber_request(), "slow")
            presence.subscribed(subscriber_request(), "next")
            await site.wait_for(2)  # the only worker gave up on the first
    assert "got no answer within 0.2 s" in caplog.text
    assert sender.failed >= 1


@pytest.mark.anyio
@both_backends
async def test_queued_notifications_drain_on_exit(site):
    sender = PassthroughSender(concurrency=1)
    presence = sender(location_for(site.port))
    with anyio.fail_after(5):
        async with sender:
            for name in ("a", "b", "c"):
                presence.subscribed(subscriber_request(), name)
    assert site.bodies() == [f"channel_id={n}&subscribe=1" for n in "abc"]


@pytest.mark.anyio
@both_backends
async def test_unreachable_site_is_logged_not_raised(caplog):
    sender = PassthroughSender()
    presence = sender(location_for(free_port()))  # nothing listens there
    with anyio.fail_after(5), caplog.at_level(logging.WARNING, "pushserver.passthrough"):
        async with sender:
            token = presence.subscribed(subscriber_request(), "x")
    presence.unsubscribed(token)  # after shutdown: ignored
    assert sender.failed == 1 and "failed" in caplog.text


# -- the whole loop: browser-like long poll -> push server -> Django -> signal receiver --------


def browser_headers(session):
    return {
        "cookie": f"sessionid={session}",
        "if-none-match": "0",
        "if-modified-since": EPOCH,
        "user-agent": "presence-test/1",
        "origin": "http://site.example",
    }


async def check_presence_loop(push_url, log, session, push_host):
    """subscribe on wait, unsubscribe on delivery and on disconnect, all as alice."""
    channel = "room č/1"
    path = "/updates/room%20%C4%8D%2F1"
    expected = {
        "channel_id": channel,
        "user": "alice",
        "if_none_match": "0",
        "if_modified_since": EPOCH,
        "user_agent": "presence-test/1",
        "origin": "http://site.example",
        "host": push_host,
        "remote_addr": "127.0.0.1",
    }
    async with httpx.AsyncClient(base_url=push_url, timeout=10) as client:
        result = {}

        async def long_poll():
            result["response"] = await client.get(path, headers=browser_headers(session))

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_poll)
            assert await log.next() == {"type": "subscribe", **expected}
            posted = await client.post(
                "/publisher/room%20%C4%8D%2F1",
                content=b'{"type": "m"}',
                headers={"content-type": "application/json"},
            )
            assert posted.status_code == 201
        assert result["response"].json() == {"type": "m"}
        assert await log.next() == {"type": "unsubscribe", **expected}

        # A subscriber that goes away while waiting is unsubscribed too.
        headers = {
            **browser_headers(session),
            "if-none-match": "5",
            "if-modified-since": "Mon, 01 Jan 2035 00:00:00 GMT",
        }
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: client.get(path, headers=headers))
            event = await log.next()
            assert (event["type"], event["user"], event["if_none_match"]) == (
                "subscribe",
                "alice",
                "5",
            )
            tg.cancel_scope.cancel()  # the browser closes the tab
        event = await log.next()
        assert (event["type"], event["user"], event["if_none_match"]) == (
            "unsubscribe",
            "alice",
            "5",
        )


def site_locations(passthrough=None):
    updates = {"type": "subscriber", "prefix": "/updates/", "create_on_get": True}
    if passthrough:
        updates["passthrough"] = passthrough
    return [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "subscriber", "prefix": "/presence/", "create_on_get": True},
        updates,
    ]


@pytest.mark.anyio
async def test_allrequests_passthrough_in_process_with_session_user(
    push_server_factory, site_db, free_tcp_port
):
    address = f"127.0.0.1:{free_tcp_port}"
    server = push_server_factory(
        {"locations": site_locations(f"http://{address}/passthrough")},
        "--allrequests",
        address=address,
        env={
            "PUSHSERVER_TEST_DB": site_db["PUSHSERVER_TEST_DB"],
            "PUSHSERVER_TEST_PRESENCE_CHANNEL": "log",
        },
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        log = PresenceLog(client, "/presence/log")
        with anyio.fail_after(20):
            await check_presence_loop(server.url, log, site_db["session"], server.host)
    assert "/passthrough" not in server.log  # dispatched in-process, no HTTP request


@pytest.mark.anyio
async def test_passthrough_over_http_to_a_separate_django_site(push_server_factory, site_db):
    site = push_server_factory(
        {"locations": site_locations()},
        "--allrequests",
        env={
            "PUSHSERVER_TEST_DB": site_db["PUSHSERVER_TEST_DB"],
            "PUSHSERVER_TEST_PRESENCE_CHANNEL": "log",
        },
    )
    push = push_server_factory({"locations": site_locations(f"{site.url}/passthrough")})
    async with httpx.AsyncClient(base_url=site.url, timeout=10) as client:
        log = PresenceLog(client, "/presence/log")
        with anyio.fail_after(20):
            await check_presence_loop(push.url, log, site_db["session"], push.host)


@pytest.mark.anyio
async def test_sender_dispatches_to_the_django_asgi_app_in_process(received):
    from django.core.asgi import get_asgi_application

    # With a fallback app and no runpushserver in this process, the fallback is the site.
    sender = PassthroughSender(get_asgi_application())
    presence = sender(location_for(9, "/passthrough"))  # port 9: nothing listens
    with anyio.fail_after(10):
        async with sender:
            token = presence.subscribed(subscriber_request(if_none_match="7"), "in process")
        async with sender:
            presence.unsubscribed(token)
    assert [(kind, channel_id) for kind, _, _, channel_id in received] == [
        ("subscribe", "in process"),
        ("unsubscribe", "in process"),
    ]
    request = received[0][2]
    assert request.META["REMOTE_ADDR"] == "127.0.0.1"
    assert request.META["HTTP_IF_NONE_MATCH"] == "7"
    assert request.get_host() == "push.example:8001"
    assert sender.sent == 2 and sender.failed == 0
