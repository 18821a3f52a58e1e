"""One event stream or WebSocket on several channels; dynamic WebSocket (un)subscribe."""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import about_transports
from tests.transports.streams import connect, event_stream, last_id, publish, ws_frame, ws_url

BUFFER = 4

CONFIG = {
    "store": {"type": "memory", "max_messages": BUFFER},
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True, "ping_interval": 0},
        {"type": "subscriber", "prefix": "/strict/", "ping_interval": 0},
    ],
}






async def recv_json(ws):
    return json.loads(await ws.recv())


# -- server-sent events ---------------------------------------------------------------------


@pytest.mark.anyio
@about_transports("eventsource")
async def test_sse_multiplexed_compound_ids(client):
    with anyio.fail_after(10):
        async with event_stream(client, "/subscriber/mx-a,mx-b") as stream:
            await publish(client, "mx-a", "a0")
            first = await stream.event()
            a0 = await last_id(client, "mx-a")
            await publish(client, "mx-b", "b0")
            second = await stream.event()
            b0 = await last_id(client, "mx-b")
            await publish(client, "mx-a", "a1")
            third = await stream.event()
            a1 = await last_id(client, "mx-a")
    assert (first.data, first.id) == ("a0", f"[{a0}],0:-1")
    assert (second.data, second.id) == ("b0", f"{a0},[{b0}]")
    assert (third.data, third.id) == ("a1", f"[{a1}],{b0}")


@pytest.mark.anyio
@about_transports("eventsource")
async def test_sse_multiplexed_resume_covers_every_channel(client):
    await publish(client, "rs-a", "a0")
    a0 = await last_id(client, "rs-a")
    await publish(client, "rs-b", "b0")
    b0 = await last_id(client, "rs-b")
    await publish(client, "rs-a", "a1")
    await publish(client, "rs-b", "b1")
    with anyio.fail_after(10):
        async with event_stream(client, "/subscriber/rs-a,rs-b") as stream:
            events = await stream.events(4)
        # Resume after a0 and b0 (brackets are ignored): exactly a1 and b1 remain.
        async with event_stream(
            client, "/subscriber/rs-a,rs-b", last_event_id=f"{a0},[{b0}]"
        ) as stream:
            again = await stream.events(2)
            await publish(client, "rs-b", "b2")
            await publish(client, "rs-a", "a2")
            live = await stream.events(2)
            resume = live[-1].id
        async with event_stream(client, f"/subscriber/rs-a,rs-b?last_event_id={resume}") as stream:
            await publish(client, "rs-a", "a3")
            after = await stream.event()
    # Per channel in order; across channels oldest id first.
    assert [e.data for e in events if e.data.startswith("a")] == ["a0", "a1"]
    assert [e.data for e in events if e.data.startswith("b")] == ["b0", "b1"]
    assert sorted(e.data for e in again) == ["a1", "b1"]
    assert [e.data for e in live] == ["b2", "a2"]
    assert after.data == "a3"


@pytest.mark.anyio
@about_transports("eventsource")
async def test_sse_gap_on_one_channel_of_several(client):
    await publish(client, "gp-a", "a0")
    a0 = await last_id(client, "gp-a")
    for n in range(1, BUFFER + 2):
        await publish(client, "gp-a", f"a{n}")
    await publish(client, "gp-b", "b0")
    with anyio.fail_after(10):
        async with event_stream(
            client, "/subscriber/gp-a,gp-b", last_event_id=f"{a0},0:-1"
        ) as stream:
            gap = await stream.event()
            events = await stream.events(BUFFER + 1)
    assert (
        gap.event == "pushserver.gap" and gap.json["channel"] == "gp-a" and gap.json["after"] == a0
    )
    assert [e.data for e in events if e.data.startswith("a")] == ["a2", "a3", "a4", "a5"]
    assert [e.data for e in events if e.data.startswith("b")] == ["b0"]


@pytest.mark.anyio
@about_transports("eventsource")
async def test_sse_deleting_one_channel_keeps_the_others(client):
    for channel in ("dl-a", "dl-b"):
        assert (await client.put(f"/publisher/{channel}")).status_code == 200
    with anyio.fail_after(10):
        async with event_stream(client, "/strict/dl-a,dl-b") as stream:
            await client.delete("/publisher/dl-a")
            deleted = await stream.event()
            await publish(client, "dl-b", "still here")
            event = await stream.event()
            await client.delete("/publisher/dl-b")
            assert (await stream.event()).json == {"type": "deleted", "channel": "dl-b"}
            assert await stream.block() is None
    assert deleted.json == {"type": "deleted", "channel": "dl-a"}
    assert event.data == "still here"
    assert event.id.count(",") == 1  # the compound id keeps both positions


