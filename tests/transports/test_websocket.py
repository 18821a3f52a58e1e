"""WebSocket subscribers against a real runpushserver, with the websockets client."""

from __future__ import annotations

import json
import signal
import socket

import anyio
import httpx
import pytest

from pushserver.transports.websocket import NCHAN_META, PUSHSERVER_V1
from tests.conftest import about_transports
from tests.transports.streams import (
    closed_with,
    connect,
    last_id,
    longpoll_id,
    publish,
    ws_frame,
    ws_url,
)

pytestmark = about_transports("websocket")

BUFFER = 4

CONFIG = {
    "store": {"type": "memory", "max_messages": BUFFER},
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True, "ping_interval": 0},
        {"type": "subscriber", "prefix": "/strict/", "ping_interval": 0},
        {"type": "subscriber", "prefix": "/pings/", "create_on_get": True, "ping_interval": 0.2},
        {
            "type": "subscriber",
            "prefix": "/polls/",
            "create_on_get": True,
            "transports": ["longpoll", "eventsource"],
        },
        {
            "type": "subscriber",
            "prefix": "/origin/",
            "create_on_get": True,
            "allow_origin": "http://ok.example",
        },
    ],
}








@pytest.mark.anyio
@about_transports("websocket", "longpoll")
async def test_text_and_binary_frames(server, client):
    await publish(client, "frames", "hello", x_eventsource_event="greeting")
    await publish(client, "frames", '{"a": 1}', content_type="application/json; charset=utf-8")
    await publish(client, "frames", b"\x00\x01\xff", content_type="application/octet-stream")
    await publish(client, "frames", b"not utf-8 \xff", content_type="text/plain")
    polled = await client.get("/subscriber/frames")
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/subscriber/frames")) as ws:
            frames = [await ws.recv() for _ in range(4)]
    assert [type(f) for f in frames] == [str, str, bytes, bytes]
    parsed = [ws_frame(f) for f in frames]
    head, body = parsed[0]
    assert head == {
        "id": longpoll_id(polled),
        "channel": "frames",
        "content-type": "text/plain",
        "event": "greeting",
    }
    assert body == "hello"
    assert parsed[1] == (
        {
            "id": parsed[1][0]["id"],
            "channel": "frames",
            "content-type": "application/json; charset=utf-8",
        },
        '{"a": 1}',
    )
    assert (
        parsed[2][1] == b"\x00\x01\xff"
        and parsed[2][0]["content-type"] == "application/octet-stream"
    )
    assert parsed[3][1] == b"not utf-8 \xff"
    ids = [tuple(map(int, h["id"].split(":"))) for h, _ in parsed]
    assert ids == sorted(ids) and len(set(ids)) == 4


@pytest.mark.anyio
async def test_live_messages_in_order(server, client):
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/subscriber/live")) as ws:
            for n in range(20):
                await publish(client, "live", f"m{n}")
            bodies = [ws_frame(await ws.recv())[1] for _ in range(20)]
    assert bodies == [f"m{n}" for n in range(20)]


@pytest.mark.anyio
async def test_resume_exactly_after_last_event_id(server, client):
    for n in range(3):
        await publish(client, "resume", f"m{n}")
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/subscriber/resume")) as ws:
            first = ws_frame(await ws.recv())[0]["id"]
        async with connect(ws_url(server, f"/subscriber/resume?last_event_id={first}")) as ws:
            again = [ws_frame(await ws.recv())[1] for _ in range(2)]
            await publish(client, "resume", "m3")
            live = ws_frame(await ws.recv())[1]
    assert again == ["m1", "m2"] and live == "m3"


@pytest.mark.anyio
async def test_gap_frame_then_oldest_retained(server, client):
    await publish(client, "gap", "m0")
    first = await last_id(client, "gap")
    for n in range(1, BUFFER + 3):
        await publish(client, "gap", f"m{n}")
    with anyio.fail_after(10):
        async with connect(ws_url(server, f"/subscriber/gap?last_event_id={first}")) as ws:
            gap = json.loads(await ws.recv())
            frames = [ws_frame(await ws.recv()) for _ in range(BUFFER)]
    assert gap == {"type": "gap", "channel": "gap", "after": first, "next": frames[0][0]["id"]}
    assert [body for _, body in frames] == ["m3", "m4", "m5", "m6"]


