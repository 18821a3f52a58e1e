"""Subscriber authorization (signed URLs, the can_subscribe hook, the passthrough as
authorizer) on every transport, against real runpushserver processes."""

from __future__ import annotations

import json
from urllib.parse import quote

import anyio
import httpx
import pytest
from django.core import signing
from django.test import override_settings

from pushserver.config import parse
from pushserver.testing import PushServerProcess, free_port
from pushserver.utils.signing import SALT, sign_channel, signed_channel_url, verify_channel
from tests.conftest import ROOT
from tests.project.helpers import (
    PresenceLog,
    location_for,
    position,
    pushserver_messages,
    silent_server,
)
from tests.transports.streams import closed_with, connect, publish, ws_frame, ws_url

TRANSPORTS = ["longpoll", "eventsource", "websocket"]
HOOK = "tests.project.authz.async_hook"
ORIGIN = "http://page.example"


def subscriber(prefix, **options):
    return {
        "type": "subscriber",
        "prefix": prefix,
        "create_on_get": True,
        "ping_interval": 0,
        **options,
    }


CONFIG = {
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        subscriber("/signed/", signed=True),
        subscriber("/hook/", can_subscribe=HOOK, authorize_timeout=0.5, allow_origin=ORIGIN),
        subscriber("/sync-hook/", can_subscribe="tests.project.authz.sync_hook"),
        subscriber("/both/", signed=True, can_subscribe=HOOK),
    ]
}


async def attempt(server, client, transport, path, headers=None):
    """Subscribe with ``transport``; ``("ok", first body)`` or ``(status or close code,
    reason)``. The channels already hold a message, so an allowed subscriber gets it at once."""
    headers = dict(headers or {})
    if transport == "longpoll":
        response = await client.get(path, headers=headers)
        if response.status_code == 200:
            return "ok", response.text
        return response.status_code, response.text
    if transport == "eventsource":
        headers["accept"] = "text/event-stream"
        async with client.stream("GET", path, headers=headers) as response:
            if response.status_code != 200:
                return response.status_code, (await response.aread()).decode()
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    return "ok", line.removeprefix("data: ")
        raise AssertionError("the stream ended without an event")
    async with connect(ws_url(server, path), additional_headers=headers) as ws:
        try:
            frame = await ws.recv()
        except Exception:
            pass
        else:
            return "ok", ws_frame(frame)[1]
        return await closed_with(ws)


def refused(transport, status=403):
    """What ``attempt`` reports for a refusal with HTTP ``status``."""
    if transport == "websocket":
        return {403: 4403, 503: 1013}[status]
    return status


async def prepare(client, *channels):
    for channel in channels:
        await publish(client, quote(channel, safe=""), f"to {channel}")


def expired_signature(channel_id, max_age=60):
    """A max_age signature minted ``max_age + 100`` seconds ago (no waiting)."""

    class Past(signing.TimestampSigner):
        def timestamp(self):
            return signing.b62_encode(int(signing.time.time()) - max_age - 100)

    signed = Past(salt=SALT).sign(f"{channel_id}:{max_age}")
    return f"{max_age}:" + ":".join(signed.rsplit(":", 2)[-2:])


# -- signed channel URLs ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_signed_urls(server, client, transport):
    channel = f"private {transport}"
    other = f"other {transport}"
    await prepare(client, channel, other)
    path = "/signed/" + quote(channel, safe="")
    with anyio.fail_after(20):
        for sig in (sign_channel(channel), sign_channel(channel, max_age=60)):
            assert await attempt(server, client, transport, f"{path}?sig={quote(sig)}") == (
                "ok",
                f"to {channel}",
            )
        code, reason = await attempt(server, client, transport, path)
        assert code == refused(transport)
        assert "a signed URL is needed here" in reason
        tampered = sign_channel(channel)
        tampered = tampered[:-1] + ("A" if tampered[-1] != "A" else "B")
        for sig, why in [
            (tampered, "bad signature"),
            (sign_channel(other), "bad signature"),  # another channel's
            (expired_signature(channel), "the signature has expired"),
            ("60:" + sign_channel(channel, max_age=60).split(":", 1)[1][:-1], "bad signature"),
            ("9999:" + sign_channel(channel, max_age=60).split(":", 1)[1], "bad signature"),
        ]:
            code, reason = await attempt(server, client, transport, f"{path}?sig={quote(sig)}")
            assert code == refused(transport), (sig, code, reason)
            assert why in reason, (sig, reason)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["eventsource", "websocket"])
