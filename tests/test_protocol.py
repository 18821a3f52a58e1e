"""The NHPM wire protocol as pure functions: header parsing, ids, CORS, channel info."""

import json
import xml.etree.ElementTree as ET

import pytest
import yaml

from pushserver.message import ChannelInfo, Message, MessageId
from pushserver.protocol import (
    OriginHeaders,
    cors_headers,
    decode_channel_id,
    http_date,
    longpoll_response_headers,
    negotiate_info_format,
    parse_if_modified_since,
    parse_if_none_match,
    position_from_headers,
    position_headers,
    render_channel_info,
)

# -- If-None-Match ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, -1),
        ("", -1),
        ("  ", -1),
        ("0", 0),
        ("17", 17),
        (" 3 ", 3),
        ("-1", -1),
        ("999999999999999999", 999999999999999999),
    ],
)
def test_if_none_match_is_a_bare_integer(value, expected):
    assert parse_if_none_match(value) == expected


@pytest.mark.parametrize(
    "value", ['"0"', 'W/"0"', "abc", "1.5", "-2", "+1", "0x1", "1 2", "\uff11", "1" * 19, "*"]
)
def test_if_none_match_rejects_anything_else(value):
    with pytest.raises(ValueError):
        parse_if_none_match(value)


# -- If-Modified-Since --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, 0),
        ("", 0),
        ("Thu, 01 Jan 1970 00:00:00 GMT", 0),
        ("Thu, 1 Jan 1970 00:00:00 GMT", 0),  # what updates.js sends first
        ("Sun, 06 Nov 1994 08:49:37 GMT", 784111777),  # RFC 1123
        ("Sunday, 06-Nov-94 08:49:37 GMT", 784111777),  # RFC 850
        ("Sun Nov  6 08:49:37 1994", 784111777),  # asctime
        ("Sun, 06 Nov 1994 09:49:37 +0100", 784111777),
        ("Wed, 31 Dec 1969 23:00:00 GMT", 0),  # before the epoch: from the beginning
        ("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799),
    ],
)
def test_if_modified_since_is_an_http_date(value, expected):
    assert parse_if_modified_since(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "0",
        "1795472455",
        "Mon, 01 Jan 99999 00:00:00 GMT",
        "Fri, 31 Dec 9999 23:59:59 -1200",
        "Thu, 01 Jan 1970 25:61:00 GMT",
    ],
)
def test_if_modified_since_rejects_what_is_not_a_representable_date(value):
    with pytest.raises(ValueError):
        parse_if_modified_since(value)


def test_position_combines_both_headers():
    assert position_from_headers(None, None) == MessageId(0, -1)
    assert position_from_headers("Thu, 01 Jan 1970 00:00:00 GMT", "0") == MessageId(0, 0)
    assert position_from_headers("Sun, 06 Nov 1994 08:49:37 GMT", "4") == MessageId(784111777, 4)
    assert position_from_headers("Sun, 06 Nov 1994 08:49:37 GMT", None) == MessageId(784111777, -1)


# -- channel ids --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("news", "news"),
        ("a%20b", "a b"),
        ("a+b", "a+b"),  # '+' is not a space in a path
        ("%C4%8Dez", "\u010dez"),
        ("%c4%8d", "\u010d"),
        ("a/b%2Fc", "a/b/c"),
        ("%25", "%"),
        ("\xc4\x8d", "\u010d"),  # raw UTF-8 bytes in the path, seen as latin-1
    ],
)
def test_channel_id_is_percent_and_utf8_decoded(raw, expected):
    assert decode_channel_id(raw) == expected


@pytest.mark.parametrize("raw", ["%", "%zz", "a%4", "%4g", "%ff", "%C4", "%C4%", "\xff", ""])
def test_channel_id_rejects_bad_escapes_bad_utf8_and_empty(raw):
    with pytest.raises(ValueError):
        decode_channel_id(raw)


