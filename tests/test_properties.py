"""Property-based tests (hypothesis) of the parsers and the wire framing.

Every parser that reads client input either returns a value or raises ValueError, never
another exception, whatever the text; everything the server writes parses back, with an
independent reader written here from the specification, into exactly what was meant.
"""

from __future__ import annotations

import json
import re
import string
import xml.etree.ElementTree as ET
from urllib.parse import quote, quote_plus

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from pushserver import protocol
from pushserver.http import query_parameter
from pushserver.hub import Delivery
from pushserver.message import ORIGIN, ChannelInfo, Message, MessageId
from pushserver.protocol import (
    MAX_HTTP_DATE,
    cors_headers,
    decode_channel_id,
    format_compound_id,
    http_date,
    negotiate_info_format,
    parse_if_modified_since,
    parse_if_none_match,
    parse_resume_id,
    position_from_headers,
    position_headers,
    render_channel_info,
    split_channels,
)
from pushserver.transports.sse import (
    _HELLO,
    encode_event,
    encode_event_without_id,
    encode_multiplexed,
)
from pushserver.transports.streaming import Deleted, Gap
from pushserver.transports.websocket import MAX_COMMAND, encode_frame, parse_command

#: Bounded: the whole module runs in seconds. No example database written into the repo.
SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# -- strategies -----------------------------------------------------------------------------

#: What a request header value can hold once hypercorn (h11) accepted it and ASGI decoded it
#: as latin-1: any of the 256 code points except NUL, CR and LF.
header_text = st.text(st.characters(min_codepoint=1, max_codepoint=255, exclude_characters="\r\n"))
#: Any text at all, surrogates excluded (they cannot come from decoded bytes).
any_text = st.text(st.characters(exclude_categories=("Cs",)))
#: Text made of characters that parsers treat specially.
tricky_text = st.text(
    st.sampled_from(
        [*":,[]-+ \t\r\n\0%0123456789abcfxzGMTJanDec", "\u0661", "\uff11", "\u2028", "\x85"]
    )
)
latin1_text = st.text(st.characters(max_codepoint=255))
texts = st.one_of(any_text, tricky_text, latin1_text)

times = st.integers(0, MAX_HTTP_DATE)
tags = st.integers(-1, 10**18 - 1)
message_ids = st.builds(MessageId, st.integers(0, 10**18 - 1), tags)
http_message_ids = st.builds(MessageId, times, st.integers(0, 10**18 - 1))
#: Channel ids a streaming subscriber may name (no line breaks, see check_channel_id).
channel_ids = any_text.filter(lambda s: s != "" and not any(c in s for c in "\r\n\0"))


def expect_value_or_value_error(function, *args):
    """Call ``function``; a ValueError is an accepted answer, any other exception fails."""
    try:
        return function(*args)
    except ValueError:
        return None


# -- If-None-Match, If-Modified-Since, message ids -------------------------------------------


@SETTINGS
@given(texts)
@example("9" * 19)
@example("\u0661")
def test_if_none_match_is_a_number_or_value_error(text):
    value = expect_value_or_value_error(parse_if_none_match, text)
    if value is not None:
        assert -1 <= value < 10**18
        assert parse_if_none_match(str(value)) == value


@SETTINGS
@given(st.one_of(texts, st.builds(http_date, times).map(lambda d: d.replace("GMT", "+0000"))))
@example("Mon, 01 Jan 99999 00:00:00 GMT")
@example("Thu, 01 Jan 1970 00:00:00 +9999")
@example("0 0 0 0 0")
@example("Thu, 01 Jan 1970 00:00:60 GMT")
def test_if_modified_since_is_a_time_or_value_error(text):
    value = expect_value_or_value_error(parse_if_modified_since, text)
    if text.strip():  # parsed dates are cached: the cached answer is the parser's own
        parse = protocol._http_date_seconds.__wrapped__
        assert expect_value_or_value_error(parse, text) == value
    if value is not None:
        assert 0 <= value <= MAX_HTTP_DATE
        # Whatever was accepted can be echoed back as Last-Modified and read again.
        assert parse_if_modified_since(http_date(value)) == value