@pytest.mark.anyio
@about_transports("eventsource")
async def test_channel_list_limits_and_escapes(client):
    sse = {"accept": "text/event-stream"}
    many = ",".join(f"lim{n}" for n in range(256))
    response = await client.get(f"/subscriber/{many}", headers=sse)
    assert response.status_code == 400 and "at most 255 channels" in response.text
    with anyio.fail_after(20):
        async with event_stream(
            client, "/subscriber/" + ",".join(f"lim{n}" for n in range(255))
        ) as stream:
            await publish(client, "lim254", "last one")
            event = await stream.event()
    assert event.data == "last one" and event.id.count(",") == 254
    # %2C is a comma inside one channel id; a repeated channel counts once.
    await publish(client, "with%2Ccomma", "one channel")
    async with event_stream(client, "/subscriber/with%2Ccomma") as stream:
        event = await stream.event()
    assert event.data == "one channel" and "," not in event.id
    async with event_stream(client, "/subscriber/with%2Ccomma,with%2Ccomma") as stream:
        assert "," not in (await stream.event()).id
    response = await client.get("/subscriber/a,,b", headers=sse)
    assert response.status_code == 400 and "empty" in response.text


# -- WebSocket --------------------------------------------------------------------------------


@pytest.mark.anyio
@about_transports("websocket")
async def test_ws_multiplexed_frames_and_compound_resume(server, client):
    await publish(client, "wm-a", "a0")
    await publish(client, "wm-b", "b0")
    await publish(client, "wm-a", "a1")
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/subscriber/wm-a,wm-b")) as ws:
            frames = [ws_frame(await ws.recv()) for _ in range(3)]
        by_channel = {}
        for head, body in frames:
            by_channel.setdefault(head["channel"], []).append((head["id"], body))
        assert [b for _, b in by_channel["wm-a"]] == ["a0", "a1"]
        assert [b for _, b in by_channel["wm-b"]] == ["b0"]
        resume = f"{by_channel['wm-a'][0][0]},{by_channel['wm-b'][0][0]}"
        async with connect(ws_url(server, f"/subscriber/wm-a,wm-b?last_event_id={resume}")) as ws:
            head, body = ws_frame(await ws.recv())
            await publish(client, "wm-b", "b1")
            live = ws_frame(await ws.recv())
    assert (head["channel"], body) == ("wm-a", "a1")
    assert (live[0]["channel"], live[1]) == ("wm-b", "b1")


@pytest.mark.anyio
@about_transports("websocket")
async def test_ws_subscribe_and_unsubscribe_on_the_open_connection(server, client):
    await publish(client, "dyn-b", "b0")
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/subscriber/dyn-a")) as ws:
            await ws.send(json.dumps({"subscribe": "dyn-b"}))
            assert await recv_json(ws) == {"type": "subscribed", "channel": "dyn-b"}
            head, body = ws_frame(await ws.recv())  # b's retained message follows the ack
            assert (head["channel"], body) == ("dyn-b", "b0")
            await publish(client, "dyn-a", "a0")
            await publish(client, "dyn-b", "b1")
            got = [ws_frame(await ws.recv()) for _ in range(2)]
            assert [(h["channel"], b) for h, b in got] == [("dyn-a", "a0"), ("dyn-b", "b1")]

            await ws.send(json.dumps({"unsubscribe": "dyn-a"}))
            assert await recv_json(ws) == {"type": "unsubscribed", "channel": "dyn-a"}
            await publish(client, "dyn-a", "a1 (not for us)")
            await publish(client, "dyn-b", "b2")
            head, body = ws_frame(await ws.recv())
            assert (head["channel"], body) == ("dyn-b", "b2")
            # Subscribed again from where it left off: a1 comes, nothing repeats.
            a0 = got[0][0]["id"]
            await ws.send(json.dumps({"subscribe": "dyn-a", "last_event_id": a0}))
            assert await recv_json(ws) == {"type": "subscribed", "channel": "dyn-a"}
            head, body = ws_frame(await ws.recv())
            assert (head["channel"], body) == ("dyn-a", "a1 (not for us)")
            # Subscribing twice is harmless.
            await ws.send(json.dumps({"subscribe": "dyn-a"}))
            assert await recv_json(ws) == {"type": "subscribed", "channel": "dyn-a"}
            await ws.send('{"ping": 1}')
            assert await recv_json(ws) == {"type": "pong"}
    info = await client.get("/publisher/dyn-a", headers={"accept": "application/json"})
    with anyio.fail_after(10):
        while info.json()["subscribers"] != 0:  # the connection's subscriptions are gone
            info = await client.get("/publisher/dyn-a", headers={"accept": "application/json"})


