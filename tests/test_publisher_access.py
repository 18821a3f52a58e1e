"""Publisher locations accept only trusted clients: allowed addresses, and the shared secret."""

from __future__ import annotations

import httpx
import pytest
from django.test import override_settings

from pushserver.publisher import publisher_token
from pushserver.utils.updates import SendUpdateError, send_update
from tests.project.helpers import pushserver_messages

SECRET = "correct horse battery staple"


@pytest.fixture(scope="module")
def server():
    """Three publisher locations: the default (loopback), one open only to 10/8, and one
    open to everyone; the secret applies to all of them."""
    from pushserver.testing import PushServerProcess
    from tests.conftest import ROOT

    process = PushServerProcess(
        "tests.project.settings",
        push_server={
            "publisher_secret": SECRET,
            "locations": [
                {"type": "publisher", "prefix": "/publisher/"},
                {"type": "publisher", "prefix": "/internal/", "allow_from": ["10.0.0.0/8"]},
                {"type": "publisher", "prefix": "/open/", "allow_from": "*"},
                {"type": "subscriber", "prefix": "/subscriber/"},
            ],
        },
        cwd=str(ROOT),
    ).start()
    yield process
    process.stop()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_loopback_with_the_token_may_publish(server):
    with httpx.Client(base_url=server.url) as client:
        response = client.post("/publisher/a", content=b"hi", headers=auth(publisher_token(SECRET)))
        assert response.status_code == 202
        response = client.post("/open/a", content=b"hi", headers=auth(publisher_token(SECRET)))
        assert response.status_code == 202


@pytest.mark.parametrize(
    "headers",
    [
        {},
        auth("0" * 64),
        auth(publisher_token("another secret")),
        {"Authorization": f"Basic {publisher_token(SECRET)}"},
        {"Authorization": SECRET},
    ],
    ids=["none", "wrong", "other-secret", "not-bearer", "raw-secret"],
)
def test_missing_or_wrong_token_is_403(server, headers):
    with httpx.Client(base_url=server.url) as client:
        for method in ("POST", "PUT", "GET", "DELETE"):
            response = client.request(method, "/publisher/b", content=b"x", headers=headers)
            assert response.status_code == 403, method
            assert "publisher token" in response.text
        # Nothing was created, and the server keeps serving.
        good = client.get("/publisher/b", headers=auth(publisher_token(SECRET)))
        assert good.status_code == 404


def test_address_outside_allow_from_is_403_even_with_the_token(server):
    with httpx.Client(base_url=server.url) as client:
        response = client.post("/internal/c", content=b"x", headers=auth(publisher_token(SECRET)))
        assert response.status_code == 403
        assert "not allowed from 127.0.0.1" in response.text
        assert "allow_from" in response.text
        # A spoofed forwarding header changes nothing: the TCP peer counts.
        response = client.post(
            "/internal/c",
            content=b"x",
            headers={**auth(publisher_token(SECRET)), "X-Forwarded-For": "10.1.2.3"},
        )
        assert response.status_code == 403
        assert (
            client.post(
                "/publisher/c", content=b"x", headers=auth(publisher_token(SECRET))
            ).status_code
            == 202
        )


def test_subscribers_need_no_token(server):
    with httpx.Client(base_url=server.url) as client:
        client.post("/publisher/d", content=b"hello", headers=auth(publisher_token(SECRET)))
        response = client.get("/subscriber/d")
        assert response.status_code == 200
        assert response.content == b"hello"


def test_send_update_adds_the_token(server):
    settings = {
        "publisher_secret": SECRET,
        "locations": [
            {"type": "publisher", "prefix": "/publisher/"},
            {"type": "subscriber", "prefix": "/subscriber/"},
        ],
        "publisher_host": {"location": server.host},
        "subscriber_host": {"location": server.host},
    }
    with override_settings(PUSH_SERVER=settings):
        send_update("e", {"n": 1})
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/subscriber/e").json() == {"n": 1}
    # Without the secret the same POST is refused, and send_update says why.
    with (
        override_settings(PUSH_SERVER={**settings, "publisher_secret": None}),
        pytest.raises(SendUpdateError) as caught,
    ):
        send_update("e", {"n": 2})
    assert caught.value.status == 403
    assert "publisher token" in str(caught.value)