@pytest.mark.anyio
async def test_delete_closes_with_4410(server, client):
    assert (await client.put("/publisher/doomed")).status_code == 200
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/strict/doomed")) as ws:
            await client.delete("/publisher/doomed")
            assert json.loads(await ws.recv()) == {"type": "deleted", "channel": "doomed"}
            assert await closed_with(ws) == (4410, "the channel was deleted")


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "code", "reason"),
    [
        ("/strict/missing", 4404, "no such channel: missing"),
        ("/subscriber/x?last_event_id=bad", 4400, "not a message id: 'bad'"),
        (
            "/subscriber/x?last_event_id=1:0,2:0",
            4400,
            "the last event id names 2 position(s) for 1 channel(s)",
        ),
        ("/subscriber/bad%zz", 4400, "malformed percent-encoding in the channel id"),
        ("/polls/x", 4403, "WebSocket is not enabled here"),
    ],
)
async def test_refusals_have_documented_close_codes(server, client, path, code, reason):
    with anyio.fail_after(10):
        async with connect(ws_url(server, path)) as ws:
            assert await closed_with(ws) == (code, reason)
    # The server keeps serving.
    async with connect(ws_url(server, "/subscriber/after-refusal")) as ws:
        await ws.send('{"ping": 1}')
        assert json.loads(await ws.recv()) == {"type": "pong"}


@pytest.mark.anyio
async def test_origin_checked_against_allow_origin(server):
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/origin/o"), origin="http://evil.example") as ws:
            assert await closed_with(ws) == (4403, "this Origin is not allowed")
        async with connect(ws_url(server, "/origin/o"), origin="http://ok.example") as ws:
            await ws.send('{"ping": 1}')
            assert json.loads(await ws.recv()) == {"type": "pong"}


@pytest.mark.anyio
async def test_keepalive_ping_frames_and_pongs(server):
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/pings/k"), ping_interval=None) as ws:
            frames = [json.loads(await ws.recv()) for _ in range(2)]
            assert frames == [{"type": "ping"}, {"type": "ping"}]
            pong = await ws.ping()  # a protocol-level ping, answered by the server
            await pong
            await ws.send('{"ping": true}')
            while (frame := json.loads(await ws.recv())) == {"type": "ping"}:
                pass
            assert frame == {"type": "pong"}


@pytest.mark.anyio
async def test_bad_commands_get_error_frames(server):
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/subscriber/cmd")) as ws:
            for command, error in [
                ("not json", "a command is a JSON object"),
                ("[1]", "a command is a JSON object"),
                ('{"dance": 1}', "unknown command"),
                ('{"subscribe": 3}', "'subscribe' takes a channel id string"),
                ('{"subscribe": "a", "last_event_id": "x"}', "not a message id"),
                ("x" * 9000, "a command is at most 8192 characters"),
            ]:
                await ws.send(command)
                frame = json.loads(await ws.recv())
                assert frame["type"] == "error" and error in frame["error"], (command, frame)
            await ws.send(b"\xff")
            assert json.loads(await ws.recv())["error"] == "a command is UTF-8 JSON text"
            await ws.send('{"ping": 1}')
            assert json.loads(await ws.recv()) == {"type": "pong"}


@pytest.mark.anyio
async def test_websocket_restricted_by_transport_option(push_server_factory):
    config = {"locations": CONFIG["locations"][:2]}
    server = push_server_factory(config, "--transport", "longpoll", "--transport", "eventsource")
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/subscriber/t")) as ws:
            assert await closed_with(ws) == (4403, "WebSocket is not enabled here")


@pytest.mark.anyio
@pytest.mark.parametrize("offered", [[PUSHSERVER_V1], None, [NCHAN_META]])
async def test_server_shutdown_closes_with_1001(push_server_factory, offered):
    server = push_server_factory({"locations": CONFIG["locations"][:2]})
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/subscriber/bye"), subprotocols=offered) as ws:
            async with httpx.AsyncClient(base_url=server.url) as client:
                await publish(client, "bye", "subscribed")  # once received, it is
            assert (await ws.recv()).endswith("subscribed")
            server.process.send_signal(signal.SIGTERM)
            assert await closed_with(ws) == (1001, "the server is shutting down")
    assert await anyio.to_thread.run_sync(server.process.wait, 10) == 0