async def test_signed_multiplexed_needs_every_channel(server, client, transport):
    a, b = f"mux-a-{transport}", f"mux-b-{transport}"
    await prepare(client, a, b)
    path = f"/signed/{a},{b}"
    with anyio.fail_after(20):
        both = f"{sign_channel(a)},{sign_channel(b, max_age=60)}"
        status, _ = await attempt(server, client, transport, f"{path}?sig={quote(both)}")
        assert status == "ok"
        one_bad = f"{sign_channel(a)},{sign_channel(a)}"
        code, reason = await attempt(server, client, transport, f"{path}?sig={quote(one_bad)}")
        assert (code, reason.strip()) in [
            (refused(transport), f"{b}: bad signature"),
            (refused(transport), f"403 Forbidden: {b}: bad signature"),
        ]
        code, reason = await attempt(server, client, transport, f"{path}?sig={sign_channel(a)}")
        assert code == refused(transport)
        assert "1 signature(s) for 2 channel(s)" in reason


@pytest.mark.anyio
async def test_signed_websocket_subscribe_command(server, client):
    await prepare(client, "cmd-first", "cmd-second")
    url = ws_url(server, f"/signed/cmd-first?sig={sign_channel('cmd-first')}")
    with anyio.fail_after(20):
        async with connect(url) as ws:
            assert ws_frame(await ws.recv())[1] == "to cmd-first"
            await ws.send(json.dumps({"subscribe": "cmd-second"}))
            error = json.loads(await ws.recv())
            assert error["type"] == "error" and error["channel"] == "cmd-second"
            assert error["status"] == 403 and "a signed URL is needed" in error["error"]
            await ws.send(json.dumps({"subscribe": "cmd-second", "sig": sign_channel("x")}))
            error = json.loads(await ws.recv())
            assert (error["status"], error["error"]) == (403, "cmd-second: bad signature")
            # Refusals leave the connection up.
            await ws.send(json.dumps({"ping": 1}))
            assert json.loads(await ws.recv()) == {"type": "pong"}
            signature = sign_channel("cmd-second", max_age=60)
            await ws.send(json.dumps({"subscribe": "cmd-second", "sig": signature}))
            assert json.loads(await ws.recv()) == {"type": "subscribed", "channel": "cmd-second"}
            assert ws_frame(await ws.recv())[1] == "to cmd-second"


def test_signing_round_trip_and_url():
    assert verify_channel("a b", sign_channel("a b")) is None
    assert verify_channel("a b", sign_channel("a b", max_age=5)) is None
    assert verify_channel("a c", sign_channel("a b")) == "bad signature"
    assert verify_channel("a b", "x:y") == "malformed signature"
    assert verify_channel("a b", expired_signature("a b")) == "the signature has expired"
    with override_settings(SECRET_KEY="new", SECRET_KEY_FALLBACKS=["tests-only"]):
        assert verify_channel("a b", sign_channel("a b")) is None  # signed with the old key
    with override_settings(SECRET_KEY="other"):
        assert verify_channel("a b", sign_channel("a b")) is None
        token = sign_channel("a b")
    assert verify_channel("a b", token) == "bad signature"
    with override_settings(
        PUSH_SERVER={"locations": [{"type": "subscriber", "prefix": "/s/", "signed": True}]},
        INTERNAL_IPS=[],
    ):
        from pushserver.running import registry

        registry.host, previous = "push.example:8001", registry.host
        try:
            url = signed_channel_url("a b", max_age=30)
        finally:
            registry.host = previous
    base, _, sig = url.partition("?sig=")
    assert base == "http://push.example:8001/s/a%20b"
    assert verify_channel("a b", sig) is None and sig.startswith("30:")