@pytest.mark.anyio
@about_transports("websocket")
async def test_ws_subscribe_refusals(server, client):
    assert (await client.put("/publisher/sr-base")).status_code == 200
    with anyio.fail_after(20):
        async with connect(ws_url(server, "/strict/sr-base")) as ws:
            await ws.send(json.dumps({"subscribe": "sr-missing"}))
            assert await recv_json(ws) == {
                "type": "error",
                "error": "no such channel",
                "channel": "sr-missing",
            }
        many = ",".join(f"sl{n}" for n in range(255))
        async with connect(ws_url(server, f"/subscriber/{many}")) as ws:
            await ws.send(json.dumps({"subscribe": "one-too-many"}))
            assert await recv_json(ws) == {
                "type": "error",
                "error": "at most 255 channels per connection",
                "channel": "one-too-many",
            }


@pytest.mark.anyio
@about_transports("websocket")
async def test_ws_deleting_one_channel_keeps_the_connection(server, client):
    for channel in ("wd-a", "wd-b"):
        assert (await client.put(f"/publisher/{channel}")).status_code == 200
    with anyio.fail_after(10):
        async with connect(ws_url(server, "/strict/wd-a,wd-b")) as ws:
            await client.delete("/publisher/wd-a")
            assert await recv_json(ws) == {"type": "deleted", "channel": "wd-a"}
            await publish(client, "wd-b", "alive")
            assert ws_frame(await ws.recv())[1] == "alive"
            await client.delete("/publisher/wd-b")
            assert await recv_json(ws) == {"type": "deleted", "channel": "wd-b"}
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
    assert closed.value.rcvd.code == 4410


# -- passthrough presence -------------------------------------------------------------------


@pytest.mark.anyio
@about_transports("eventsource", "websocket")
async def test_passthrough_presence_for_streams(push_server_factory, free_tcp_port):
    """Each channel of an event stream or WebSocket is reported subscribed while it is
    streamed and unsubscribed after, dynamic WebSocket channels included."""
    address = f"127.0.0.1:{free_tcp_port}"
    locations = [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "subscriber", "prefix": "/presence/", "create_on_get": True, "ping_interval": 0},
        {
            "type": "subscriber",
            "prefix": "/updates/",
            "create_on_get": True,
            "passthrough": f"http://{address}/passthrough",
        },
    ]
    server = push_server_factory(
        {"locations": locations},
        "--allrequests",
        address=address,
        env={"PUSHSERVER_TEST_PRESENCE_CHANNEL": "log"},
    )
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        with anyio.fail_after(20):
            async with event_stream(client, "/presence/log") as log:

                async def reports(count: int) -> set[tuple[str, str]]:
                    return {(e.json["type"], e.json["channel_id"]) for e in await log.events(count)}

                async with event_stream(client, "/updates/p-a,p-b"):
                    assert await reports(2) == {("subscribe", "p-a"), ("subscribe", "p-b")}
                assert await reports(2) == {("unsubscribe", "p-a"), ("unsubscribe", "p-b")}

                async with connect(ws_url(server, "/updates/p-c")) as ws:
                    assert await reports(1) == {("subscribe", "p-c")}
                    await ws.send(json.dumps({"subscribe": "p-d"}))
                    assert await recv_json(ws) == {"type": "subscribed", "channel": "p-d"}
                    assert await reports(1) == {("subscribe", "p-d")}
                    await ws.send(json.dumps({"unsubscribe": "p-d"}))
                    assert await recv_json(ws) == {"type": "unsubscribed", "channel": "p-d"}
                    assert await reports(1) == {("unsubscribe", "p-d")}
                assert await reports(1) == {("unsubscribe", "p-c")}