@SETTINGS
@given(texts)
@example("1:2\n")
@example("\u0661:0")
def test_message_id_parse_is_an_id_or_value_error(text):
    value = expect_value_or_value_error(MessageId.parse, text)
    if value is not None:
        assert MessageId.parse(str(value)) == value


@SETTINGS
@given(message_ids)
def test_message_id_string_round_trips(message_id):
    assert MessageId.parse(str(message_id)) == message_id


@SETTINGS
@given(http_message_ids)
def test_message_id_round_trips_through_last_modified_and_etag(message_id):
    headers = {n.decode(): v.decode("latin-1") for n, v in position_headers(message_id)}
    assert headers["cache-control"] == f"etag={headers['etag']}"
    again = position_from_headers(headers["last-modified"], headers["etag"])
    assert again == message_id
    # ... and on to the "time:tag" string the streaming transports resume from.
    assert MessageId.parse(str(again)) == message_id


@SETTINGS
@given(http_message_ids, http_message_ids)
def test_header_order_is_id_order(a, b):
    """Distinct ids give distinct header pairs, in the same order."""
    pa = position_from_headers(http_date(a.time), str(a.tag))
    pb = position_from_headers(http_date(b.time), str(b.tag))
    assert (pa < pb) == (a < b) and (pa == pb) == (a == b)


# -- channel ids ----------------------------------------------------------------------------


def as_raw_path(text: str) -> str:
    """How ASGI hands over a path segment: the raw bytes, decoded as latin-1."""
    return text.encode("utf-8").decode("latin-1")


@SETTINGS
@given(any_text.filter(bool), st.sampled_from(["", "/", "-._~!$&'()*+=:@", "/,;"]))
def test_quoted_channel_id_decodes_to_itself(channel_id, safe):
    raw = quote(channel_id, safe=safe)
    assert decode_channel_id(raw) == channel_id
    assert decode_channel_id(raw, max_length=len(channel_id)) == channel_id
    if len(channel_id) > 1:
        with pytest.raises(ValueError, match="longer than"):
            decode_channel_id(raw, max_length=len(channel_id) - 1)


@SETTINGS
@given(any_text.filter(lambda s: s and "%" not in s))
def test_unquoted_utf8_channel_id_decodes_to_itself(channel_id):
    assert decode_channel_id(as_raw_path(channel_id)) == channel_id


@SETTINGS
@given(st.one_of(latin1_text, tricky_text, st.binary().map(lambda b: b.decode("latin-1"))))
@example("%")
@example("%e0%80%80")  # an overlong encoding
@example("%ED%A0%80")  # a surrogate
def test_decode_channel_id_is_an_id_or_value_error(raw):
    value = expect_value_or_value_error(decode_channel_id, raw, 1024)
    # Decoded ids are cached: the cached answer is the decoder's own, for this max_length.
    assert expect_value_or_value_error(decode_channel_id.__wrapped__, raw, 1024) == value
    assert expect_value_or_value_error(decode_channel_id, raw, 1) == (
        expect_value_or_value_error(decode_channel_id.__wrapped__, raw, 1)
    )
    if value is not None:
        assert 0 < len(value) <= 1024
        assert decode_channel_id(quote(value, safe="")) == value


@SETTINGS
@given(st.lists(channel_ids, min_size=1, max_size=8))
def test_multiplexed_channel_list_round_trips(channels):
    raw = ",".join(quote(c, safe="") for c in channels)
    assert split_channels(raw) == list(dict.fromkeys(channels))


@SETTINGS
@given(st.one_of(latin1_text, tricky_text))
@example(",")
@example("a,,b")
@example("a%0Ab")
def test_split_channels_is_a_list_or_value_error(raw):
    value = expect_value_or_value_error(split_channels, raw, 1024, 4)
    if value is not None:
        assert 1 <= len(value) <= 4
        assert all(c and "\n" not in c and "\r" not in c and "\0" not in c for c in value)


