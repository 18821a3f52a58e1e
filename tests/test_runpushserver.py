"""The ``runpushserver`` command: address resolution, options, banner, log, signals."""

import signal
import socket
import uuid
from pathlib import Path

import anyio
import httpx
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from pushserver.management.commands.runpushserver import Command
from pushserver.testing import PushServerProcess
from tests.project.helpers import path, position, wait_for_subscribers

ROOT = Path(__file__).resolve().parent.parent

LAZY = {
    "locations": [
        {"type": "publisher", "prefix": "/publisher/"},
        {"type": "subscriber", "prefix": "/subscriber/", "create_on_get": True},
    ]
}


def resolve(addrport=None, *, use_ipv6=False, allrequests=False, push_server=None):
    options = {"addrport": addrport, "use_ipv6": use_ipv6, "allrequests": allrequests}
    with override_settings(PUSH_SERVER=push_server or {}):
        return Command().resolve_address(options)


# -- address and port --------------------------------------------------------------------


def test_default_address_and_port():
    assert resolve() == ("127.0.0.1", 8001)


def test_allrequests_defaults_to_port_8000():
    assert resolve(allrequests=True) == ("127.0.0.1", 8000)


def test_ipv6_flag_changes_the_default_address():
    assert resolve(use_ipv6=True) == ("::1", 8001)


@pytest.mark.parametrize(
    ("addrport", "expected"),
    [
        ("9000", ("127.0.0.1", 9000)),
        ("0.0.0.0:9000", ("0.0.0.0", 9000)),
        ("[::1]:9000", ("::1", 9000)),
        ("[2001:db8::1]:80", ("2001:db8::1", 80)),
        ("localhost:9000", ("localhost", 9000)),
    ],
)
def test_addrport_argument(addrport, expected):
    assert resolve(addrport) == expected


def test_settings_port_and_address_are_used_without_an_argument():
    settings = {"port": 9100, "address": "0.0.0.0"}
    assert resolve(push_server=settings) == ("0.0.0.0", 9100)
    assert resolve(push_server=settings, allrequests=True) == ("0.0.0.0", 9100)


def test_command_line_beats_settings():
    settings = {"port": 9100, "address": "0.0.0.0"}
    assert resolve("127.0.0.2:9200", push_server=settings) == ("127.0.0.2", 9200)
    # A bare port keeps the configured address, as the original did.
    assert resolve("9200", push_server=settings) == ("0.0.0.0", 9200)


def test_ipv6_flag_does_not_override_a_configured_address():
    assert resolve(use_ipv6=True, push_server={"address": "127.0.0.1"}) == ("127.0.0.1", 8001)


@pytest.mark.parametrize(
    ("addrport", "use_ipv6", "message"),
    [
        ("abc:xyz", False, "is not a valid port number or address:port pair"),
        ("127.0.0.1:", False, "is not a valid port number or address:port pair"),
        ("70000", False, "70000 is not a valid port number"),
        ("1.2.3.4:9000", True, '"1.2.3.4" is not a valid IPv6 address'),
    ],
)
def test_bad_addrport(addrport, use_ipv6, message):
    with pytest.raises(CommandError, match=message):
        resolve(addrport, use_ipv6=use_ipv6)


def test_bound_socket_has_nagle_off():
    # Without TCP_NODELAY each response (start and body written apart) waited ~40 ms.
    from pushserver.server import bind

    with bind("127.0.0.1", 0) as sock:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


# -- option errors (no server is started) ------------------------------------------------


def test_forcehost_needs_allrequests():
    with pytest.raises(CommandError, match=r"'forcehost' can be set only with 'allrequests'\."):
        call_command("runpushserver", "127.0.0.1:0", "--forcehost", "example.com")


def test_unknown_transport_is_a_clear_error():
    with pytest.raises(CommandError) as info:
        call_command("runpushserver", "127.0.0.1:0", "--transport", "pigeon")
    message = str(info.value)
    assert "--transport 'pigeon' is unknown" in message
    assert "longpoll" in message and "'all'" in message


def test_transport_choices():
    command = Command()
    assert command.resolve_transports(None)[0] == "longpoll"
    assert command.resolve_transports(["all"]) == command.resolve_transports(None)
    assert command.resolve_transports(["longpoll", "longpoll"]) == ("longpoll",)


def test_busy_port_is_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = PushServerProcess(
            "tests.project.settings", push_server=LAZY, cwd=str(ROOT), address=f"127.0.0.1:{port}"
        )
        with pytest.raises(RuntimeError) as info:
            server.start()
    assert f"could not listen on 127.0.0.1:{port}" in str(info.value)


