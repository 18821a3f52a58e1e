"""The bits of HTTP/1.1, server-sent events and WebSocket framing the load generators read
(bench/clients.py for the scenarios, bench/soak.py for the soak): incremental, over
bytearrays, with no per-byte work in Python beyond what the formats need."""

from __future__ import annotations


class Dechunker:
    """Reads a ``Transfer-Encoding: chunked`` body as it arrives: :meth:`feed` appends the
    payload to ``out`` and says whether the last (zero-size) chunk has come."""

    def __init__(self, out: bytearray) -> None:
        self.out = out
        self.buffer = bytearray()
        self.left = 0  # bytes of the current chunk still to read; -1: its CRLF

    def feed(self, data: bytes) -> bool:
        buffer = self.buffer
        buffer += data
        while buffer:
            if self.left > 0:
                take = min(self.left, len(buffer))
                self.out += buffer[:take]
                del buffer[:take]
                self.left -= take
                if self.left == 0:
                    self.left = -1
            elif self.left < 0:
                if len(buffer) < 2:
                    return False
                del buffer[:2]
                self.left = 0
            else:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return False
                size = int(bytes(buffer[:end]).split(b";")[0], 16)
                del buffer[: end + 2]
                if size == 0:
                    return True
                self.left = size
        return False


def take_event(events: bytearray) -> list[bytes] | None:
    """The lines of the next complete server-sent event in ``events`` (removed from it), or
    None until one has arrived. Line ends are LF, as pushserver and nchan send them."""
    end = events.find(b"\n\n")
    if end < 0:
        return None
    block = bytes(events[:end])
    del events[: end + 2]
    return block.split(b"\n")


def field(line: bytes, name: bytes) -> bytes | None:
    """The value of an event-stream ``name:`` line (one optional space after the colon)."""
    if not line.startswith(name + b":"):
        return None
    value = line[len(name) + 1 :]
    return value[1:] if value[:1] == b" " else value


def take_frame(buffer: bytearray) -> tuple[int, bool, bytes] | None:
    """The next complete WebSocket frame from the server in ``buffer`` (removed from it):
    opcode, FIN, payload; None until one has arrived. A masked server frame is a protocol
    error; its key is skipped."""
    if len(buffer) < 2:
        return None
    first, second = buffer[0], buffer[1]
    length, offset = second & 0x7F, 2
    if length == 126:
        if len(buffer) < 4:
            return None
        length, offset = int.from_bytes(buffer[2:4], "big"), 4
    elif length == 127:
        if len(buffer) < 10:
            return None
        length, offset = int.from_bytes(buffer[2:10], "big"), 10
    if second & 0x80:
        offset += 4
    if len(buffer) < offset + length:
        return None
    payload = bytes(buffer[offset : offset + length])
    del buffer[: offset + length]
    return first & 0x0F, bool(first & 0x80), payload