# -- resume ids -----------------------------------------------------------------------------


@SETTINGS
@given(st.lists(message_ids, min_size=1, max_size=8), st.data())
def test_compound_id_round_trips(positions, data):
    marked = data.draw(st.integers(-1, len(positions) - 1))
    text = format_compound_id(positions, marked)
    assert parse_resume_id(text, len(positions)) == positions
    # Whitespace around the parts, as a hand-written header might have, is ignored too.
    spaced = " , ".join(text.split(","))
    assert parse_resume_id(spaced, len(positions)) == positions
    # The wrong number of channels is refused.
    with pytest.raises(ValueError):
        parse_resume_id(text, len(positions) + 1)


@SETTINGS
@given(st.one_of(texts, st.none()), st.integers(1, 5))
@example("[1:2", 1)
@example("[]", 1)
@example(",", 2)
def test_parse_resume_id_is_positions_or_value_error(text, count):
    value = expect_value_or_value_error(parse_resume_id, text, count)
    if value is not None:
        assert len(value) == count
        assert all(isinstance(p, MessageId) and p >= ORIGIN for p in value)


#: A run of percent escapes: UTF-8 bytes once decoded.
_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def form_decoded(text: str) -> str:
    """One name or value of a form-encoded query: ``+`` is a space, each run of ``%XX``
    escapes is UTF-8 (a malformed sequence becomes U+FFFD), everything else stays as it is
    (a ``%`` not followed by two hex digits too)."""

    def escapes(match: re.Match[str]) -> str:
        return bytes.fromhex(match.group().replace("%", "")).decode("utf-8", "replace")

    return _ESCAPES.sub(escapes, text.replace("+", " "))


def expected_query_parameter(query: bytes, name: str) -> str | None:
    """The value of the first ``&``-separated field whose decoded name (up to the first
    ``=``; a field without one has an empty value) is ``name``; None when none is."""
    for field in query.decode("latin-1").split("&"):
        key, _, value = field.partition("=")
        if field and form_decoded(key) == name:
            return form_decoded(value)
    return None


#: Query strings built from what the decoder treats specially.
query_strings = st.lists(
    st.sampled_from(
        [*"&=+%;ax_ ", "\xc4", "last_event_id", "last%5Fevent%5fid", "%26", "%3D", "%2B",
         "%C4%8D", "%E2%82", "%zz", "%4", "%FF"]
    )
).map(lambda parts: "".join(parts).encode("latin-1"))  # fmt: skip


@SETTINGS
@given(st.one_of(st.binary(), query_strings), st.sampled_from(["last_event_id", "x", "", "a x"]))
@example(b"x=1&x=2", "x")
@example(b"x&x=2", "x")
@example(b"=empty", "")
@example(b"a+x=%C4%8D+%2B%E2%82", "a x")
@example(b"last%5Fevent%5fid=7%zz", "last_event_id")
@example(b"%C4%8D=1&x=%C4x", "x")
def test_query_parameter_is_the_first_matching_field_decoded(query, name):
    assert query_parameter(query, name) == expected_query_parameter(query, name)


@SETTINGS
@given(st.lists(st.tuples(any_text, any_text), max_size=5), any_text)
def test_query_parameter_reads_back_an_encoded_form(fields, name):
    query = "&".join(f"{quote_plus(key)}={quote_plus(value)}" for key, value in fields)
    expected = next((value for key, value in fields if key == name), None)
    assert query_parameter(query.encode("ascii"), name) == expected
    # The name of a field that is there, too.
    for key, value in fields[:1]:
        assert query_parameter(query.encode("ascii"), key) == value


# -- CORS -----------------------------------------------------------------------------------


