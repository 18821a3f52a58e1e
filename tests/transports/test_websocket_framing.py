"""The WebSocket framing of each mode, as plain values: no server, no socket."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushserver.message import Message, MessageId
from pushserver.transports.websocket import (
    MAX_CLOSE_REASON,
    NCHAN_META,
    PUSHSERVER_V1,
    choose_subprotocol,
    close_reason,
    encode_frame,
    encode_nchan,
    encode_plain,
)

ID = MessageId(1700000000, 2)


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (None, None),
        ([], None),
        (["chat", "wamp.2.json"], None),  # none we speak: the plain mode, not a refusal
        (["chat", NCHAN_META, PUSHSERVER_V1], NCHAN_META),  # the first we speak
        ([PUSHSERVER_V1, NCHAN_META], PUSHSERVER_V1),
        (["PUSHSERVER.V1", "pushserver.v2", "pushserver"], None),  # exact names only
        (["", " pushserver.v1"], None),
    ],
)
def test_choose_subprotocol(offered, chosen):
    assert choose_subprotocol(offered) == chosen


@pytest.mark.parametrize(
    ("body", "content_type", "kind"),
    [
        (b'{"a": 1}', "application/json", "text"),
        (b"<b>hi</b>", "text/html; charset=utf-8", "text"),
        (b'<turbo-stream action="append"></turbo-stream>', "text/vnd.turbo-stream.html", "text"),
        (b"{}", "application/problem+json", "text"),
        (b"<a/>", "image/svg+xml", "text"),
        (b"", "text/plain", "text"),
        (b"\x89PNG\r\n", "image/png", "bytes"),
        (b"caf\xc3\xa9", "application/octet-stream", "bytes"),  # UTF-8, but not textual
        (b"not utf-8 \xff", "text/plain", "bytes"),  # textual, but not UTF-8: kept intact
    ],
)
def test_plain_frame_is_the_body_alone(body, content_type, kind):
    frame = encode_plain(Message(ID, body, content_type, event="tick"))
    assert list(frame) == ["type", kind]  # nothing but the body
    assert frame["type"] == "websocket.send"
    assert (frame[kind].encode() if kind == "text" else frame[kind]) == body


def test_nchan_frame_is_nchans():
    message = Message(ID, b'{"a": 1}', "application/json", event="ignored")
    assert encode_nchan(message) == {
        "type": "websocket.send",
        "text": 'id: 1700000000:2\ncontent-type: application/json\n\n{"a": 1}',
    }


def test_nchan_binary_frame_keeps_the_body_bytes():
    message = Message(ID, b"\x00\xff\n\n", "application/octet-stream")
    assert encode_nchan(message) == {
        "type": "websocket.send",
        "bytes": b"id: 1700000000:2\ncontent-type: application/octet-stream\n\n\x00\xff\n\n",
    }
    not_utf8 = Message(ID, b"\xff", "text/plain")
    assert encode_nchan(not_utf8)["bytes"] == b"id: 1700000000:2\ncontent-type: text/plain\n\n\xff"


def test_nchan_frame_without_content_type_has_no_line():
    assert encode_nchan(Message(ID, b"x", ""))["bytes"] == b"id: 1700000000:2\n\nx"


def test_nchan_multiplexed_frame_has_the_compound_id_and_shares_the_body():
    message = Message(ID, b"hello", "text/plain")
    frame = encode_nchan(message, "1700000000:1,[1700000000:2]")
    assert frame["text"] == "id: 1700000000:1,[1700000000:2]\ncontent-type: text/plain\n\nhello"
    # The body part was encoded once, in the plain mode's cache entry.
    assert message.encoded["ws-plain"] == encode_plain(message)
    binary = Message(ID, b"\x01", "image/png")
    assert encode_nchan(binary, "0:-1,[1700000000:2]")["bytes"] == (
        b"id: 0:-1,[1700000000:2]\ncontent-type: image/png\n\n\x01"
    )


def test_v1_frame_has_the_channel_and_event():
    message = Message(ID, b"hi", "text/plain", event="tick")
    assert encode_frame("news", message)["text"] == (
        "id: 1700000000:2\nchannel: news\ncontent-type: text/plain\nevent: tick\n\nhi"
    )


#: How NchanSubscriber.js splits a ws+meta.nchan frame (its own regular expression).
NCHAN_SPLIT = re.compile(r"^id: (.*)\n(content-type: (.*)\n)?\n", re.MULTILINE)


@settings(max_examples=100, deadline=None, database=None)  # no example database in the repo
@given(
    st.binary(max_size=64) | st.text(max_size=64).map(str.encode),
    st.sampled_from(["text/plain", "application/json", "image/png", "application/octet-stream"]),
)
def test_every_body_survives_plain_and_nchan_framing(body, content_type):
    message = Message(ID, body, content_type)
    plain = encode_plain(message)
    assert plain.get("bytes", plain.get("text", "").encode()) == body
    nchan = encode_nchan(message)
    data = nchan.get("bytes") or nchan["text"].encode()
    head = NCHAN_SPLIT.match(data.decode("latin-1"))
    assert head is not None
    assert (head.group(1), head.group(3)) == (str(ID), content_type)
    assert data[head.end() :] == body
    # The same kind of frame in both modes: text only for textual UTF-8.
    assert ("text" in plain) == ("text" in nchan)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("short", "short"),
        ("x" * 123, "x" * 123),
        ("x" * 200, "x" * 123),
        ("é" * 61 + "x", "é" * 61 + "x"),  # 123 bytes exactly, 62 characters
        ("é" * 62, "é" * 61),  # 124 bytes: the character that would cross 123 is dropped
        ("x" + "€" * 50, "x" + "€" * 40),  # three-byte characters: 121 bytes, not 123
        ("😀" * 40, "😀" * 30),  # four-byte characters: 120 bytes
    ],
)
def test_close_reason_is_cut_by_bytes_on_a_character_boundary(text, expected):
    assert MAX_CLOSE_REASON == 123  # RFC 6455: a 125-byte payload, 2 of them the code
    assert close_reason(text) == expected
    assert len(close_reason(text).encode()) <= MAX_CLOSE_REASON


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_every_close_reason_fits_and_is_a_prefix(text):
    reason = close_reason(text)
    assert len(reason.encode()) <= MAX_CLOSE_REASON
    assert text.startswith(reason)
    assert len(reason.encode()) > MAX_CLOSE_REASON - 4 or reason == text  # cut no further