# -- the can_subscribe hook -------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_hook(server, client, transport):
    names = {kind: f"{kind}-{transport}" for kind in ("ok", "no", "closed", "slow", "boom")}
    await prepare(client, *names.values(), f"agent-{transport}")
    with anyio.fail_after(30):
        assert await attempt(server, client, transport, f"/hook/{names['ok']}") == (
            "ok",
            f"to {names['ok']}",
        )
        for kind, status, reason in [
            ("no", 403, f"not allowed to subscribe to {names['no']}"),
            ("closed", 403, f"{names['closed']} is closed"),
            ("slow", 503, "the authorizer did not answer in time"),
            ("boom", 503, "the authorizer failed"),
        ]:
            code, text = await attempt(server, client, transport, f"/hook/{names[kind]}")
            assert code == refused(transport, status), (kind, code, text)
            assert reason in text
        agent = f"/hook/agent-{transport}"
        assert (await attempt(server, client, transport, agent, {"user-agent": "friend"}))[
            0
        ] == "ok"
        code, _ = await attempt(server, client, transport, agent, {"user-agent": "stranger"})
        assert code == refused(transport)
    # The failing hook is logged with its traceback (the log comes through a pipe).
    await anyio.to_thread.run_sync(server.wait_for_output, "hook bug")


@pytest.mark.anyio
async def test_sync_hook_and_cors_on_refusal(server, client):
    await prepare(client, "ok-sync", "no-sync")
    with anyio.fail_after(20):
        assert (await client.get("/sync-hook/ok-sync")).text == "to ok-sync"
        response = await client.get("/sync-hook/no-sync")
        assert response.status_code == 403
        assert response.text == "403 Forbidden: not allowed to subscribe to no-sync\n"
        assert response.headers["access-control-allow-origin"] == "*"
        response = await client.get("/hook/no-cors", headers={"origin": ORIGIN})
        assert response.status_code == 403
        assert response.headers["access-control-allow-origin"] == ORIGIN


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["eventsource", "websocket"])
async def test_hook_multiplexed_needs_every_channel(server, client, transport):
    ok, no = f"ok-mux-{transport}", f"no-mux-{transport}"
    await prepare(client, ok, no)
    with anyio.fail_after(20):
        assert (await attempt(server, client, transport, f"/hook/{ok},{ok}2"))[0] == "ok"
        code, reason = await attempt(server, client, transport, f"/hook/{ok},{no}")
        assert code == refused(transport)
        assert f"not allowed to subscribe to {no}" in reason


@pytest.mark.anyio
async def test_hook_websocket_subscribe_command(server, client):
    await prepare(client, "ok-cmd", "ok-cmd2")
    with anyio.fail_after(20):
        async with connect(ws_url(server, "/hook/ok-cmd")) as ws:
            assert ws_frame(await ws.recv())[1] == "to ok-cmd"
            await ws.send(json.dumps({"subscribe": "no-cmd"}))
            error = json.loads(await ws.recv())
            assert error == {
                "type": "error",
                "error": "not allowed to subscribe to no-cmd",
                "channel": "no-cmd",
                "status": 403,
            }
            await ws.send(json.dumps({"subscribe": "slow-cmd"}))
            error = json.loads(await ws.recv())
            assert (error["status"], error["channel"]) == (503, "slow-cmd")
            await ws.send(json.dumps({"subscribe": "ok-cmd2"}))
            assert json.loads(await ws.recv()) == {"type": "subscribed", "channel": "ok-cmd2"}
            assert ws_frame(await ws.recv())[1] == "to ok-cmd2"


@pytest.mark.anyio
async def test_signature_and_hook_both_apply(server, client):
    await prepare(client, "ok-both", "no-both")
    with anyio.fail_after(20):
        ok = f"/both/ok-both?sig={sign_channel('ok-both')}"
        assert (await client.get(ok)).status_code == 200
        assert (await client.get("/both/ok-both")).status_code == 403  # no signature
        signed_but_refused = await client.get(f"/both/no-both?sig={sign_channel('no-both')}")
        assert signed_but_refused.status_code == 403
        assert "not allowed to subscribe to no-both" in signed_but_refused.text


# -- the passthrough as authorizer ------------------------------------------------------------


def auth_locations(passthrough, **options):
    return [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "subscriber", "prefix": "/presence/", "create_on_get": True},
        subscriber("/auth/", passthrough=passthrough, passthrough_authorize=True, **options),
    ]