@SETTINGS
@given(
    st.lists(st.sampled_from(["http://a.example", "http://b.example", "*"]), min_size=1),
    st.booleans(),
    st.one_of(st.none(), header_text, st.sampled_from(["http://a.example", "http://b.example"])),
)
def test_cors_never_echoes_an_origin_it_was_not_given(origins, credentials, request_origin):
    allow_origin = " ".join(origins)
    headers = dict(cors_headers(allow_origin, credentials, request_origin))
    allowed = headers.get(b"access-control-allow-origin")
    if "*" in origins:
        assert allowed == b"*"
    elif len(origins) > 1:
        expected = request_origin if request_origin in origins else None
        assert allowed == (expected.encode() if expected else None)
        assert headers[b"vary"] == b"Origin"
    else:
        assert allowed == origins[0].encode()
    assert headers[b"access-control-allow-credentials"] == (b"true" if credentials else b"false")


# -- channel info ---------------------------------------------------------------------------


@SETTINGS
@given(texts)
def test_info_format_negotiation_always_answers(accept):
    fmt, content_type = negotiate_info_format(accept)
    assert fmt in ("json", "xml", "yaml", "plain")
    content_type.encode("latin-1")  # it goes into a response header


@SETTINGS
@given(
    st.integers(0, 2**40),
    st.one_of(st.none(), st.floats(0, 2e9)),
    st.integers(0, 2**40),
    st.one_of(st.none(), message_ids.filter(lambda m: m.tag >= 0)),
)
def test_channel_info_renders_and_parses_back(messages, requested, subscribers, last):
    info = ChannelInfo("c", messages, requested, subscribers, last)
    expected = {
        "messages": messages,
        "requested": info.requested_seconds_ago(2e9),
        "subscribers": subscribers,
        "last_message_id": str(last) if last else "",
    }
    assert json.loads(render_channel_info(info, "json", 2e9)) == expected
    root = ET.fromstring(render_channel_info(info, "xml", 2e9))
    assert {child.tag: child.text or "" for child in root} == {
        k: str(v) for k, v in expected.items()
    }
    assert yaml.safe_load(render_channel_info(info, "yaml", 2e9)) == expected
    plain = render_channel_info(info, "plain", 2e9).decode()
    assert plain.endswith(f"last message id: {expected['last_message_id']}\r\n")


# -- server-sent events ---------------------------------------------------------------------


def parse_event_stream(data: bytes) -> tuple[list[dict], int | None]:
    """A reader of text/event-stream written from the WHATWG HTML specification
    (section "Parsing an event stream" and "Interpreting an event stream").

    Returns the dispatched events as ``{"type", "data", "last_event_id"}`` and the last
    reconnection time set by a ``retry`` field.
    """
    text = data.decode("utf-8", "replace").removeprefix("\ufeff")
    # Lines end at CRLF, a lone LF or a lone CR; what follows the last line end is an
    # incomplete line, and an incomplete event is never dispatched.
    lines = re.split(r"\r\n|\n|\r", text)[:-1]
    events: list[dict] = []
    retry = None
    last_event_id = ""
    event_type = ""
    data_buffer = ""
    for line in lines:
        if line == "":
            # Dispatch: the last event id is set even when nothing is dispatched.
            if data_buffer == "":
                event_type = ""
                continue
            events.append(
                {
                    "type": event_type or "message",
                    "data": data_buffer.removesuffix("\n"),
                    "last_event_id": last_event_id,
                }
            )
            event_type, data_buffer = "", ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        if name == "event":
            event_type = value
        elif name == "data":
            data_buffer += value + "\n"
        elif name == "id":
            if "\0" not in value:
                last_event_id = value
        elif name == "retry" and value and all(c in string.digits for c in value):
            retry = int(value)
    return events, retry


def sse_text(body: bytes) -> str:
    """What an SSE client reads for ``body``: its UTF-8 text, line breaks made LF."""
    return re.sub(r"\r\n|\r", "\n", body.decode("utf-8", "replace"))


bodies = st.one_of(
    st.binary(max_size=200),
    st.text(st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from("\r\n:\0 "))).map(
        lambda s: s.encode()
    ),
)