@pytest.mark.anyio
@about_transports("eventsource", "websocket")
async def test_event_streams_and_websockets_on_trio(push_server_factory):
    from tests.transports.streams import event_stream

    server = push_server_factory({"locations": CONFIG["locations"][:2]}, "--loop", "trio")
    async with httpx.AsyncClient(base_url=server.url) as client:
        await publish(client, "trio", "hello")
        with anyio.fail_after(10):
            async with event_stream(client, "/subscriber/trio") as stream:
                assert (await stream.event()).data == "hello"
            async with connect(ws_url(server, "/subscriber/trio")) as ws:
                assert ws_frame(await ws.recv())[1] == "hello"
                await ws.send(json.dumps({"subscribe": "trio-2"}))
                assert json.loads(await ws.recv()) == {"type": "subscribed", "channel": "trio-2"}
                await client.delete("/publisher/trio")
                assert json.loads(await ws.recv()) == {"type": "deleted", "channel": "trio"}
                await publish(client, "trio-2", "still open")
                assert ws_frame(await ws.recv())[1] == "still open"


# -- the modes without pushserver.v1: plain (no subprotocol) and ws+meta.nchan ------------


@pytest.mark.anyio
@pytest.mark.parametrize("offered", [None, ["chat", "v2.stomp"]])
async def test_plain_mode_sends_the_bodies_alone(server, client, offered):
    channel = f"plain-{len(offered or ())}"
    await publish(client, channel, '{"a": 1}', content_type="application/json")
    await publish(client, channel, b"\x00\x01\xff", content_type="application/octet-stream")
    await publish(client, channel, b"not utf-8 \xff", content_type="text/plain")
    with anyio.fail_after(10):
        async with connect(ws_url(server, f"/subscriber/{channel}"), subprotocols=offered) as ws:
            assert ws.subprotocol is None
            frames = [await ws.recv() for _ in range(3)]
            # A command is ignored: no reply, no close; the next frame is the next message.
            await ws.send('{"ping": 1}')
            await ws.send('{"subscribe": "other"}')
            await ws.send(b'\xff{"ping": 1}')  # binary, not UTF-8: ignored all the same
            await ws.send("x" * 100_000)  # nor is a long frame read as anything
            await publish(client, channel, "<p>live</p>", content_type="text/html")
            live = await ws.recv()
    assert frames == ['{"a": 1}', b"\x00\x01\xff", b"not utf-8 \xff"]
    assert json.loads(frames[0]) == {"a": 1}
    assert live == "<p>live</p>"


@pytest.mark.anyio
@about_transports("websocket", "longpoll")
async def test_plain_mode_resumes_after_last_event_id(server, client):
    for n in range(3):
        await publish(client, "plain-resume", f"m{n}")
    response = await client.get("/subscriber/plain-resume")  # long-poll: the first one
    with anyio.fail_after(10):
        url = ws_url(server, f"/subscriber/plain-resume?last_event_id={longpoll_id(response)}")
        async with connect(url, subprotocols=None) as ws:
            assert [await ws.recv() for _ in range(2)] == ["m1", "m2"]


@pytest.mark.anyio
async def test_plain_mode_closes_on_delete_and_on_gap(server, client):
    assert (await client.put("/publisher/plain-doomed")).status_code == 200
    await publish(client, "plain-gap", "m0")
    first = await last_id(client, "plain-gap")
    for n in range(1, BUFFER + 3):
        await publish(client, "plain-gap", f"m{n}")
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/strict/plain-doomed"), subprotocols=None) as ws:
            await publish(client, "plain-doomed", "before")
            assert await ws.recv() == "before"
            await client.delete("/publisher/plain-doomed")
            # No deleted frame: the close code says it.
            assert await closed_with(ws) == (4410, "the channel was deleted")
        url = ws_url(server, f"/subscriber/plain-gap?last_event_id={first}")
        async with connect(url, subprotocols=None) as ws:
            assert await closed_with(ws) == (4416, "messages after the position are gone")


@pytest.mark.anyio
@pytest.mark.parametrize("offered", [(), (NCHAN_META,)])
async def test_plain_mode_keepalive_is_ping_frames(server, offered):
    """Plain and ws+meta.nchan: through hypercorn_fixes.send_websocket_pings, which this
    fails without (tests/test_websocket_pings.py: how it fails safe)."""
    from wsproto.events import Ping

    from tests.transports.test_backpressure import RawWebSocket

    host, port = server.host.rsplit(":", 1)

    def read() -> list:
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            ws = RawWebSocket(sock, f"/pings/plain-k{len(offered)}", subprotocols=offered)
            return ws.frames(lambda frame: isinstance(frame, Ping))

    with anyio.fail_after(15):
        frames = await anyio.to_thread.run_sync(read)
    assert len(frames) == 1 and isinstance(frames[0], Ping)  # nothing in-band before it


