"""Bad input gets its status and a short body, and the server goes on serving others."""

import socket
import uuid

import anyio
import httpx
import pytest

from tests.project.helpers import (
    DEFAULT_CORS,
    FULL_CONFIG,
    assert_still_serving,
    path,
)

pytestmark = pytest.mark.anyio


CONFIG = FULL_CONFIG


def assert_short_error(response, status):
    assert response.status_code == status
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text.startswith(f"{status} ")
    assert response.text.endswith("\n")
    assert len(response.content) < 200


def raw_request(server, data: bytes) -> bytes:
    """Send raw bytes on a fresh connection; return everything the server answers."""
    host, port = server.host.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# -- headers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"if-none-match": '"0"'},
        {"if-none-match": "-5"},
        {"if-none-match": "9" * 40},
        {"if-modified-since": "not a date"},
        {"if-modified-since": "Mon, 01 Jan 99999 00:00:00 GMT"},
        {"if-modified-since": "Fri, 31 Dec 9999 23:59:59 -1200"},
        {"if-modified-since": "Thu, 01 Jan 1970 25:61:00 GMT"},
        [("if-none-match", "0"), ("if-none-match", "1")],
    ],
)
async def test_garbage_position_headers(client, headers):
    channel = f"bad-{uuid.uuid4().hex}"
    await client.post(path("/publisher/", channel), content=b"x")
    for prefix in ("/subscriber/", "/interval/", "/timeout/"):
        response = await client.get(path(prefix, channel), headers=headers)
        assert_short_error(response, 400)
        for name, value in DEFAULT_CORS.items():
            assert response.headers[name] == value
    await assert_still_serving(client, subscriber="/lazy/")


def test_non_latin1_header_bytes(server):
    answer = raw_request(
        server,
        (
            b"GET /subscriber/x HTTP/1.1\r\nHost: t\r\nIf-None-Match: \xff\xfe\r\n"
            b"Connection: close\r\n\r\n"
        ),
    )
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.endswith(
        b"400 Bad Request: If-None-Match is not an integer: '\xc3\xbf\xc3\xbe'\n"
    )


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /publisher/a HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
        b"POST /publisher/a HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        b"GET /publisher/a HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    ],
)
async def test_malformed_http(server, client, data):
    answer = await anyio.to_thread.run_sync(raw_request, server, data)
    status = answer.split(b" ", 2)[1]
    assert status in (b"400", b"431")
    assert len(answer) < 500
    await assert_still_serving(client, subscriber="/lazy/")


