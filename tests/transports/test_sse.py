"""Server-sent events against a real runpushserver."""

from __future__ import annotations

import signal

import anyio
import httpx
import pytest

from tests.conftest import about_transports
from tests.transports.streams import event_stream, last_id, longpoll_id, publish

pytestmark = about_transports("eventsource")

BUFFER = 4  # messages each channel retains: the gap test outruns it

CONFIG = {
    "store": {"type": "memory", "max_messages": BUFFER},
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {
            "type": "subscriber",
            "prefix": "/subscriber/",
            "create_on_get": True,
            "ping_interval": 0.2,
        },
        {"type": "subscriber", "prefix": "/strict/", "ping_interval": 0},
        {
            "type": "subscriber",
            "prefix": "/polls/",
            "create_on_get": True,
            "transports": ["longpoll"],
        },
        {
            "type": "subscriber",
            "prefix": "/streams/",
            "create_on_get": True,
            "transports": ["eventsource"],
        },
        {
            "type": "subscriber",
            "prefix": "/origins/",
            "create_on_get": True,
            "allow_origin": "http://a.example http://b.example",
        },
    ],
}




@pytest.mark.anyio
async def test_headers_and_opening(client):
    async with client.stream(
        "GET", "/subscriber/h", headers={"accept": "text/event-stream"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["access-control-allow-origin"] == "*"
        assert "content-length" not in response.headers
        lines = response.aiter_lines()
        assert [await anext(lines) for _ in range(3)] == [": hi", "retry: 3000", ""]


@pytest.mark.anyio
@about_transports("eventsource", "longpoll")
async def test_messages_in_order_with_long_poll_ids(client):
    await publish(client, "order", "first")
    await publish(client, "order", "two\nlines\r\nand\rthree", x_eventsource_event="tick")
    await publish(client, "order", "")
    polled = await client.get("/subscriber/order")
    with anyio.fail_after(10):
        async with event_stream(client, "/subscriber/order") as stream:
            first, second, third = await stream.events(3)
            await publish(client, "order", "live")
            live = await stream.event()
    assert first.id == longpoll_id(polled) and first.data == "first" and first.event is None
    assert second.data == "two\nlines\nand\nthree" and second.event == "tick"
    assert third.data == ""
    assert live.data == "live" and live.id == await last_id(client, "order")
    ids = [first.id, second.id, third.id, live.id]
    assert [tuple(map(int, i.split(":"))) for i in ids] == sorted(
        tuple(map(int, i.split(":"))) for i in ids
    )
    assert len(set(ids)) == 4


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_exactly_after_the_id(client, how):
    channel = f"resume-{how}"
    for n in range(3):
        await publish(client, channel, f"m{n}")
    with anyio.fail_after(10):
        async with event_stream(client, f"/subscriber/{channel}") as stream:
            events = await stream.events(3)
        resume = events[0].id
        path = f"/subscriber/{channel}"
        headers = {"last_event_id": resume} if how == "header" else {}
        if how == "query":
            path += f"?last_event_id={resume}"
        async with event_stream(client, path, **headers) as stream:
            again = await stream.events(2)
            await publish(client, channel, "m3")
            live = await stream.event()
    assert [e.data for e in again] == ["m1", "m2"]
    assert [e.id for e in again] == [e.id for e in events[1:]]
    assert live.data == "m3"


@pytest.mark.anyio
async def test_resume_from_the_newest_id_waits_for_new_messages(client):
    await publish(client, "newest", "old")
    newest = await last_id(client, "newest")
    with anyio.fail_after(10):
        async with event_stream(client, "/subscriber/newest", last_event_id=newest) as stream:
            await publish(client, "newest", "new")
            event = await stream.event()
    assert event.data == "new"


@pytest.mark.anyio
async def test_gap_event_then_oldest_retained(client):
    await publish(client, "gap", "m0")
    first = await last_id(client, "gap")
    for n in range(1, BUFFER + 3):  # m1 .. m6: m1 and m2 leave the buffer
        await publish(client, "gap", f"m{n}")
    with anyio.fail_after(10):
        async with event_stream(client, "/subscriber/gap", last_event_id=first) as stream:
            gap = await stream.event()
            events = await stream.events(BUFFER)
    assert gap.event == "pushserver.gap" and gap.id is None
    assert gap.json == {"type": "gap", "channel": "gap", "after": first, "next": events[0].id}
    assert [e.data for e in events] == ["m3", "m4", "m5", "m6"]


@pytest.mark.anyio
async def test_delete_sends_deleted_event_and_ends_the_stream(client):
    assert (await client.put("/publisher/doomed")).status_code == 200
    with anyio.fail_after(10):
        async with event_stream(client, "/strict/doomed") as stream:
            assert (await client.delete("/publisher/doomed")).status_code == 200
            deleted = await stream.event()
            assert await stream.block() is None  # the stream ended
    assert deleted.event == "pushserver.deleted"
    assert deleted.json == {"type": "deleted", "channel": "doomed"}
    # What EventSource does next: reconnect, and stop on the 404.
    response = await client.get("/strict/doomed", headers={"accept": "text/event-stream"})
    assert response.status_code == 404


@pytest.mark.anyio
async def test_pings_on_the_configured_interval(client):
    with anyio.fail_after(5):
        async with event_stream(client, "/subscriber/pings") as stream:
            pings = [await stream.block() for _ in range(3)]
    assert all(p.comments == ["ping"] and p.data is None for p in pings)


@pytest.mark.anyio
async def test_errors_before_the_stream(client):
    sse = {"accept": "text/event-stream"}
    response = await client.get("/strict/missing", headers=sse)
    assert response.status_code == 404 and "no such channel" in response.text
    response = await client.get("/subscriber/x", headers={**sse, "last-event-id": "nope"})
    assert response.status_code == 400 and "not a message id" in response.text
    response = await client.get("/subscriber/x?last_event_id=1:0,2:0", headers=sse)
    assert response.status_code == 400
    response = await client.get("/subscriber/bad%zz", headers=sse)
    assert response.status_code == 400
    response = await client.get("/subscriber/line%0Abreak", headers=sse)
    assert response.status_code == 400
    # The server keeps serving.
    async with event_stream(client, "/subscriber/still-fine"):
        pass


@pytest.mark.anyio
async def test_head_answers_headers_only(client):
    response = await client.head("/subscriber/head", headers={"accept": "text/event-stream"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"


@pytest.mark.anyio
async def test_binary_body_is_sent_as_text(client):
    await publish(client, "binary", b"ok \xff end", content_type="application/octet-stream")
    with anyio.fail_after(10):
        async with event_stream(client, "/subscriber/binary") as stream:
            event = await stream.event()
    assert event.data == "ok \ufffd end"


@pytest.mark.anyio
@about_transports("eventsource", "longpoll")
async def test_location_without_eventsource_serves_long_poll(client):
    await publish(client, "polled", "hello")
    response = await client.get("/polls/polled", headers={"accept": "text/event-stream"})
    assert response.status_code == 200
    assert response.text == "hello" and response.headers["etag"] == "0"


@pytest.mark.anyio
async def test_location_without_longpoll_refuses_plain_gets(client):
    response = await client.get("/streams/only")
    assert response.status_code == 403 and "eventsource" in response.text
    async with event_stream(client, "/streams/only"):
        pass


@pytest.mark.anyio
async def test_cors_names_the_requesting_origin(client):
    headers = {"accept": "text/event-stream", "origin": "http://b.example"}
    async with client.stream("GET", "/origins/c", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "http://b.example"


@pytest.mark.anyio
async def test_transport_option_restricts_the_process(push_server_factory):
    config = {"locations": CONFIG["locations"][:2]}
    polls_only = push_server_factory(config, "--transport", "longpoll")
    assert "transports: longpoll\n" in polls_only.log
    async with httpx.AsyncClient(base_url=polls_only.url) as client:
        await publish(client, "t", "hello")
        response = await client.get("/subscriber/t", headers={"accept": "text/event-stream"})
        assert response.headers["content-type"] == "text/plain" and response.text == "hello"
    streams_only = push_server_factory(config, "--transport", "eventsource")
    async with httpx.AsyncClient(base_url=streams_only.url) as client:
        await publish(client, "t", "hello")
        assert (await client.get("/subscriber/t")).status_code == 403
        with anyio.fail_after(10):
            async with event_stream(client, "/subscriber/t") as stream:
                assert (await stream.event()).data == "hello"


@pytest.mark.anyio
async def test_server_shutdown_ends_the_stream(push_server_factory):
    server = push_server_factory({"locations": CONFIG["locations"][:2]})
    async with httpx.AsyncClient(base_url=server.url) as client:
        with anyio.fail_after(10):
            async with event_stream(client, "/subscriber/bye") as stream:
                server.process.send_signal(signal.SIGTERM)
                while (block := await stream.block()) is not None:
                    assert block.data is None  # pings only, then the end
    assert await anyio.to_thread.run_sync(server.process.wait, 10) == 0


@pytest.mark.browser
def test_plain_eventsource_in_chromium(server):
    """``new EventSource(url)`` with no library: messages, named events, ids."""
    import os

    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("/usr/bin/chromium is missing")
    from playwright.sync_api import sync_playwright

    with httpx.Client(base_url=server.url) as client:
        for body, event in (("one", None), ("two\nlines", "tick"), ("three", None)):
            headers = {"content-type": "text/plain"}
            if event:
                headers["x-eventsource-event"] = event
            assert client.post("/publisher/browser", content=body, headers=headers).is_success
        newest = client.get("/publisher/browser", headers={"accept": "application/json"})
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=[*args, "--disable-component-update"]
        )
        try:
            page = browser.new_page()
            page.goto(server.url + "/no-such-page")  # same origin as the stream
            got = page.evaluate(
                """() => new Promise((resolve, reject) => {
                    const source = new EventSource("/subscriber/browser");
                    const got = [];
                    const take = (e) => {
                        got.push([e.type, e.data, e.lastEventId]);
                        if (got.length === 3) { source.close(); resolve(got); }
                    };
                    source.onmessage = take;
                    source.addEventListener("tick", take);
                    setTimeout(() => reject(new Error("timed out: " + JSON.stringify(got))), 10000);
                })"""
            )
        finally:
            browser.close()
    assert [(kind, data) for kind, data, _ in got] == [
        ("message", "one"),
        ("tick", "two\nlines"),
        ("message", "three"),
    ]
    assert got[-1][2] == newest.json()["last_message_id"]