@pytest.mark.anyio
@about_transports("websocket", "longpoll")
async def test_nchan_mode_frames_are_nchans(server, client):
    await publish(client, "meta", "hello", x_eventsource_event="greeting")
    await publish(client, "meta", b"\x89PNG", content_type="image/png")
    polled = await client.get("/subscriber/meta")
    offered = ["chat", NCHAN_META, PUSHSERVER_V1]  # the first one the server speaks
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/subscriber/meta"), subprotocols=offered) as ws:
            assert ws.subprotocol == NCHAN_META
            text, binary = [await ws.recv() for _ in range(2)]
            await ws.send("ignored")  # nchan's clients send nothing; ignored all the same
            await publish(client, "meta", "live")
            live = await ws.recv()
    first = longpoll_id(polled)
    assert text == f"id: {first}\ncontent-type: text/plain\n\nhello"
    head, body = binary.split(b"\n\n", 1)
    assert body == b"\x89PNG" and head.startswith(b"id: ")
    assert head.endswith(b"\ncontent-type: image/png")
    assert live.startswith("id: ") and live.endswith("\ncontent-type: text/plain\n\nlive")


@pytest.mark.anyio
async def test_nchan_mode_resumes_with_its_ids_and_skips_gaps(server, client):
    for name in ("nm-a", "nm-b"):
        await publish(client, name, f"{name} 0")
    url = ws_url(server, "/subscriber/nm-a,nm-b")
    with anyio.fail_after(10):
        async with connect(url, subprotocols=[NCHAN_META]) as ws:
            frames = [await ws.recv() for _ in range(2)]
        ids = [frame.split("\n", 1)[0].removeprefix("id: ") for frame in frames]
        # Compound ids, as nchan and event streams: the channel of the message in brackets.
        assert [frame.rsplit("\n", 1)[1] for frame in frames] == ["nm-a 0", "nm-b 0"]
        assert ids[1].startswith(ids[0].split(",")[0].strip("[]") + ",[")
        await publish(client, "nm-a", "nm-a 1")
        async with connect(f"{url}?last_event_id={ids[1]}", subprotocols=[NCHAN_META]) as ws:
            assert (await ws.recv()).endswith("\n\nnm-a 1")
        # A gap: nchan goes on with the oldest retained message, and so does this mode.
        first = await last_id(client, "nm-a")
        for n in range(2, BUFFER + 4):
            await publish(client, "nm-a", f"nm-a {n}")
        gap_url = ws_url(server, f"/subscriber/nm-a?last_event_id={first}")
        async with connect(gap_url, subprotocols=[NCHAN_META]) as ws:
            assert (await ws.recv()).endswith(f"\n\nnm-a {BUFFER + 4 - BUFFER}")


@pytest.mark.anyio
async def test_nchan_mode_delete_and_refusal_close_codes(server, client):
    assert (await client.put("/publisher/nm-doomed")).status_code == 200
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/strict/nm-doomed"), subprotocols=[NCHAN_META]) as ws:
            await client.delete("/publisher/nm-doomed")
            assert await closed_with(ws) == (4410, "the channel was deleted")
        # A refusal echoes the subprotocol too: a browser would otherwise not see the code.
        async with connect(ws_url(server, "/strict/nm-none"), subprotocols=[NCHAN_META]) as ws:
            assert ws.subprotocol == NCHAN_META
            assert await closed_with(ws) == (4404, "no such channel: nm-none")