def cookie(session):
    return {"cookie": f"sessionid={session}"}


async def check_site_decides(server, client, log, session):
    """alice may read user-alice, nobody else; deny-* is refused; each subscribe is sent
    once (the authorizing POST) and gets its unsubscribe."""
    await prepare(client, "user-alice", "deny-1")
    for transport in TRANSPORTS:
        result = await attempt(server, client, transport, "/auth/user-alice", cookie(session))
        assert result == ("ok", "to user-alice"), transport
        events = [await log.next(), await log.next()]
        assert [(e["type"], e["channel_id"], e["user"]) for e in events] == [
            ("subscribe", "user-alice", "alice"),
            ("unsubscribe", "user-alice", "alice"),
        ], transport
        code, reason = await attempt(server, client, transport, "/auth/user-alice")
        assert code == refused(transport), transport
        assert "only alice may subscribe" in reason
        assert (await log.next())["type"] == "subscribe"  # the site saw it, refused it...
        assert (await log.next())["type"] == "unsubscribe"  # ...and is told it is over
        code, reason = await attempt(server, client, transport, "/auth/deny-1", cookie(session))
        assert code == refused(transport)
        assert "denied by the site" in reason
        assert [(await log.next())["type"] for _ in range(2)] == ["subscribe", "unsubscribe"]

    # Multiplexed: every channel must be allowed; the allowed ones are unsubscribed again.
    for transport in ("eventsource", "websocket"):
        path = "/auth/user-alice,deny-1"
        code, reason = await attempt(server, client, transport, path, cookie(session))
        assert (code, "denied by the site" in reason) == (refused(transport), True)
        events = [await log.next() for _ in range(4)]
        assert [(e["type"], e["channel_id"]) for e in events[:2]] == [
            ("subscribe", "user-alice"),
            ("subscribe", "deny-1"),
        ]
        assert sorted((e["type"], e["channel_id"]) for e in events[2:]) == [
            ("unsubscribe", "deny-1"),
            ("unsubscribe", "user-alice"),
        ]

    # A long poll that waits: one subscribe, one unsubscribe after its message.
    first = await client.get("/auth/user-alice", headers=cookie(session))
    assert [(await log.next())["type"] for _ in range(2)] == ["subscribe", "unsubscribe"]
    async with anyio.create_task_group() as tg:
        result = {}

        async def wait():
            headers = {**cookie(session), **position(first)}
            result["r"] = await client.get("/auth/user-alice", headers=headers)

        tg.start_soon(wait)
        assert (await log.next())["type"] == "subscribe"
        await publish(client, "user-alice", "later")
    assert result["r"].text == "later"
    assert (await log.next())["type"] == "unsubscribe"

    # The WebSocket command: authorized per added channel, the connection stays up.
    url = ws_url(server, "/auth/user-alice")
    async with connect(url, additional_headers=cookie(session)) as ws:
        await ws.recv()
        await ws.recv()
        assert (await log.next())["type"] == "subscribe"
        await ws.send(json.dumps({"subscribe": "deny-2"}))
        error = json.loads(await ws.recv())
        assert (error["status"], error["error"]) == (403, "denied by the site")
        assert [(await log.next())["type"] for _ in range(2)] == ["subscribe", "unsubscribe"]
        await ws.send(json.dumps({"ping": 1}))
        assert json.loads(await ws.recv()) == {"type": "pong"}
    assert (await log.next())["type"] == "unsubscribe"