def test_event_stream_reader_follows_the_specification():
    """The reader itself, on the specification's own examples."""
    assert parse_event_stream(b"data: YHOO\ndata: +2\ndata: 10\n\n")[0] == [
        {"type": "message", "data": "YHOO\n+2\n10", "last_event_id": ""}
    ]
    stream = (
        b": test stream\n\ndata: first event\nid: 1\n\n"
        b"data:second event\nid\n\ndata:  third event\n\n"
    )
    assert parse_event_stream(stream)[0] == [
        {"type": "message", "data": "first event", "last_event_id": "1"},
        {"type": "message", "data": "second event", "last_event_id": ""},
        {"type": "message", "data": " third event", "last_event_id": ""},
    ]
    assert parse_event_stream(b"data\n\ndata\ndata\n\ndata:")[0] == [
        {"type": "message", "data": "", "last_event_id": ""},
        {"type": "message", "data": "\n", "last_event_id": ""},
    ]
    assert parse_event_stream(b"retry: 10\r\nevent: x\rdata: 1\r\n\r")[0:2] == (
        [{"type": "x", "data": "1", "last_event_id": ""}],
        10,
    )


def test_hello_sets_retry_and_dispatches_nothing():
    assert parse_event_stream(_HELLO) == ([], 3000)


@SETTINGS
@given(http_message_ids, bodies, st.one_of(st.none(), header_text))
@example(MessageId(1, 0), b"a\r\n\r\nevent: evil\nid: 9:9\n\ndata: x", "tick")
@example(MessageId(1, 0), b"\r", "")
@example(MessageId(1, 0), b"", None)
def test_event_parses_back_into_its_data_event_and_id(message_id, body, event):
    """An event published over HTTP (X-EventSource-Event can hold no CR or LF) reads back
    as exactly its id, event name and body text, whatever the body holds."""
    message = Message(message_id, body, "text/plain", event=event)
    events, retry = parse_event_stream(_HELLO + encode_event(message))
    assert retry == 3000
    assert events == [
        {"type": event or "message", "data": sse_text(body), "last_event_id": str(message_id)}
    ]


@SETTINGS
@given(http_message_ids, bodies, any_text)
@example(MessageId(1, 0), b"x", "a\r\nid: 9:9\r\ndata: injected\r\n\r\nevent: b")
@example(MessageId(1, 0), b"x", "a\rdata: injected\r")
def test_line_breaks_in_an_event_name_inject_no_field(message_id, body, event):
    """Only an in-process publisher could pass an event name with line breaks: they are
    dropped, and the name stays one field of one event."""
    message = Message(message_id, body, "text/plain", event=event)
    events, _ = parse_event_stream(encode_event(message))
    assert events == [
        {
            "type": re.sub("[\r\n]", "", event) or "message",
            "data": sse_text(body),
            "last_event_id": str(message_id),
        }
    ]


@SETTINGS
@given(
    st.lists(channel_ids, min_size=2, max_size=5, unique=True),
    st.lists(message_ids, min_size=5, max_size=5),
    st.data(),
    bodies,
    st.one_of(st.none(), header_text),
)
def test_multiplexed_event_carries_the_compound_id(channels, ids, data, body, event):
    positions = dict(zip(channels, ids, strict=False))
    channel = data.draw(st.sampled_from(channels))
    message = Message(positions[channel], body, "text/plain", event=event)
    encoded = encode_multiplexed(positions, Delivery(channel, message))
    assert encoded.endswith(message.wire("sse-noid", encode_event_without_id))
    events, _ = parse_event_stream(encoded)
    assert len(events) == 1
    assert (events[0]["type"], events[0]["data"]) == (event or "message", sse_text(body))
    resume = events[0]["last_event_id"]
    assert f"[{message.id}]" in resume
    assert parse_resume_id(resume, len(channels)) == list(positions.values())