async def test_unknown_accept_falls_back_to_plain_text(client):
    channel = f"acc-{uuid.uuid4().hex}"
    response = await client.put(path("/publisher/", channel), headers={"accept": "\x01;;,,/"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


# -- channel ids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "reason"),
    [
        ("%zz", "malformed percent-encoding"),
        ("a%4", "malformed percent-encoding"),
        ("%", "malformed percent-encoding"),
        ("%ff", "not UTF-8"),
        ("%C4", "not UTF-8"),
        ("%ED%A0%80", "not UTF-8"),  # a lone surrogate
    ],
)
@pytest.mark.parametrize(
    ("method", "prefix"),
    [
        ("POST", "/publisher/"),
        ("PUT", "/publisher/"),
        ("GET", "/publisher/"),
        ("DELETE", "/publisher/"),
        ("GET", "/subscriber/"),
        ("GET", "/interval/"),
        # Not OPTIONS: the preflight is answered whatever the id (tests/test_cors.py), so
        # that the browser can read the 400 of the request that follows.
    ],
)
async def test_invalid_channel_id_encoding_is_400(client, method, prefix, suffix, reason):
    response = await client.request(
        method, prefix + suffix, content=b"x" if method == "POST" else None
    )
    assert_short_error(response, 400)
    assert reason in response.text
    if prefix != "/publisher/":
        assert response.headers["access-control-allow-origin"] == "*"


async def test_nothing_was_created_by_invalid_ids(client):
    for suffix in ("%zz", "%ff"):
        await client.post("/publisher/" + suffix, content=b"x")
    response = await client.get("/publisher/%25zz")  # the literal id "%zz"
    assert response.status_code == 404
    await assert_still_serving(client, subscriber="/lazy/")


async def test_unmatched_path_is_404(client):
    response = await client.get("/elsewhere/x")
    assert_short_error(response, 404)
    response = await client.post("/", content=b"x")
    assert_short_error(response, 404)


async def test_long_channel_id(client):
    channel = "x" * 1024  # the default max_channel_id_length; longer: tests/test_limits.py
    assert (await client.post(path("/publisher/", channel), content=b"long")).status_code == 202
    response = await client.get(path("/subscriber/", channel))
    assert response.content == b"long"


# -- bodies ------------------------------------------------------------------------------


async def test_body_at_the_limit_is_accepted(client):
    channel = f"size-{uuid.uuid4().hex}"
    response = await client.post(path("/tiny/", channel), content=b"x" * 16)
    assert response.status_code == 202
    assert (await client.get(path("/subscriber/", channel))).content == b"x" * 16


async def test_declared_body_over_the_limit_is_413(client):
    channel = f"size-{uuid.uuid4().hex}"
    response = await client.post(path("/tiny/", channel), content=b"x" * 17)
    assert_short_error(response, 413)
    assert "larger than 16 bytes" in response.text
    # Nothing was stored, the channel was not even created.
    assert (await client.get(path("/publisher/", channel))).status_code == 404
    await assert_still_serving(client, subscriber="/lazy/")


async def test_streamed_body_over_the_limit_is_413(client):
    channel = f"size-{uuid.uuid4().hex}"

    async def chunks():
        for _ in range(200):
            yield b"y" * 1000

    response = await client.post(path("/tiny/", channel), content=chunks())
    assert_short_error(response, 413)
    assert (await client.get(path("/publisher/", channel))).status_code == 404
    await assert_still_serving(client, subscriber="/lazy/")


@pytest.mark.anyio
async def test_oversized_uploads_leave_nothing_stuck(push_server_factory):
    """Rejected uploads are drained: the server shuts down at once and cleanly."""
    server = push_server_factory(FULL_CONFIG)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:

        async def chunks():
            for _ in range(500):
                yield b"z" * 1000

        for _ in range(5):
            response = await client.post(path("/tiny/", "big"), content=chunks())
            assert response.status_code == 413
        await assert_still_serving(client, subscriber="/lazy/")
    returncode = await anyio.to_thread.run_sync(server.stop)
    assert returncode == 0
    assert "Traceback" not in server.log
    assert "Exception" not in server.log


# -- methods -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "prefix"),
    [
        ("PATCH", "/publisher/"),
        ("OPTIONS", "/publisher/"),
        ("PROPFIND", "/publisher/"),
        ("POST", "/subscriber/"),
        ("PUT", "/interval/"),
        ("DELETE", "/subscriber/"),
        ("BREW", "/subscriber/"),
    ],
)
async def test_unsupported_methods_are_405(client, method, prefix):
    response = await client.request(method, path(prefix, f"m-{uuid.uuid4().hex}"))
    assert_short_error(response, 405)
    assert f"{method} is not allowed here" in response.text
    assert "GET" in response.headers["allow"]
    await assert_still_serving(client, subscriber="/lazy/")


def test_early_answer_keeps_a_keep_alive_connection_usable(server):
    """An error given before the body arrived still lets the client reuse the connection."""
    host, port = server.host.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        stream = sock.makefile("rb")
        sock.sendall(b"POST /publisher/%zz HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
        sock.sendall(b"hello")
        sock.sendall(b"PUT /publisher/keep-alive HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        answers = []
        for _ in range(2):
            status = stream.readline()
            assert status, f"the connection was closed after {answers}"
            headers = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = stream.read(int(headers["content-length"]))
            answers.append((status.split()[1], body))
        stream.close()
    assert answers[0] == (
        b"400",
        b"400 Bad Request: malformed percent-encoding in the channel id\n",
    )
    assert answers[1][0] == b"200"