# -- a running server --------------------------------------------------------------------


@pytest.fixture
def start(push_server_factory):
    return push_server_factory


def test_banner_and_request_log(start):
    server = start(LAZY)
    banner = server.log
    assert "Django version " in banner
    assert "using settings 'tests.project.settings'" in banner
    assert "Push server version " in banner and "on hypercorn version" in banner
    assert f"Development push server is running at {server.url}/" in banner
    assert "Quit the server with CONTROL-C." in banner
    response = httpx.get(server.url + "/publisher/nothing-here")
    assert response.status_code == 404
    server.wait_for_output(r'"GET /publisher/nothing-here 1\.1" 404 ')


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.anyio
async def test_signal_shuts_down_cleanly_releasing_long_polls(start, signum):
    server = start(LAZY)
    channel = f"sig-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        await client.post(path("/publisher/", channel), content=b"x")
        first = await client.get(path("/subscriber/", channel))
        responses = []

        async def wait():
            responses.append(
                await client.get(path("/subscriber/", channel), headers=position(first))
            )

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await wait_for_subscribers(client, path("/publisher/", channel), 1)
                returncode = await anyio.to_thread.run_sync(server.stop, signum)
    assert returncode == 0
    (response,) = responses
    assert response.status_code == 304
    assert position(response) == position(first)
    assert f"received {signal.Signals(signum).name}, shutting down" in server.log
    assert "Traceback" not in server.log


@pytest.mark.anyio
async def test_allrequests_view_publishing_to_the_same_server(start):
    """The original deadlocked here: Django ran on the only thread the push server had."""
    server = start(LAZY, "--allrequests")
    channel = f"view-{uuid.uuid4().hex}"
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        responses = []

        async def wait():
            responses.append(await client.get(path("/subscriber/", channel)))

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await wait_for_subscribers(client, path("/publisher/", channel), 1)
                view = await client.get(f"/publish-from-view/{channel}")
                assert (view.status_code, view.text) == (200, "201")
    (response,) = responses
    assert (response.status_code, response.content) == (200, b"from-view")
    assert response.headers["content-type"] == "text/plain"


@pytest.mark.anyio
async def test_allrequests_serves_several_django_requests_at_once(start):
    server = start(LAZY, "--allrequests")
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
        results = []

        async def publish(i):
            response = await client.get(f"/publish-from-view/many-{i}")
            results.append(response.text)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                for i in range(10):
                    tg.start_soon(publish, i)
        assert results == ["202"] * 10
        # Django answers what is not a push location; push locations come first.
        assert (await client.get("/no-such-page")).status_code == 404
        assert (await client.get("/publisher/many-0")).status_code == 200


def test_forcehost_redirects_other_hosts_keeping_path_and_query(start):
    server = start(LAZY, "--allrequests", "--forcehost", "Push.Example:8443")
    response = httpx.get(server.url + "/publisher/a%20b?x=1&y=2")
    assert response.status_code == 301
    assert response.headers["location"] == "http://push.example:8443/publisher/a%20b?x=1&y=2"
    assert response.content == b""
    # The forced host (any port) is served, push and Django alike.
    forced = {"host": "push.example:8443"}
    assert httpx.put(server.url + "/publisher/a", headers=forced).status_code == 200
    response = httpx.get(server.url + "/publisher/a", headers={"host": "PUSH.example"})
    assert response.status_code == 200


def test_servername_is_the_server_header_everywhere(start):
    server = start({**LAZY, "servername": "my-push"}, "--allrequests")
    assert httpx.put(server.url + "/publisher/s").headers["server"] == "my-push"
    assert httpx.options(server.url + "/subscriber/s").headers["server"] == "my-push"
    assert (
        httpx.get(server.url + "/subscriber/s", headers={"if-none-match": "x"}).headers["server"]
        == "my-push"
    )
    assert httpx.get(server.url + "/no-such-page").headers["server"] == "my-push"


def test_ipv6_address(start):
    server = start(LAZY, address="[::1]:0")
    assert server.url.startswith("http://[::1]:")
    assert httpx.put(server.url + "/publisher/v6").status_code == 200


def test_trio_event_loop(start):
    server = start(LAZY, "--loop", "trio")
    assert "(trio)" in server.log
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.post("/publisher/t", content=b"on trio").status_code == 202
        assert client.get("/subscriber/t").content == b"on trio"
    assert server.stop(signal.SIGINT) == 0