@pytest.mark.browser
def test_plain_websocket_in_chromium(server):
    """``new WebSocket(url)``: a message frame, a subscribe command, a close code."""
    import os

    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("/usr/bin/chromium is missing")
    from playwright.sync_api import sync_playwright

    with httpx.Client(base_url=server.url) as client:
        headers = {"content-type": "text/plain"}
        assert client.post("/publisher/browser-ws", content="hi", headers=headers).is_success
        assert client.put("/publisher/browser-doomed").is_success
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=[*args, "--disable-component-update"]
        )
        try:
            page = browser.new_page()
            page.goto(server.url + "/no-such-page")
            got = page.evaluate(
                """() => new Promise((resolve, reject) => {
                    const ws = new WebSocket(
                        `ws://${location.host}/subscriber/browser-ws`, ["pushserver.v1"]
                    );
                    const got = [];
                    ws.onmessage = (e) => {
                        got.push(e.data);
                        if (got.length === 1) ws.send(JSON.stringify({ping: 1}));
                        if (got.length === 2) ws.close(1000);
                    };
                    ws.onclose = (e) => resolve({got, code: e.code});
                    setTimeout(() => reject(new Error("timed out")), 10000);
                })"""
            )
            closed = page.evaluate(
                """() => new Promise((resolve) => {
                    const ws = new WebSocket(`ws://${location.host}/strict/no-such-channel`);
                    ws.onclose = (e) => resolve([e.code, e.reason]);
                })"""
            )
        finally:
            browser.close()
    head, body = ws_frame(got["got"][0])
    assert body == "hi" and head["channel"] == "browser-ws"
    assert json.loads(got["got"][1]) == {"type": "pong"}
    assert closed == [4404, "no such channel: no-such-channel"]


# -- against nchan itself: Debian's nginx with libnginx-mod-nchan, on a free loopback port ----


@pytest.mark.anyio
async def test_frames_match_nchans_own(server, client):
    """The same messages through nchan and through pushserver, read in the plain and the
    ``ws+meta.nchan`` modes: the same frames (text or binary alike), ids aside."""
    import re

    from bench.nchan import Nchan, available
    from pushserver.testing import free_port

    if not available():
        pytest.skip("nginx with libnginx-mod-nchan is not installed")
    published = [
        (b'{"a": 1}', "application/json"),
        (b"line one\nline two", "text/plain"),
        (b"\x00\x01\xff", "application/octet-stream"),
    ]
    nchan = Nchan(free_port(), cpu=0, nofile=1024).start()
    try:
        base = f"http://127.0.0.1:{nchan.port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as theirs:
            for body, content_type in published:
                headers = {"content-type": content_type}
                response = await theirs.post("/pub/same", content=body, headers=headers)
                assert response.status_code in (201, 202), response.text
        for body, content_type in published:
            await publish(client, "same", body, content_type=content_type)
        got = {}
        for name, url in (
            ("nchan", f"ws://127.0.0.1:{nchan.port}/sub/same"),
            ("pushserver", ws_url(server, "/subscriber/same")),
        ):
            for offered in (None, [NCHAN_META]):
                with anyio.fail_after(10):
                    async with connect(url, subprotocols=offered) as ws:
                        frames = [await ws.recv() for _ in published]
                        got[name, ws.subprotocol] = frames
    finally:
        nchan.stop()

    def without_ids(frame):
        if isinstance(frame, bytes):
            return re.sub(rb"\Aid: [0-9]+:[0-9]+\n", b"id: *\n", frame)
        return re.sub(r"\Aid: [0-9]+:[0-9]+\n", "id: *\n", frame)

    assert got["pushserver", None] == got["nchan", None]
    assert got["pushserver", None] == ['{"a": 1}', "line one\nline two", b"\x00\x01\xff"]
    ours = [without_ids(frame) for frame in got["pushserver", NCHAN_META]]
    assert ours == [without_ids(frame) for frame in got["nchan", NCHAN_META]]
    assert ours[0] == 'id: *\ncontent-type: application/json\n\n{"a": 1}'


@pytest.mark.anyio
@pytest.mark.parametrize("offered", [None, [NCHAN_META], [PUSHSERVER_V1]])
async def test_a_close_reason_is_cut_to_123_bytes_of_utf8(server, offered):
    """A refusal naming a long non-ASCII channel id: RFC 6455 allows a close reason of 123
    bytes, so it is cut there, on a character boundary, and the client gets the code."""
    from urllib.parse import quote

    channel = "é" * 80  # 160 bytes in UTF-8, 80 characters
    with anyio.fail_after(10):
        async with connect(ws_url(server, f"/strict/{quote(channel)}"), subprotocols=offered) as ws:
            code, reason = await closed_with(ws)
    assert code == 4404
    assert len(reason.encode()) in (122, 123)  # a two-byte character does not fit in the 123rd
    assert f"no such channel: {channel}".startswith(reason)