def test_default_allows_loopback_without_a_secret(push_server_factory):
    server = push_server_factory({"locations": [{"type": "publisher", "prefix": "/publisher/"}]})
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/publisher/f", content=b"x").status_code == 202


def test_allow_from_excluding_loopback_refuses_it_without_a_secret(push_server_factory):
    server = push_server_factory(
        {"locations": [{"type": "publisher", "prefix": "/p/", "allow_from": ["10.0.0.0/8", "::1"]}]}
    )
    with httpx.Client(base_url=server.url) as client:
        response = client.post("/p/g", content=b"x")
        assert response.status_code == 403
        assert "not allowed from 127.0.0.1" in response.text


def test_good_allow_from_values_pass_the_checks():
    for value in ("*", ["127.0.0.1"], ["10.0.0.0/8", "::1", "fd00::/8"], []):
        locations = [{"type": "publisher", "prefix": "/p/", "allow_from": value}]
        assert pushserver_messages({"locations": locations}) == [], value


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (["10.0.0.0/33"], "'10.0.0.0/33' is not an IP address or network"),
        (["localhost"], "'localhost' is not an IP address or network"),
        ([10], "10 is not an IP address or network"),
        ("10.0.0.0/8", "must be a list of addresses or networks"),
    ],
)
def test_bad_allow_from_is_a_check_error(value, text):
    locations = [{"type": "publisher", "prefix": "/p/", "allow_from": value}]
    (message,) = pushserver_messages({"locations": locations})
    assert message.id == "pushserver.E052"
    assert message.msg.startswith("PUSH_SERVER['locations'][0]['allow_from']: ")
    assert text in message.msg
    assert "'10.0.0.0/8'" in message.hint


def test_allow_from_on_a_subscriber_is_a_check_error():
    locations = [{"type": "subscriber", "prefix": "/s/", "allow_from": "*"}]
    (message,) = pushserver_messages({"locations": locations})
    assert message.id == "pushserver.E036"


@pytest.mark.parametrize("value", ["", 1234, ["x"]])
def test_bad_publisher_secret_is_a_check_error(value):
    (message,) = pushserver_messages({"publisher_secret": value})
    assert message.id == "pushserver.E053"
    # The message never echoes the value back: it may be a real secret.
    assert message.msg == "PUSH_SERVER['publisher_secret']: must be a non-empty string"


def refusal(config, host, headers=()):
    """What the first publisher location of ``config`` says to a request from ``host``."""
    from pushserver.http import Request
    from pushserver.publisher import Publisher

    location = config.first("publisher")
    publisher = Publisher(
        location, None, [], internal_ips=config.internal_ips, secret=config.publisher_secret
    )
    scope = {"method": "POST", "headers": list(headers), "client": (host, 40000) if host else None}
    return publisher.refusal(Request(scope))


def test_internal_ips_are_allowed_by_default():
    from pushserver.settings import get_config

    with override_settings(INTERNAL_IPS=["192.168.1.7", "fd00::/8", "not an address"]):
        config = get_config()
        assert config.internal_ips == ("192.168.1.7", "fd00::/8", "not an address")
        assert refusal(config, "192.168.1.7") is None
        assert refusal(config, "fd00::5") is None
        assert refusal(config, "127.0.0.5") is None
        assert refusal(config, "::1") is None
        assert refusal(config, "::ffff:127.0.0.1") is None  # IPv4 on a dual-stack socket
        assert refusal(config, None) is None  # a Unix socket
        assert "from 192.168.1.8 " in refusal(config, "192.168.1.8")
    with override_settings(INTERNAL_IPS=[]):
        assert "from 192.168.1.7 " in refusal(get_config(), "192.168.1.7")


def test_star_allows_every_address():
    from pushserver.config import load

    config = load({"locations": [{"type": "publisher", "prefix": "/p/", "allow_from": "*"}]})
    for host in ("8.8.8.8", "2001:db8::1", "127.0.0.1"):
        assert refusal(config, host) is None
    secret = load({**{"locations": config_locations("*")}, "publisher_secret": SECRET})
    token = (b"authorization", f"Bearer {publisher_token(SECRET)}".encode())
    assert refusal(secret, "8.8.8.8", [token]) is None
    assert "publisher token" in refusal(secret, "8.8.8.8")


def config_locations(allow_from):
    return [{"type": "publisher", "prefix": "/p/", "allow_from": allow_from}]