@SETTINGS
@given(channel_ids, message_ids, st.one_of(st.none(), message_ids))
def test_gap_and_deleted_events_are_one_json_data_line(channel, after, following):
    from sse_starlette.event import ServerSentEvent

    from pushserver.transports.sse import DELETED_EVENT, GAP_EVENT

    gap = Gap(channel, after, following)
    encoded = ServerSentEvent(gap.json(), event=GAP_EVENT, sep="\n").encode()
    events, _ = parse_event_stream(encoded)
    assert [e["type"] for e in events] == [GAP_EVENT]
    assert json.loads(events[0]["data"]) == {
        "type": "gap",
        "channel": channel,
        "after": str(after),
        "next": str(following) if following else None,
    }
    encoded = ServerSentEvent(Deleted(channel).json(), event=DELETED_EVENT, sep="\n").encode()
    events, _ = parse_event_stream(encoded)
    assert json.loads(events[0]["data"]) == {"type": "deleted", "channel": channel}


# -- WebSocket frames and commands ----------------------------------------------------------


def parse_ws_frame(data: str | bytes) -> tuple[dict[str, str], bytes]:
    """A message frame as updates.js reads it: header lines up to the first empty line
    (name, colon, one optional space, value), then the body."""
    raw = data.encode() if isinstance(data, str) else data
    head, sep, body = raw.partition(b"\n\n")
    assert sep, "no end of the header lines"
    headers: dict[str, str] = {}
    for line in head.decode("utf-8").split("\n"):
        name, colon, value = line.partition(":")
        assert colon and name, f"not a header line: {line!r}"
        assert name.lower() not in headers, f"header {name!r} twice"
        headers[name.lower()] = value.removeprefix(" ")
    return headers, body


content_types = st.one_of(
    st.sampled_from(["text/plain", "application/json", "image/png", "text/html; charset=utf-8"]),
    header_text.filter(lambda s: s.strip() != ""),
)


@SETTINGS
@given(channel_ids, http_message_ids, bodies, content_types, st.one_of(st.none(), header_text))
@example("news", MessageId(1, 0), b"\n\nid: 9:9\n\nbody", "text/plain", "x\x85y")
@example("news", MessageId(1, 0), b"\xff\n\n", "text/plain", None)
def test_ws_frame_parses_back(channel, message_id, body, content_type, event):
    message = Message(message_id, body, content_type, event=event)
    frame = encode_frame(channel, message)
    assert frame["type"] == "websocket.send"
    data = frame.get("text", frame.get("bytes"))
    headers, got = parse_ws_frame(data)
    expected = {"id": str(message_id), "channel": channel, "content-type": content_type}
    if event:
        expected["event"] = event
    assert headers == expected
    assert got == body
    if "text" in frame:  # only a UTF-8 body of a textual type goes as text
        body.decode("utf-8")


def json_containers(children: st.SearchStrategy) -> st.SearchStrategy:
    """Lists and objects of ``children``, the objects keyed like commands."""
    keys = st.sampled_from(["subscribe", "unsubscribe", "ping", "last_event_id", "x"])
    return st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)


@SETTINGS
@given(
    st.one_of(
        texts,
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | texts,
            json_containers,
            max_leaves=10,
        ).map(json.dumps),
    )
)
@example("[" * 5000)
@example('{"subscribe": ' * 2000)
@example("1" * 5000)
@example(" " * (MAX_COMMAND + 1))
@example('{"subscribe": "a", "last_event_id": "1:2\\n"}')
def test_ws_command_is_a_command_or_value_error(text):
    """A client command either parses or is refused with a ValueError (an error frame),
    never another exception that would drop the connection with a traceback."""
    value = expect_value_or_value_error(parse_command, text, 1024)
    if value is not None:
        action, channel_id, position = value
        assert action in ("subscribe", "unsubscribe", "ping")
        assert (channel_id is None) == (action == "ping")
        assert isinstance(position, MessageId)


@SETTINGS
@given(channel_ids, st.one_of(st.none(), message_ids))
def test_ws_subscribe_command_round_trips(channel, position):
    assume(len(channel) <= 1024)
    command = {"subscribe": channel}
    if position is not None:
        command["last_event_id"] = str(position)
    assert parse_command(json.dumps(command), 1024) == (
        "subscribe",
        channel,
        position if position is not None else ORIGIN,
    )
    assert parse_command(json.dumps({"unsubscribe": channel}), 1024) == (
        "unsubscribe",
        channel,
        ORIGIN,
    )
