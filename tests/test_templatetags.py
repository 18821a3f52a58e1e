"""{% load pushserver %}: channel_url with odd ids, the transport and the script tag."""

import json
from urllib.parse import unquote, urlsplit

import httpx
import pytest
from django.template import Context, Template
from django.test import override_settings

from pushserver.utils import updates

LOCATIONS = [
    {"type": "publisher", "prefix": "/publisher/"},
    {"type": "subscriber", "url": r"/updates/([^/]+)", "create_on_get": True},
]
ODD_IDS = ["a b", "a/b", "q\"'`", "<script>&amp;", "čšž €😀", "x?y#z%41", "back\\slash"]


def render(source, **context):
    return Template("{% load pushserver %}" + source).render(Context(context))


@pytest.fixture
def push_settings():
    with override_settings(
        PUSH_SERVER={"locations": LOCATIONS, "subscriber_host": {"location": "push.example:8001"}}
    ):
        yield


@pytest.mark.parametrize("channel_id", ODD_IDS)
def test_channel_url_quotes_the_id(push_settings, channel_id):
    html = render("{% channel_url channel_id %}", channel_id=channel_id)
    parts = urlsplit(html)
    assert (parts.scheme, parts.netloc, parts.query, parts.fragment) == (
        "http",
        "push.example:8001",
        "",
        "",
    )
    assert parts.path.startswith("/updates/")
    assert unquote(parts.path.removeprefix("/updates/")) == channel_id
    # Nothing that could end an attribute, a JS string or a tag.
    assert not set(html) & set("<>\"'`\\ &")
    assert html == updates.subscriber_url(channel_id)


def test_channel_url_literal_and_as_variable(push_settings):
    assert render('{% channel_url "a b" %}') == "http://push.example:8001/updates/a%20b"
    assert (
        render('{% channel_url "x" as url %}[{{ url }}]') == "[http://push.example:8001/updates/x]"
    )


def test_channel_url_inside_escapejs_as_documented(push_settings):
    source = "'{% filter escapejs %}{% channel_url channel_id %}{% endfilter %}'"
    for channel_id in ODD_IDS:
        out = render(source, channel_id=channel_id)
        # A JS string literal holding the URL: json can read it once the quotes match.
        url = json.loads('"' + out[1:-1] + '"')
        assert url == updates.subscriber_url(channel_id)


def test_channel_url_is_escaped_even_with_a_hostile_host():
    host = {"location": 'push.example:8001"'}
    with override_settings(PUSH_SERVER={"locations": LOCATIONS, "subscriber_host": host}):
        # The checks refuse such a host; even so the tag's output stays inert HTML.
        html = render("{% channel_url 'x' %}")
    assert '"' not in html


def test_transport_and_script_tags():
    with override_settings(PUSH_SERVER={"transport": "longpoll"}):
        assert render("{% pushserver_transport %}") == "longpoll"
        assert render("{% pushserver_script %}") == (
            '<script src="/static/pushserver/updates.js" data-pushserver-transport="longpoll">'
            "</script>"
        )
    with override_settings(PUSH_SERVER={}, STATIC_URL="/assets/"):
        assert 'src="/assets/pushserver/updates.js"' in render("{% pushserver_script %}")


def test_channel_url_reaches_a_real_server(push_server_factory):
    """The URL the tag renders is where send_update's messages arrive, for an odd id."""
    server = push_server_factory({"locations": LOCATIONS})
    channel_id = "room č/<1> \"'"
    hosts = {"publisher_host": {"location": server.host}, "subscriber_host": server.host}
    with override_settings(PUSH_SERVER={"locations": LOCATIONS, **hosts}):
        updates.send_update(channel_id, {"type": "t", "id": channel_id})
        url = render("{% channel_url channel_id %}", channel_id=channel_id)
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200
    assert response.json() == {"type": "t", "id": channel_id}


@pytest.mark.parametrize("transport", ["longpoll", "eventsource", "websocket"])
def test_script_tag_carries_each_transport_to_updates_js(transport):
    with override_settings(PUSH_SERVER={"transport": transport}):
        assert render("{% pushserver_transport %}") == transport
        assert render("{% pushserver_script %}") == (
            '<script src="/static/pushserver/updates.js" '
            f'data-pushserver-transport="{transport}"></script>'
        )


def test_updates_js_knows_every_transport_the_setting_accepts():
    """Each value the setting accepts is a transport ``updates.js`` implements, so the tag
    never names one the page would have to fall back from."""
    from pathlib import Path

    from pushserver.config import AVAILABLE_TRANSPORTS

    script = Path(updates.__file__).resolve().parent.parent / "static/pushserver/updates.js"
    source = script.read_text()
    for transport in AVAILABLE_TRANSPORTS:
        assert f"transports.{transport} = " in source


@pytest.mark.parametrize("transport", ["longpoll", "eventsource", "websocket"])
def test_client_tag_carries_each_transport_to_pushserver_js(transport):
    with override_settings(PUSH_SERVER={"transport": transport}):
        assert render("{% pushserver_client %}") == (
            '<script src="/static/pushserver/pushserver.js" '
            f'data-pushserver-transport="{transport}"></script>'
        )
        assert render("{% pushserver_client module=True %}") == (
            '<script type="module" src="/static/pushserver/pushserver.mjs" '
            f'data-pushserver-transport="{transport}"></script>'
        )


def test_pushserver_js_knows_every_transport_the_setting_accepts():
    from pathlib import Path

    from pushserver.config import AVAILABLE_TRANSPORTS

    script = Path(updates.__file__).resolve().parent.parent / "static/pushserver/pushserver.js"
    source = script.read_text()
    for transport in AVAILABLE_TRANSPORTS:
        assert f"\n        {transport}: " in source
