"""Message ids: ordering, the compact "time:tag" string and the Last-Modified/Etag pair."""

import pytest

from pushserver.message import ORIGIN, ChannelInfo, Message, MessageId
from pushserver.protocol import position_from_headers, position_headers


def test_ids_order_by_time_then_tag():
    ids = [MessageId(5, 2), MessageId(4, 9), MessageId(5, 0), ORIGIN, MessageId(5, 1)]
    assert sorted(ids) == [
        ORIGIN,
        MessageId(4, 9),
        MessageId(5, 0),
        MessageId(5, 1),
        MessageId(5, 2),
    ]


def test_origin_is_before_every_message():
    assert MessageId(0, -1) == ORIGIN
    assert ORIGIN < MessageId(0, 0) < MessageId(1, 0)


def test_tag_counts_within_a_second_and_restarts_at_zero():
    first = MessageId(100, 0)
    assert first.next_for(100) == MessageId(100, 1)
    assert first.next_for(100).next_for(100) == MessageId(100, 2)
    assert MessageId(100, 7).next_for(101) == MessageId(101, 0)


def test_clock_going_backwards_never_reuses_an_id():
    assert MessageId(100, 3).next_for(99) == MessageId(100, 4)


@pytest.mark.parametrize(
    "message_id",
    [
        MessageId(0, -1),
        MessageId(0, 0),
        MessageId(1795472455, 0),
        MessageId(1795472455, 41),
        MessageId(2**40, 10**6),
    ],
)
def test_compact_string_round_trips(message_id):
    text = str(message_id)
    assert text == f"{message_id.time}:{message_id.tag}"
    assert MessageId.parse(text) == message_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "12",
        "12:",
        ":3",
        "a:1",
        "1:b",
        "1:-2",
        "-1:0",
        "1:2:3",
        "1.5:0",
        "\u0661:0",
        "1:\u0662",
        "1 :0x1",
    ],
)
def test_compact_string_rejects_garbage(text):
    with pytest.raises(ValueError):
        MessageId.parse(text)


@pytest.mark.parametrize(
    "message_id",
    [
        MessageId(0, 0),
        MessageId(1, 0),
        MessageId(1795472455, 0),
        MessageId(1795472455, 12345),
        MessageId(253402300799, 3),
    ],
)
def test_id_maps_one_to_one_onto_last_modified_and_etag(message_id):
    headers = dict(position_headers(message_id))
    assert (
        position_from_headers(headers[b"last-modified"].decode(), headers[b"etag"].decode())
        == message_id
    )


def test_distinct_ids_give_distinct_headers():
    seen = {}
    for time in (1795472455, 1795472456):
        for tag in range(50):
            headers = dict(position_headers(MessageId(time, tag)))
            key = (headers[b"last-modified"], headers[b"etag"])
            assert key not in seen
            seen[key] = (time, tag)


def test_message_encodes_once_per_wire_format():
    message = Message(MessageId(1, 0), b"body", "text/plain")
    calls = []

    def encode(m):
        calls.append(m)
        return m.body.upper()

    assert message.wire("x", encode) == b"BODY"
    assert message.wire("x", encode) == b"BODY"
    assert message.wire("y", encode) == b"BODY"
    assert len(calls) == 2


def test_message_default_content_type():
    assert Message(MessageId(1, 0), b"").content_type == "application/octet-stream"


def test_channel_info_seconds_since_last_request():
    never = ChannelInfo("c", 0, None, 0, None)
    assert never.requested_seconds_ago(1000.0) == -1
    info = ChannelInfo("c", 2, 990.4, 1, MessageId(990, 0))
    assert info.requested_seconds_ago(1000.0) == 9
    # A clock step backwards does not report a negative age.
    assert info.requested_seconds_ago(980.0) == 0