@pytest.mark.anyio
async def test_passthrough_authorizer_in_process(push_server_factory, site_db, free_tcp_port):
    address = f"127.0.0.1:{free_tcp_port}"
    server = push_server_factory(
        {"locations": auth_locations(f"http://{address}/passthrough")},
        "--allrequests",
        address=address,
        env={
            "PUSHSERVER_TEST_DB": site_db["PUSHSERVER_TEST_DB"],
            "PUSHSERVER_TEST_PRESENCE_CHANNEL": "log",
        },
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        log = PresenceLog(client, "/presence/log")
        with anyio.fail_after(60):
            await check_site_decides(server, client, log, site_db["session"])
    assert "/passthrough" not in server.log  # in-process


@pytest.mark.anyio
async def test_passthrough_authorizer_over_http(push_server_factory, site_db):
    site = push_server_factory(
        {"locations": auth_locations("http://127.0.0.1:9/unused")},
        "--allrequests",
        env={
            "PUSHSERVER_TEST_DB": site_db["PUSHSERVER_TEST_DB"],
            "PUSHSERVER_TEST_PRESENCE_CHANNEL": "log",
        },
    )
    push = push_server_factory({"locations": auth_locations(f"{site.url}/passthrough")})
    async with (
        httpx.AsyncClient(base_url=site.url, timeout=10) as site_client,
        httpx.AsyncClient(base_url=push.url, timeout=10) as client,
    ):
        log = PresenceLog(site_client, "/presence/log")
        with anyio.fail_after(60):
            await check_site_decides(push, client, log, site_db["session"])


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_passthrough_authorizer_timeout_and_unreachable(push_server_factory, transport):
    closed_port = free_port()  # nothing listens there
    with silent_server() as (hung_port, _):
        locations = [
            *auth_locations(f"http://127.0.0.1:{hung_port}/passthrough", authorize_timeout=0.5),
            subscriber(
                "/gone/",
                passthrough=f"http://127.0.0.1:{closed_port}/passthrough",
                passthrough_authorize=True,
            ),
        ]
        server = push_server_factory({"locations": locations})
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            await prepare(client, "c")
            with anyio.fail_after(20):
                code, reason = await attempt(server, client, transport, "/auth/c")
                assert code == refused(transport, 503)
                assert "the authorizer did not answer in time" in reason
                code, reason = await attempt(server, client, transport, "/gone/c")
                assert code == refused(transport, 503)
                assert "the authorizer cannot be reached" in reason


# -- settings ---------------------------------------------------------------------------------


def location_problems(**options):
    raw = {"locations": [{"type": "subscriber", "prefix": "/s/", **options}]}
    return {(p.id, p.key) for p in parse(raw)[1]}


def test_setting_errors():
    key = "PUSH_SERVER['locations'][0]"
    assert location_problems(passthrough_authorize="yes") == {
        ("pushserver.E060", f"{key}['passthrough_authorize']")
    }
    assert location_problems(passthrough_authorize=True) == {
        ("pushserver.E061", f"{key}['passthrough_authorize']")
    }
    assert location_problems(can_subscribe="nodots") == {
        ("pushserver.E062", f"{key}['can_subscribe']")
    }
    assert location_problems(can_subscribe=len) == {("pushserver.E062", f"{key}['can_subscribe']")}
    assert location_problems(signed=1) == {("pushserver.E063", f"{key}['signed']")}
    assert location_problems(can_subscribe=HOOK, authorize_timeout=-1) == {
        ("pushserver.E064", f"{key}['authorize_timeout']")
    }
    assert location_problems(authorize_timeout=3) == {
        ("pushserver.W060", f"{key}['authorize_timeout']")
    }
    config, problems = parse(
        {
            "locations": [
                subscriber(
                    "/s/",
                    passthrough="http://127.0.0.1:8000/passthrough",
                    passthrough_authorize=True,
                    can_subscribe=HOOK,
                    signed=True,
                    authorize_timeout=2,
                )
            ]
        }
    )
    assert problems == []
    location = config.locations[0]
    assert (location.passthrough_authorize, location.can_subscribe, location.signed) == (
        True,
        HOOK,
        True,
    )
    assert location.authorize_timeout == 2.0 and location.authorizes


@pytest.mark.parametrize(
    ("options", "check_id", "text"),
    [
        ({"can_subscribe": "tests.project.nothere.hook"}, "pushserver.E065", "cannot be imported"),
        ({"can_subscribe": "tests.project.authz.missing"}, "pushserver.E065", "no attribute"),
        ({"can_subscribe": "tests.project.authz.not_callable"}, "pushserver.E066", "callable"),
    ],
)
def test_hook_checks(options, check_id, text):
    messages = pushserver_messages(
        {"locations": [{"type": "subscriber", "prefix": "/s/", **options}]}
    )
    [message] = messages
    assert message.id == check_id and text in message.msg
    assert "['can_subscribe']" in message.msg


def test_signed_needs_a_secret_key():
    with override_settings(SECRET_KEY=""):
        messages = pushserver_messages(
            {"locations": [{"type": "subscriber", "prefix": "/s/", "signed": True}]}
        )
    [message] = messages
    assert message.id == "pushserver.E067" and "SECRET_KEY" in message.msg


def test_bad_hook_stops_runpushserver():
    server = PushServerProcess(
        "tests.project.settings",
        push_server={
            "locations": [
                {"type": "subscriber", "prefix": "/s/", "can_subscribe": "tests.project.x.y"}
            ]
        },
        cwd=str(ROOT),
    )
    with pytest.raises(RuntimeError) as info:
        server.start()
    output = str(info.value)
    assert "pushserver.E065" in output and "['can_subscribe']" in output
    assert "running at" not in output


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_hook_with_the_session_user(push_server_factory, site_db, transport):
    server = push_server_factory(
        {
            "locations": [
                {"type": "publisher", "prefix": "/publisher/"},
                subscriber("/mine/", can_subscribe="tests.project.authz.user_hook"),
            ]
        },
        env={"PUSHSERVER_TEST_DB": site_db["PUSHSERVER_TEST_DB"]},
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        await prepare(client, "mine-alice", "mine-bob")
        with anyio.fail_after(20):
            alice = cookie(site_db["session"])
            assert await attempt(server, client, transport, "/mine/mine-alice", alice) == (
                "ok",
                "to mine-alice",
            )
            for path, headers in [
                ("/mine/mine-bob", alice),
                ("/mine/mine-alice", {}),
                ("/mine/mine-alice", {"cookie": "sessionid=forged"}),
            ]:
                code, _ = await attempt(server, client, transport, path, headers)
                assert code == refused(transport), (path, headers)


@pytest.mark.anyio
@pytest.mark.parametrize("channel_id", ["a b", "a/b", "čšž €😀", "x?y#z%41", "<&>"])
async def test_channel_url_tag_signs_odd_ids(server, client, channel_id):
    from html import unescape

    from django.template import Context, Template

    await prepare(client, channel_id)
    push_settings = {**CONFIG, "subscriber_host": {"location": server.host}}
    template = Template(
        "{% load pushserver %}{% channel_url id signed=True %} {% channel_url id max_age=60 %}"
    )
    with override_settings(PUSH_SERVER=push_settings):
        html = template.render(Context({"id": channel_id}))
    for url in map(unescape, html.split(" ")):  # HTML-escaped, as {% channel_url %} is
        assert url.startswith(f"{server.url}/signed/") and "?sig=" in url
        response = await client.get(url)
        assert (response.status_code, response.text) == (200, f"to {channel_id}")
        unsigned = await client.get(url.partition("?")[0])
        assert unsigned.status_code == 403


# -- the authorizing POST's answer, from plain HTTP sites -------------------------------------

ANSWERS = {
    "length": b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\nno way!",
    "chunked": (
        b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n7\r\nno way!\r\n0\r\n\r\n"
    ),
    "until close": b"HTTP/1.0 403 Forbidden\r\n\r\nno way!",
    "allowed": b"HTTP/1.1 204 No Content\r\n\r\n",
}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("kind", list(ANSWERS))
async def test_authorize_reads_the_answer(kind):
    from pushserver.http import Request
    from pushserver.passthrough import PassthroughSender

    seen = []

    async def handle(stream):
        async with stream:
            data = b""
            while not data.endswith(b"authorize=1"):  # the whole form has arrived
                data += await stream.receive()
            seen.append(data)
            await stream.send(ANSWERS[kind])

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    sender = PassthroughSender()
    presence = sender(location_for(port))
    request = Request({"type": "http", "method": "GET", "headers": [(b"cookie", b"s=1")]})
    with anyio.fail_after(10):
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)
            async with sender:
                _, status, body = await presence.authorize(request, "c", 5)
            tg.cancel_scope.cancel()
    assert (status, body) == ((204, "") if kind == "allowed" else (403, "no way!"))
    [posted] = seen
    assert posted.startswith(b"POST /passthrough?x=1 HTTP/1.1\r\n")
    assert posted.endswith(b"\r\n\r\nchannel_id=c&subscribe=1&authorize=1")
    assert b"\r\ncookie: s=1\r\n" in posted
