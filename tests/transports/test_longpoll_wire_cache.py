"""Long-poll caches each message's response start per transport: never another's."""

import gc

import anyio

from pushserver.backends import create_backend
from pushserver.config import load
from pushserver.hub import Hub
from pushserver.message import Message, MessageId
from pushserver.transports.longpoll import LongPollTransport


def location(origin):
    config = load(
        {"locations": [{"type": "subscriber", "url": r"/sub/(.+)", "allow_origin": origin}]}
    )
    return config.locations[0]


def test_a_message_cached_by_a_gone_transport_keeps_its_headers_to_itself():
    """Transports come and go (one per location of each server built); one made after
    another is gone may reuse its memory, and so its ``id()``. Each must still answer
    with its own headers from the message's cache."""
    hub = Hub(create_backend("memory", {}))
    message = Message(MessageId(1, 0), b"x", "text/plain")
    origins = ["https://a.example", "https://b.example"]

    async def answer(transport):
        sent = []

        async def send(event):
            sent.append(event)

        await transport.send_message(send, message, transport.headers)
        return dict(sent[0]["headers"])[b"access-control-allow-origin"].decode()

    async def main():
        for round in range(20):
            origin = origins[round % 2]
            transport = LongPollTransport(location(origin), hub, [(b"server", b"test")])
            assert await answer(transport) == origin
            del transport
            gc.collect()

    anyio.run(main)