# -- response headers ---------------------------------------------------------------------


def test_http_date_is_rfc1123_gmt():
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert http_date(784111777) == "Sun, 06 Nov 1994 08:49:37 GMT"


def test_position_headers():
    assert position_headers(MessageId(784111777, 3)) == [
        (b"last-modified", b"Sun, 06 Nov 1994 08:49:37 GMT"),
        (b"etag", b"3"),
        (b"cache-control", b"etag=3"),
        (b"vary", b"If-Modified-Since, If-None-Match"),
    ]


def test_message_response_headers_carry_position_type_and_length():
    message = Message(MessageId(784111777, 0), b'{"a": 1}', "application/json; charset=utf-8")
    headers = longpoll_response_headers(message)
    assert headers[:4] == position_headers(message.id)
    assert dict(headers)[b"content-type"] == b"application/json; charset=utf-8"
    assert dict(headers)[b"content-length"] == b"8"


def test_cors_headers_default():
    assert dict(cors_headers("*", False, None)) == {
        b"access-control-allow-origin": b"*",
        b"access-control-allow-headers": (
            b"If-Modified-Since, If-None-Match, X-Cookie, Last-Event-ID, Cache-Control"
        ),
        b"access-control-expose-headers": (
            b"Last-Modified, Etag, Cache-Control, Content-Type, X-EventSource-Event"
        ),
        b"access-control-allow-credentials": b"false",
        b"access-control-max-age": b"864000",
    }


def test_cors_headers_exact_origin_with_credentials():
    headers = dict(cors_headers("http://127.0.0.1:8000", True, "http://evil.example"))
    assert headers[b"access-control-allow-origin"] == b"http://127.0.0.1:8000"
    assert headers[b"access-control-allow-credentials"] == b"true"
    assert b"vary" not in headers


def test_cors_headers_echo_one_of_several_origins():
    allowed = "http://a.example http://b.example"
    headers = cors_headers(allowed, True, "http://b.example")
    assert dict(headers)[b"access-control-allow-origin"] == b"http://b.example"
    assert (b"vary", b"Origin") in headers
    # An origin not in the list is not named: its page cannot read the response.
    for origin in ("http://evil.example", None):
        other = cors_headers(allowed, True, origin)
        assert b"access-control-allow-origin" not in dict(other)
        assert (b"vary", b"Origin") in other


def test_cors_headers_wildcard_in_a_list_allows_every_origin():
    headers = cors_headers("http://a.example *", False, "http://evil.example")
    assert dict(headers)[b"access-control-allow-origin"] == b"*"
    assert b"vary" not in dict(headers)


def test_cors_headers_max_age_and_names():
    headers = dict(
        cors_headers("*", False, None, 600, allow_headers="Content-Type", expose_headers=None)
    )
    assert headers[b"access-control-max-age"] == b"600"
    assert headers[b"access-control-allow-headers"] == b"Content-Type"
    assert b"access-control-expose-headers" not in headers


def test_origin_headers_are_built_once_per_origin():
    base = [(b"server", b"s")]
    several = OriginHeaders(base, "http://a.example http://b.example", True, 60)
    a = several.for_origin("http://a.example")
    assert a is several.for_origin("http://a.example")  # the same list, nothing built
    assert a[0] == (b"server", b"s")
    assert dict(a)[b"access-control-allow-origin"] == b"http://a.example"
    assert dict(several.for_origin("http://b.example"))[b"access-control-allow-origin"] == (
        b"http://b.example"
    )
    assert several.for_origin("http://c.example") is several.default
    assert several.for_origin(None) is several.default
    assert b"access-control-allow-origin" not in dict(several.default)
    one = OriginHeaders(base, "http://a.example", True)
    assert one.by_origin is None
    assert one.for_origin("http://c.example") is one.default
    assert dict(one.default)[b"access-control-allow-origin"] == b"http://a.example"


