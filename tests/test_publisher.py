"""The publisher location against a real runpushserver: POST / PUT / GET / DELETE."""

import json
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import anyio
import httpx
import pytest
import yaml

from tests.project.helpers import (
    FULL_CONFIG,
    SERVER_HEADER,
    channel_info,
    path,
    wait_for_subscribers,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent


CONFIG = FULL_CONFIG


@pytest.fixture
def channel():
    return f"pub-{uuid.uuid4().hex}"


def plain_info(response: httpx.Response) -> dict[str, str]:
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    lines = response.text.split("\r\n")
    assert lines[-1] == ""
    return dict(line.split(": ", 1) for line in lines[:-1])


async def test_post_without_subscribers_is_202_with_channel_info(client, channel):
    response = await client.post(
        path("/publisher/", channel), content=b"hello", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 202
    assert response.headers["server"] == SERVER_HEADER
    info = plain_info(response)
    assert info["queued messages"] == "1"
    assert info["last requested"] == "-1 sec. ago (-1=never)"
    assert info["active subscribers"] == "0"
    assert info["last message id"].endswith(":0")


async def test_post_delivered_to_a_waiting_subscriber_is_201(client, channel):
    async with anyio.create_task_group() as tg:
        got = {}

        async def subscribe():
            got["response"] = await client.get(path("/lazy/", channel))

        tg.start_soon(subscribe)
        await wait_for_subscribers(client, path("/publisher/", channel), 1)
        response = await client.post(path("/publisher/", channel), content=b"x")
        assert response.status_code == 201
        assert plain_info(response)["active subscribers"] == "1"
    assert got["response"].status_code == 200


async def test_post_keeps_the_content_type(client, channel):
    await client.post(
        path("/publisher/", channel),
        content=b'{"type": "x"}',
        headers={"content-type": "application/json; charset=utf-8"},
    )
    response = await client.get(path("/subscriber/", channel))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.content == b'{"type": "x"}'


async def test_post_without_content_type_is_stored_as_octet_stream(client, channel):
    # The original answered 500 here.
    request = client.build_request("POST", path("/publisher/", channel), content=b"\x00\xff")
    assert "content-type" not in request.headers
    response = await client.send(request)
    assert response.status_code == 202
    response = await client.get(path("/subscriber/", channel))
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == b"\x00\xff"


async def test_post_with_an_empty_body(client, channel):
    response = await client.post(path("/publisher/", channel), content=b"")
    assert response.status_code == 202
    response = await client.get(path("/subscriber/", channel))
    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["content-length"] == "0"


async def test_put_creates_and_is_idempotent(client, channel):
    assert (await client.get(path("/publisher/", channel))).status_code == 404
    for _ in range(2):
        response = await client.put(path("/publisher/", channel))
        assert response.status_code == 200
        assert plain_info(response)["queued messages"] == "0"
    await client.post(path("/publisher/", channel), content=b"kept")
    response = await client.put(path("/publisher/", channel))
    assert plain_info(response)["queued messages"] == "1"


async def test_get_channel_info_200_or_404(client, channel):
    response = await client.get(path("/publisher/", channel))
    assert response.status_code == 404
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "404 Not Found: no such channel\n"
    for i in range(3):
        posted = await client.post(path("/publisher/", channel), content=b"%d" % i)
    response = await client.get(path("/publisher/", channel))
    assert response.status_code == 200
    info = plain_info(response)
    assert info["queued messages"] == "3"
    assert info["last message id"] == plain_info(posted)["last message id"]
    # A subscriber's request shows in "last requested".
    await client.get(path("/subscriber/", channel))
    info = plain_info(await client.get(path("/publisher/", channel)))
    assert re.fullmatch(r"\d+ sec\. ago \(-1=never\)", info["last requested"])


@pytest.mark.parametrize("accept", ["application/json", "text/json", "application/x-json"])
async def test_channel_info_as_json(client, channel, accept):
    await client.post(path("/publisher/", channel), content=b"x")
    response = await client.get(path("/publisher/", channel), headers={"accept": accept})
    assert response.headers["content-type"] == accept
    info = json.loads(response.content)
    assert info["messages"] == 1
    assert info["requested"] == -1
    assert info["subscribers"] == 0
    assert info["last_message_id"].endswith(":0")


async def test_channel_info_as_xml_and_yaml(client, channel):
    await client.post(path("/publisher/", channel), content=b"x")
    response = await client.get(path("/publisher/", channel), headers={"accept": "text/xml"})
    assert response.headers["content-type"] == "text/xml"
    root = ET.fromstring(response.content)
    assert root.tag == "channel"
    assert root.findtext("messages") == "1"
    assert root.findtext("subscribers") == "0"
    response = await client.get(
        path("/publisher/", channel), headers={"accept": "application/x-yaml"}
    )
    assert response.headers["content-type"] == "application/x-yaml"
    info = yaml.safe_load(response.content)
    assert (info["messages"], info["requested"], info["subscribers"]) == (1, -1, 0)
    # Negotiation applies to POST and PUT responses too.
    response = await client.post(
        path("/publisher/", channel), content=b"y", headers={"accept": "application/json"}
    )
    assert response.json()["messages"] == 2


async def test_delete_200_then_404(client, channel):
    assert (await client.delete(path("/publisher/", channel))).status_code == 404
    await client.post(path("/publisher/", channel), content=b"x")
    response = await client.delete(path("/publisher/", channel))
    assert response.status_code == 200
    assert plain_info(response)["queued messages"] == "1"
    assert (await client.get(path("/publisher/", channel))).status_code == 404
    assert (await client.get(path("/subscriber/", channel))).status_code == 404
    assert (await client.delete(path("/publisher/", channel))).status_code == 404


async def test_delete_sends_410_to_every_waiting_subscriber(client, channel):
    await client.put(path("/publisher/", channel))
    responses = []
    async with anyio.create_task_group() as tg:

        async def subscribe():
            responses.append(await client.get(path("/subscriber/", channel)))

        for _ in range(3):
            tg.start_soon(subscribe)
        await wait_for_subscribers(client, path("/publisher/", channel), 3)
        assert (await client.delete(path("/publisher/", channel))).status_code == 200
    assert [r.status_code for r in responses] == [410, 410, 410]
    for response in responses:
        assert response.text == "410 Gone: the channel was deleted\n"
        assert response.headers["access-control-allow-origin"] == "*"


async def test_create_on_post_false_needs_put_first(client, channel):
    response = await client.post(path("/strict/", channel), content=b"x")
    assert response.status_code == 404
    assert "PUT" in response.text
    assert await channel_info(client, path("/publisher/", channel)) is None
    assert (await client.put(path("/strict/", channel))).status_code == 200
    assert (await client.post(path("/strict/", channel), content=b"x")).status_code == 202


@pytest.mark.parametrize("method", ["PATCH", "HEAD", "OPTIONS", "TRACE"])
async def test_other_methods_are_405(client, channel, method):
    await client.put(path("/publisher/", channel))
    response = await client.request(method, path("/publisher/", channel))
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST, PUT, DELETE"
    if method != "HEAD":
        assert response.text == f"405 Method Not Allowed: {method} is not allowed here\n"
    # Nothing changed.
    assert (await channel_info(client, path("/publisher/", channel)))["messages"] == 0


async def test_channel_ids_with_any_characters(client):
    channel = f"\u010d a/b?c%d+{uuid.uuid4().hex}"
    response = await client.post(path("/publisher/", channel), content=b"x")
    assert response.status_code == 202
    response = await client.get(path("/subscriber/", channel))
    assert (response.status_code, response.content) == (200, b"x")


async def test_escapes_in_either_case_name_the_same_channel(client):
    suffix = uuid.uuid4().hex
    await client.post(f"/publisher/%C4%8D-{suffix}", content=b"x")
    response = await client.get(f"/subscriber/%c4%8d-{suffix}")
    assert (response.status_code, response.content) == (200, b"x")
    info = await channel_info(client, path("/publisher/", f"\u010d-{suffix}"))
    assert info["messages"] == 1


async def test_stores_are_separate_namespaces(client, channel):
    await client.post(path("/small-publisher/", channel), content=b"small")
    assert await channel_info(client, path("/publisher/", channel)) is None
    response = await client.get(path("/small-subscriber/", channel))
    assert response.content == b"small"
    assert (await client.get(path("/subscriber/", channel))).status_code == 404


async def test_a_retried_post_with_the_same_idempotency_key_is_stored_once(client, channel):
    """docs/protocol.md#idempotency-key on this server's own store (the memory store, or
    PUSHSERVER_TEST_STORE's): the retry answers as the first (status, X-Message-Id) with
    Idempotent-Replayed; a malformed key is 400 and stores nothing."""
    url = path("/publisher/", channel)
    key = {"idempotency-key": "order-1234-shipped"}
    first = await client.post(url, content=b"shipped", headers=key)
    assert first.status_code == 202
    assert "idempotent-replayed" not in first.headers
    again = await client.post(url, content=b"shipped", headers=key)
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-message-id"] == first.headers["x-message-id"]
    assert plain_info(again)["queued messages"] == "1"
    assert "x-message-id" not in (await client.post(url, content=b"plain")).headers
    for bad in (b"", b"has space", b"x" * 256, "caf\u00e9".encode()):
        refused = await client.post(url, content=b"no", headers={"idempotency-key": bad})
        assert refused.status_code == 400, bad
        assert "Idempotency-Key" in refused.text
    assert plain_info(await client.get(url))["queued messages"] == "2"