# -- channel info -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, ("plain", "text/plain; charset=utf-8")),
        ("", ("plain", "text/plain; charset=utf-8")),
        ("*/*", ("plain", "text/plain; charset=utf-8")),
        ("text/html", ("plain", "text/plain; charset=utf-8")),
        ("image/json", ("plain", "text/plain; charset=utf-8")),
        ("application/json", ("json", "application/json")),
        ("text/json", ("json", "text/json")),
        ("application/x-json", ("json", "application/x-json")),
        ("Application/JSON; charset=utf-8", ("json", "application/json")),
        ("text/xml", ("xml", "text/xml")),
        ("application/xml", ("xml", "application/xml")),
        ("text/yaml", ("yaml", "text/yaml")),
        ("application/x-yaml", ("yaml", "application/x-yaml")),
        # NHPM ignores q-values: the first type it knows wins.
        ("text/html, application/json;q=0.1, text/xml", ("json", "application/json")),
    ],
)
def test_info_format_negotiation(accept, expected):
    assert negotiate_info_format(accept) == expected


INFO = ChannelInfo("news", 3, 990.0, 2, MessageId(1795472455, 4))
NEVER = ChannelInfo("fresh", 0, None, 0, None)


def test_plain_channel_info_is_nhpm_text_plus_last_message_id():
    assert render_channel_info(INFO, "plain", now=1000.0) == (
        b"queued messages: 3\r\n"
        b"last requested: 10 sec. ago (-1=never)\r\n"
        b"active subscribers: 2\r\n"
        b"last message id: 1795472455:4\r\n"
    )
    assert render_channel_info(NEVER, "plain", now=1000.0) == (
        b"queued messages: 0\r\n"
        b"last requested: -1 sec. ago (-1=never)\r\n"
        b"active subscribers: 0\r\n"
        b"last message id: \r\n"
    )


def test_json_channel_info():
    assert json.loads(render_channel_info(INFO, "json", now=1000.0)) == {
        "messages": 3,
        "requested": 10,
        "subscribers": 2,
        "last_message_id": "1795472455:4",
    }
    assert json.loads(render_channel_info(NEVER, "json"))["requested"] == -1


def test_xml_channel_info():
    root = ET.fromstring(render_channel_info(INFO, "xml", now=1000.0))
    assert root.tag == "channel"
    assert {child.tag: child.text for child in root} == {
        "messages": "3",
        "requested": "10",
        "subscribers": "2",
        "last_message_id": "1795472455:4",
    }


def test_yaml_channel_info():
    assert yaml.safe_load(render_channel_info(INFO, "yaml", now=1000.0)) == {
        "messages": 3,
        "requested": 10,
        "subscribers": 2,
        "last_message_id": "1795472455:4",
    }
    assert yaml.safe_load(render_channel_info(NEVER, "yaml"))["last_message_id"] == ""


def test_a_date_and_a_channel_id_sent_again_are_not_parsed_again():
    from pushserver import protocol

    date = "Wed, 25 Nov 2026 10:00:00 GMT"
    protocol.parse_if_modified_since(date)
    hits = protocol._http_date_seconds.cache_info().hits
    assert protocol.parse_if_modified_since(date) == 1795600800
    assert protocol._http_date_seconds.cache_info().hits == hits + 1
    protocol.decode_channel_id("caf%C3%A9", 64)
    hits = protocol.decode_channel_id.cache_info().hits
    assert protocol.decode_channel_id("caf%C3%A9", 64) == "café"
    assert protocol.decode_channel_id.cache_info().hits == hits + 1
    # An error is not remembered as an answer: the value is parsed again each time.
    misses = protocol._http_date_seconds.cache_info().misses
    for _ in range(2):
        with pytest.raises(ValueError, match="not an HTTP date"):
            protocol.parse_if_modified_since("yesterday")
    assert protocol._http_date_seconds.cache_info().misses == misses + 2
